"""Load reports: the executor's Stats, published to Kafka at a fixed interval.

Every ``interval_s`` the reporter publishes an ``aion.events.v1.Envelope`` of
type ``aion.executor.load`` whose data is an ``ExecutorLoad`` with the same
figures as the Stats RPC and the ``aion_executor_*`` gauges, keyed by the
executor's id so one executor's reports stay in order.

No service consumes them yet: they are the seam for load-aware routing (the
router is to read them as its live view of executor load; until then it
picks executors without it). Whoever consumes them reads ``ExecutorLoad``
from the topic named by ``AION_EXECUTOR_LOAD_TOPIC``.

The envelope, the producer, the topic creation and the send (a PRODUCER
span, its W3C trace context in the record's headers) are the ones every
service uses (``aion.core.events``, ``aion.core.kafka``). Reports are best
effort: a broker that is down delays them (the reporter keeps retrying,
logging once per outage) but never the inference itself, and the producer
is not idempotent (``acks=1``; no IdempotentWrite ACL needed). On shutdown
a last report says the model is no longer ready. The clients connect with
the executor's Kafka security settings.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import types
from collections.abc import Callable
from typing import Any, Self

from aiokafka import errors as kafka_errors  # type: ignore[import-untyped]

from aion.api.events.v1 import events_pb2
from aion.core import events
from aion.core import kafka as core_kafka
from aion.executor import stats

log = logging.getLogger(__name__)

EVENT_TYPE = "aion.executor.load"
SOURCE = "executor"
_RETRY_S = 2.0


def envelope(load: stats.Load, *, executor: str, model: str) -> events_pb2.Envelope:
    """The envelope of one load report."""
    return events.envelope(
        type_=EVENT_TYPE,
        source=SOURCE,
        subject=executor,
        data=events_pb2.ExecutorLoad(
            executor=executor,
            model=model,
            queue_depth=load.queue_depth,
            in_flight=load.in_flight,
            tokens_per_s=load.tokens_per_s,
            p95_latency_ms=(load.p95_latency_s or 0.0) * 1000,
            model_ready=load.model_ready,
        ),
    )


class LoadReporter:
    """Publishes the load every ``interval_s``; an async context manager, ``run`` in a task."""

    def __init__(
        self,
        source: Callable[[], stats.Load],
        *,
        bootstrap: str,
        topic: str,
        interval_s: float,
        executor: str,
        model: str,
        security: core_kafka.KafkaSettings | None = None,
    ) -> None:
        self._source = source
        self._security = security
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
        self._producer = core_kafka.producer(
            self._bootstrap,
            self._security,
            client_id=f"aion-executor-{self._executor}",
            enable_idempotence=False,
            acks=1,
            linger_ms=0,
            request_timeout_ms=10000,
        )
        return self

    async def run(self) -> None:
        """Connect (retrying while the broker is away), then publish until cancelled."""
        await self.connect()
        failing = False
        while True:
            try:
                await self.publish()
                if failing:
                    log.info("load reports reach Kafka again", extra={"topic": self._topic})
                failing = False
            except kafka_errors.KafkaError as exc:
                if not failing:
                    log.warning(
                        "cannot publish load reports: %s", exc, extra={"topic": self._topic}
                    )
                failing = True
            await asyncio.sleep(self._interval_s)

    async def publish(self, load: stats.Load | None = None) -> None:
        """Publish one report (the current load unless ``load`` is given)."""
        event = envelope(load or self._source(), executor=self._executor, model=self._model)
        await core_kafka.send(self._producer, self._topic, event)
        self.published += 1

    async def connect(self) -> None:
        """Create the topic and start the producer, retrying while the broker is away."""
        failing = False
        while True:
            self.connect_attempts += 1
            try:
                await core_kafka.ensure_topics(
                    self._bootstrap, {self._topic: 1}, self._security, request_timeout_ms=10000
                )
                await self._producer.start()
                self._started = True
                log.info(
                    "publishing load reports",
                    extra={"topic": self._topic, "interval_s": self._interval_s},
                )
                return
            except (kafka_errors.KafkaError, OSError) as exc:
                if not failing:
                    log.warning(
                        "Kafka is unreachable for load reports (retrying): %s",
                        exc,
                        extra={"bootstrap": self._bootstrap},
                    )
                failing = True
                await asyncio.sleep(_RETRY_S)

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

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: types.TracebackType | None,
    ) -> None:
        await self.close()
