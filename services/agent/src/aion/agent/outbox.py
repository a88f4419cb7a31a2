"""The transactional outbox: events written with the change they describe, then published.

``add`` inserts an event into ``outbox`` on the caller's connection, inside
the caller's transaction: if the change rolls back, so does its event.

``Publisher`` moves rows to Kafka in id order with an idempotent producer,
pipelined: it reads and sends the next batch while the batches before it are
still being acknowledged (up to ``depth`` batches in flight), and deletes a
batch only once every row of it was acked, oldest batch first. One publisher
at a time works: it holds a session-level advisory lock on one pooled
connection for as long as it publishes (until the outbox is empty; the lock
also excludes a publisher that takes the same key per transaction), so rows of
one task reach their partition in the order they were written.

Each read after the first takes the rows after the last one in flight, and
counts in the same statement the rows at or below it: a count other than the
rows in flight means a transaction committed a lower id late. That batch is
then not sent; the publisher lets what is in flight settle and reads again
from the lowest id, so a row is never sent before an earlier-committed row of
its task. A crash (or a failed send) between the send and the delete sends
those rows again, from the oldest one not deleted: consumers skip them by
envelope id (after a failed send, rows sent after it that did reach the broker
come before the copies, as within one batch). When ``run`` is cancelled, the
batches in flight stay with the publisher (its connection, and so its lock,
is closed) and ``drain`` first awaits their acks and deletes their rows.

Each row is sent in a PRODUCER span (``aion.core.kafka_spans``), a child of the
trace that wrote it (its context is stored with the row), ending with its ack;
the record's headers carry that span's context to the consumer.

The publisher exports its backlog (sampled every ``sample_s``), the lag of
each row from commit to Kafka ack, and its publish counts (``metrics``).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import psycopg
from opentelemetry import context as otel_context
from opentelemetry import propagate
from psycopg import rows as pg_rows
from psycopg.types import json as pg_json

from aion.agent import db, events, kafka, metrics
from aion.api.events.v1 import events_pb2
from aion.core import kafka as core_kafka
from aion.core import kafka_spans

log = logging.getLogger(__name__)

# The advisory lock's key: "aion" "outbox" as two int32s.
LOCK = (0x61696F6E, 0x6F757462)

# The next rows after ``after``, and how many rows are at or below it (in one snapshot).
# The headers come as JSON text, decoded for the whole batch at once.
_READ = (
    "SELECT id, topic, key, payload, headers::text,"
    " extract(epoch FROM created_at)::float8,"
    " (SELECT count(*) FROM outbox WHERE id <= %(after)s), event_id"
    " FROM outbox WHERE id > %(after)s ORDER BY id LIMIT %(n)s"
)


def _row(
    topic: str, env: events_pb2.Envelope, trace: Mapping[str, str] | None
) -> tuple[str, str, str, bytes, pg_json.Jsonb]:
    headers = events.trace_headers()
    if not headers and trace:
        headers = dict(trace)
    return (
        topic,
        env.subject,
        env.id,
        env.SerializeToString(),
        pg_json.Jsonb({**headers, "ce_type": env.type}),
    )


async def add(
    conn: psycopg.AsyncConnection[Any],
    *,
    topic: str,
    env: events_pb2.Envelope,
    trace: Mapping[str, str] | None = None,
) -> None:
    """Write ``env`` to the outbox in the connection's current transaction, with the trace
    context it is sent in: the current span's, else ``trace`` (its task's, when the change
    is made outside a span: recovery)."""
    await conn.execute(
        "INSERT INTO outbox (topic, key, event_id, payload, headers) VALUES (%s, %s, %s, %s, %s)",
        _row(topic, env, trace),
    )


# Rows for the outbox from the arrays ``columns`` gives, in their order: part of a statement
# that writes them with the change they describe (``WITH ... AS (INSERT ...)``), which adds
# its own condition (``WHERE ...``) and then ``ORDER BY o.n``.
INSERT_COLUMNS = (
    "INSERT INTO outbox (topic, key, event_id, payload, headers)"
    " SELECT o.topic, o.key, o.event_id, o.payload, o.headers FROM unnest("
    "%(outbox_topic)s::text[], %(outbox_key)s::text[], %(outbox_event_id)s::uuid[],"
    " %(outbox_payload)s::bytea[], %(outbox_headers)s::jsonb[])"
    " WITH ORDINALITY AS o(topic, key, event_id, payload, headers, n)"
)


def columns(
    items: Sequence[tuple[str, events_pb2.Envelope]], *, trace: Mapping[str, str] | None = None
) -> dict[str, list[Any]]:
    """The parameters of ``INSERT_COLUMNS`` for ``(topic, envelope)`` pairs (as ``add``)."""
    rows = [_row(topic, env, trace) for topic, env in items]
    names = ("topic", "key", "event_id", "payload", "headers")
    return {f"outbox_{name}": [r[i] for r in rows] for i, name in enumerate(names)}


@dataclasses.dataclass(slots=True)
class _Batch:
    """Rows sent and not yet deleted: their ids (ascending), commit times (epoch seconds)
    and the producer's futures of their acks."""

    ids: list[int]
    created: list[float]
    acks: list[asyncio.Future[Any]]


def _retrieved(fut: asyncio.Future[Any]) -> None:
    """An ack nobody awaits any more (abandoned after a failure) logs no stray error."""
    if not fut.cancelled():
        fut.exception()


# The longest a stopping publisher waits for its producer's sends in flight to be acked.
STOP_S = 5.0


class Publisher:
    """Moves outbox rows to Kafka until cancelled."""

    def __init__(
        self,
        *,
        pool: db.Pool,
        bootstrap: str,
        batch: int = 1000,
        depth: int = 4,
        poll_s: float = 0.2,
        linger_s: float = 0.0,
        sample_s: float = 5.0,
        make_producer: Callable[[str, core_kafka.KafkaSettings | None], Any] = (kafka.producer),
        security: core_kafka.KafkaSettings | None = None,
    ) -> None:
        self._pool = pool
        self._bootstrap = bootstrap
        self._batch = batch
        self._depth = max(1, depth)
        self._poll_s = poll_s
        self._linger_s = linger_s
        self._sample_s = sample_s
        self._sampled = -sample_s
        self._sampling = False
        self._make_producer = make_producer
        self._security = security
        self._producer: Any = None
        self._wake = asyncio.Event()
        # Sent and not deleted, oldest first; kept when a publish is cancelled.
        self._inflight: collections.deque[_Batch] = collections.deque()
        self.published = 0

    def wake(self) -> None:
        """New rows were committed: publish within ``linger_s`` instead of at the next
        poll."""
        self._wake.set()

    async def run(self) -> None:
        """Publish until cancelled; a broker or database outage is waited out."""
        backoff = 0.2
        self._sampling = True
        try:
            while True:
                self._wake.clear()
                try:
                    await self.publish()
                    backoff = 0.2
                    await self._sample_if_due()
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
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self._poll_s)
                if self._wake.is_set() and self._linger_s:
                    # Woken by a commit: the commits of the next while share its round.
                    await asyncio.sleep(self._linger_s)
        finally:
            self._sampling = False
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

    async def _sample_if_due(self) -> None:
        if self._sampling and time.monotonic() - self._sampled >= self._sample_s:
            await self.sample()

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
        ``run`` has stopped): the batches ``run`` left in flight are awaited and deleted
        first. Returns the rows left in the outbox, which the next replica publishes; a
        broker or database still out is retried until the time is up."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout_at(deadline):
                while True:
                    try:
                        if await self.publish() == 0:
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
        """Stop the producer, flushing what is in flight for at most ``STOP_S``: a send
        that a broker keeps retrying (a partition without a leader) must not hold up a
        shutdown. Rows whose sends were not acked stay in the outbox, for the next
        publish (here or on another replica) to send again."""
        p, self._producer = self._producer, None
        if p is None:
            return
        stopping = asyncio.ensure_future(p.stop())  # flushes: in flight is acked or fails
        try:
            done, _ = await asyncio.wait([stopping], timeout=STOP_S)
        except asyncio.CancelledError:
            stopping.cancel()
            raise
        if not done:
            log.warning(
                "outbox publisher: the producer did not flush within %.0fs; rows not acked"
                " stay in the outbox",
                STOP_S,
            )
            stopping.cancel()
            with contextlib.suppress(Exception):
                await p.client.close()
        elif stopping.exception() is not None:
            log.debug("stopping the producer failed: %s", stopping.exception())

    async def publish(self) -> int:
        """Publish until the outbox is empty, pipelined; returns how many rows were acked
        and deleted (0 also when another publisher holds the lock)."""
        async with self._pool.connection() as conn:
            async with conn.transaction():
                cur = await conn.execute("SELECT pg_try_advisory_lock(%s, %s) AS mine", LOCK)
                row = await cur.fetchone()
            if row is None or not row["mine"]:
                return 0  # another replica publishes now
            try:
                published = await self._pipeline(conn)
                async with conn.transaction():
                    await conn.execute("SELECT pg_advisory_unlock(%s, %s)", LOCK)
            except BaseException as exc:
                if not isinstance(exc, asyncio.CancelledError):
                    self._abandon()  # sent again from the oldest row not deleted
                # The lock ends with the session; the pool discards a closed connection.
                await conn.close()
                raise
        return published

    async def _pipeline(self, conn: psycopg.AsyncConnection[Any]) -> int:
        """Keep up to ``depth`` batches in flight, deleting the oldest once it is acked,
        until a read finds nothing new and nothing is in flight."""
        published = 0
        while True:
            if len(self._inflight) < self._depth:
                rows = await self._read(conn)
                if rows is None:  # a lower id committed late: settle, then read it first
                    while self._inflight:
                        published += await self._retire(conn)
                    continue
                if rows:
                    await self._send(rows)
                    if len(rows) == self._batch:
                        continue  # more are waiting: fill the pipeline
            if not self._inflight:
                return published
            published += await self._retire(conn)
            await self._sample_if_due()

    async def _read(self, conn: psycopg.AsyncConnection[Any]) -> list[tuple[Any, ...]] | None:
        """The next batch after the rows in flight; None when a row at or below the last
        one in flight is not in flight (it committed after a later id was read)."""
        after = self._inflight[-1].ids[-1] if self._inflight else 0
        async with conn.transaction():
            cur = conn.cursor(binary=True, row_factory=pg_rows.tuple_row)
            await cur.execute(_READ, {"after": after, "n": self._batch})
            rows = await cur.fetchall()
        if rows and rows[0][6] != sum(len(b.ids) for b in self._inflight):
            return None
        return rows

    async def _send(self, rows: list[tuple[Any, ...]]) -> None:
        """Hand ``rows`` to the producer in order; the ones handed over are in flight."""
        producer = await self._ensure_producer()
        # Rows written together share their headers (the trace that caused them, the type):
        # each distinct set is decoded once. Each row is sent in a PRODUCER span of its own,
        # a child of that trace, whose context replaces it in the record's headers; the
        # span ends with the row's ack. A span that records nothing (no tracing, or its
        # trace sampled out) is the same for every row of that set: it is made once, and
        # its headers serve them all.
        stored: dict[str, tuple[dict[str, str], otel_context.Context]] = {}
        for text in {r[4] for r in rows}:
            fields = json.loads(text)
            stored[text] = (fields, propagate.extract(fields))
        unrecorded: dict[str, list[tuple[str, bytes]]] = {}
        acks: list[asyncio.Future[Any]] = []
        try:
            for _, topic, key, payload, text, _, _, event_id in rows:
                headers = unrecorded.get(text)
                span = None
                if headers is None:
                    fields, parent = stored[text]
                    span = kafka_spans.start_send(
                        topic, key=key, message_id=str(event_id), parent=parent
                    )
                    headers = kafka_spans.headers(span, fields, type_=fields.get("ce_type"))
                    if not span.is_recording():
                        unrecorded[text], span = headers, None
                try:
                    ack = await producer.send(
                        topic, value=payload, key=key.encode(), headers=headers
                    )
                except BaseException as exc:
                    if span is not None:
                        span.record_exception(exc)
                        span.end()
                    raise
                if span is not None:
                    kafka_spans.acked(span, ack)
                acks.append(ack)
        finally:
            if acks:
                sent = rows[: len(acks)]
                self._inflight.append(_Batch([r[0] for r in sent], [r[5] for r in sent], acks))

    async def _retire(self, conn: psycopg.AsyncConnection[Any]) -> int:
        """Await the oldest batch's acks (a cancelled wait leaves it in flight, its sends
        untouched), then delete its rows."""
        oldest = self._inflight[0]
        for ack in oldest.acks:
            if not ack.done():
                await asyncio.wait((ack,))
            ack.result()  # the send's error, if it failed
        acked = time.time()
        async with conn.transaction():
            await conn.execute(  # the ids as one array literal: cheaper than a list's dump
                "DELETE FROM outbox WHERE id = ANY(%s::int8[])",
                ("{" + ",".join(map(str, oldest.ids)) + "}",),
            )
        self._inflight.popleft()
        self.published += len(oldest.ids)
        metrics.OUTBOX_PUBLISHED.inc(len(oldest.ids))
        for created in oldest.created:
            metrics.OUTBOX_LAG.observe(max(0.0, acked - created))
        return len(oldest.ids)

    def _abandon(self) -> None:
        """Forget the batches in flight after a failure: their rows stay in the outbox."""
        while self._inflight:
            for ack in self._inflight.popleft().acks:
                ack.add_done_callback(_retrieved)
