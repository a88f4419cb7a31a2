"""Load reports: the executor's Stats, published to Kafka at a fixed interval.

Every ``interval_s`` the reporter publishes an ``aion.events.v1.Envelope`` of
type ``aion.executor.load`` whose data is an ``ExecutorLoad`` with the same
figures as the Stats RPC and the ``aion_executor_*`` gauges, keyed by the
executor's id so one executor's reports stay in order. The router reads them
as its live view of executor load.

Reports are best effort: a broker that is down delays them (the reporter
keeps retrying, logging once per outage) but never the inference itself.
On shutdown a last report says the model is no longer ready. The clients
connect with the executor's Kafka security settings (``aion.core.kafka``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import logging
import types
import uuid
from collections.abc import Callable
from typing import Any, Self

import aiokafka  # type: ignore[import-untyped]
from aiokafka import admin as kafka_admin
from aiokafka import errors as kafka_errors
from google.protobuf import any_pb2, timestamp_pb2

from aion.api.events.v1 import events_pb2
from aion.core import kafka as core_kafka
from aion.executor import stats

log = logging.getLogger(__name__)

EVENT_TYPE = "aion.executor.load"
SOURCE = "executor"
_RETRY_S = 2.0


def envelope(load: stats.Load, *, executor: str, model: str) -> events_pb2.Envelope:
    """The envelope of one load report."""
    data = any_pb2.Any()
    data.Pack(events_pb2.ExecutorLoad(
        executor=executor, model=model, queue_depth=load.queue_depth,
        in_flight=load.in_flight, tokens_per_s=load.tokens_per_s,
        p95_latency_ms=(load.p95_latency_s or 0.0) * 1000, model_ready=load.model_ready))
    now = timestamp_pb2.Timestamp()
    now.FromDatetime(datetime.datetime.now(datetime.UTC))
    return events_pb2.Envelope(id=str(uuid.uuid4()), type=EVENT_TYPE, source=SOURCE, time=now,
                               subject=executor, data=data)


class LoadReporter:
    """Publishes the load every ``interval_s``; an async context manager, ``run`` in a task."""

    def __init__(self, source: Callable[[], stats.Load], *, bootstrap: str, topic: str,
                 interval_s: float, executor: str, model: str,
                 security: core_kafka.KafkaSettings | None = None) -> None:
        self._source = source
        self._options = core_kafka.client_options(security)
        self._bootstrap = bootstrap
        self._topic = topic
        self._interval_s = interval_s
        self._executor = executor
        self._model = model
        self._producer: Any = None
        self._started = False
        self.published = 0
        self.connect_attempts = 0

    async def __aenter__(self) -> Self:
        self._producer = aiokafka.AIOKafkaProducer(
            bootstrap_servers=self._bootstrap, client_id=f"aion-executor-{self._executor}",
            acks=1, linger_ms=0, request_timeout_ms=10000, **self._options)
        return self

    async def run(self) -> None:
        """Connect (retrying while the broker is away), then publish until cancelled."""
        await self._connect()
        failing = False
        while True:
            try:
                await self.publish()
                if failing:
                    log.info("load reports reach Kafka again", extra={"topic": self._topic})
                failing = False
            except kafka_errors.KafkaError as exc:
                if not failing:
                    log.warning("cannot publish load reports: %s", exc,
                                extra={"topic": self._topic})
                failing = True
            await asyncio.sleep(self._interval_s)

    async def publish(self, load: stats.Load | None = None) -> None:
        """Publish one report (the current load unless ``load`` is given)."""
        event = envelope(load or self._source(), executor=self._executor, model=self._model)
        await self._producer.send_and_wait(
            self._topic, event.SerializeToString(), key=self._executor.encode(),
            headers=[("ce_type", EVENT_TYPE.encode())])
        self.published += 1

    async def _connect(self) -> None:
        failing = False
        while True:
            self.connect_attempts += 1
            try:
                await self._ensure_topic()
                await self._producer.start()
                self._started = True
                log.info("publishing load reports", extra={
                    "topic": self._topic, "interval_s": self._interval_s})
                return
            except (kafka_errors.KafkaError, OSError) as exc:
                if not failing:
                    log.warning("Kafka is unreachable for load reports (retrying): %s", exc,
                                extra={"bootstrap": self._bootstrap})
                failing = True
                await asyncio.sleep(_RETRY_S)

    async def _ensure_topic(self) -> None:
        client = kafka_admin.AIOKafkaAdminClient(bootstrap_servers=self._bootstrap,
                                                 request_timeout_ms=10000, **self._options)
        await client.start()
        try:
            if self._topic not in set(await client.list_topics()):
                with contextlib.suppress(kafka_errors.TopicAlreadyExistsError):
                    await client.create_topics([kafka_admin.NewTopic(
                        name=self._topic, num_partitions=1, replication_factor=1)])
        finally:
            await client.close()

    async def close(self) -> None:
        """Publish a last report (model not ready), then stop; safe to call twice."""
        producer, self._producer = self._producer, None
        if producer is None:
            return
        if self._started:
            self._producer = producer
            try:
                async with asyncio.timeout(3):
                    await self.publish(dataclasses.replace(self._source(), model_ready=False))
            except (kafka_errors.KafkaError, TimeoutError):
                log.warning("the last load report did not reach Kafka")
            finally:
                self._producer = None
        await producer.stop()

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: types.TracebackType | None) -> None:
        await self.close()
