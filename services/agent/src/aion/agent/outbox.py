"""The transactional outbox: events written with the change they describe, then published.

``add`` inserts an event into ``outbox`` on the caller's connection, inside
the caller's transaction: if the change rolls back, so does its event.
``Publisher`` moves rows to Kafka in id order with an idempotent producer
and deletes them in the same transaction that read them. A transaction-level
advisory lock lets one publisher at a time work, so rows of one task reach
their partition in the order they were written. A crash between the send and
the delete sends those rows again: consumers skip them by envelope id.

The publisher exports its backlog (sampled every ``sample_s``), the lag of
each row from commit to Kafka ack, and its publish counts (``metrics``).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import psycopg
from psycopg.types import json as pg_json

from aion.agent import db, events, kafka, metrics
from aion.api.events.v1 import events_pb2
from aion.core import kafka as core_kafka

log = logging.getLogger(__name__)

# pg_try_advisory_xact_lock key: "aion" "outbox" as two int32s.
LOCK = (0x61696F6E, 0x6F757462)


async def add(conn: psycopg.AsyncConnection[Any], *, topic: str, env: events_pb2.Envelope) -> None:
    """Write ``env`` to the outbox in the connection's current transaction."""
    await conn.execute(
        "INSERT INTO outbox (topic, key, event_id, payload, headers) VALUES (%s, %s, %s, %s, %s)",
        (
            topic,
            env.subject,
            env.id,
            env.SerializeToString(),
            pg_json.Jsonb({**events.trace_headers(), "ce_type": env.type}),
        ),
    )


class Publisher:
    """Moves outbox rows to Kafka until cancelled."""

    def __init__(
        self,
        *,
        pool: db.Pool,
        bootstrap: str,
        batch: int = 1000,
        poll_s: float = 0.2,
        sample_s: float = 5.0,
        make_producer: Callable[[str, core_kafka.KafkaSettings | None], Any] = (kafka.producer),
        security: core_kafka.KafkaSettings | None = None,
    ) -> None:
        self._pool = pool
        self._bootstrap = bootstrap
        self._batch = batch
        self._poll_s = poll_s
        self._sample_s = sample_s
        self._sampled = -sample_s
        self._make_producer = make_producer
        self._security = security
        self._producer: Any = None
        self._wake = asyncio.Event()
        self.published = 0

    def wake(self) -> None:
        """New rows were committed: publish now instead of at the next poll."""
        self._wake.set()

    async def run(self) -> None:
        """Publish until cancelled; a broker or database outage is waited out."""
        backoff = 0.2
        try:
            while True:
                try:
                    sent = await self.publish_once()
                    backoff = 0.2
                    if time.monotonic() - self._sampled >= self._sample_s:
                        await self.sample()
                except (kafka.KafkaError, OSError, psycopg.Error) as exc:
                    metrics.OUTBOX_PUBLISH_FAILURES.labels(type(exc).__name__).inc()
                    log.warning(
                        "outbox publisher: %s: %s; retrying in %.1fs",
                        type(exc).__name__,
                        exc,
                        backoff,
                    )
                    await self._drop_producer()
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 5.0)
                    continue
                if sent >= self._batch:
                    continue
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self._poll_s)
        finally:
            await self._drop_producer()

    async def _ensure_producer(self) -> Any:
        if self._producer is None:
            p = self._make_producer(self._bootstrap, self._security)
            try:
                await p.start()
            except BaseException:
                await p.stop()
                raise
            self._producer = p
        return self._producer

    async def warm_up(self, topics: Sequence[str] = ()) -> None:
        """Start the producer and learn the leaders of ``topics`` before the first batch."""
        producer = await self._ensure_producer()
        for topic in topics:
            await producer.partitions_for(topic)

    async def sample(self) -> int:
        """Measure the backlog (rows and the oldest one's age) for the metrics; returns
        the rows waiting."""
        self._sampled = time.monotonic()
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                "SELECT count(*) AS n, coalesce(extract(epoch FROM now() - min(created_at)),"
                " 0)::float8 AS age FROM outbox"
            )
            row = await cur.fetchone()
        waiting = int(row["n"]) if row else 0
        metrics.OUTBOX_BACKLOG.set(waiting)
        metrics.OUTBOX_OLDEST_AGE.set(float(row["age"]) if row else 0.0)
        return waiting

    async def drain(self, timeout_s: float) -> int:
        """Publish what is committed, for at most ``timeout_s`` (shutdown calls this after
        ``run`` has stopped). Returns the rows left in the outbox, which the next replica
        publishes; a broker or database still out is retried until the time is up."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout_at(deadline):
                while True:
                    try:
                        if await self.publish_once() == 0:
                            break  # empty, or another replica holds the lock and publishes
                    except (kafka.KafkaError, OSError, psycopg.Error) as exc:
                        metrics.OUTBOX_PUBLISH_FAILURES.labels(type(exc).__name__).inc()
                        log.warning("outbox drain: %s: %s; retrying", type(exc).__name__, exc)
                        await self._drop_producer()
                        await asyncio.sleep(0.2)
        await self._drop_producer()
        try:
            left = await asyncio.wait_for(self.sample(), max(1.0, deadline - loop.time()))
        except (psycopg.Error, TimeoutError) as exc:
            log.warning("outbox drain: cannot count the rows left: %s", exc)
            return -1
        if left:
            log.warning("outbox drain: %d rows left for the next replica to publish", left)
        else:
            log.info("outbox drained")
        return left

    async def close(self) -> None:
        """Stop the producer (``run`` does this itself when cancelled); safe to call twice."""
        await self._drop_producer()

    async def _drop_producer(self) -> None:
        p, self._producer = self._producer, None
        if p is not None:
            try:
                await p.stop()
            except Exception as exc:
                log.debug("stopping the producer failed: %s", exc)

    async def publish_once(self) -> int:
        """Publish up to one batch; returns how many rows went out."""
        async with self._pool.connection() as conn, conn.transaction():
            cur = await conn.execute("SELECT pg_try_advisory_xact_lock(%s, %s) AS mine", LOCK)
            row = await cur.fetchone()
            if row is None or not row["mine"]:
                return 0  # another replica publishes now
            cur = await conn.execute(
                "SELECT id, topic, key, payload, headers, created_at FROM outbox"
                " ORDER BY id LIMIT %s",
                (self._batch,),
            )
            rows = await cur.fetchall()
            if not rows:
                return 0
            producer = await self._ensure_producer()
            futures = []
            for r in rows:
                headers = (
                    r["headers"] if isinstance(r["headers"], dict) else json.loads(r["headers"])
                )
                futures.append(
                    await producer.send(
                        r["topic"],
                        value=bytes(r["payload"]),
                        key=r["key"].encode(),
                        headers=events.to_kafka_headers(headers),
                    )
                )
            await asyncio.gather(*futures)
            acked = datetime.datetime.now(datetime.UTC)
            await conn.execute("DELETE FROM outbox WHERE id = ANY(%s)", ([r["id"] for r in rows],))
        self.published += len(rows)
        metrics.OUTBOX_PUBLISHED.inc(len(rows))
        for r in rows:
            metrics.OUTBOX_LAG.observe(max(0.0, (acked - r["created_at"]).total_seconds()))
        return len(rows)
