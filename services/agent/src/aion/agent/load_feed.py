"""Reads the executors' load reports from Kafka into a ``load.LoadBoard``.

Every agent replica needs every report, so the consumer joins no group and
starts at the topic's end: the executors publish every ``load_interval_s``,
so a replica that starts has a full view within one interval. A record that
is not a load report is skipped (logged once); a broker that goes away is
retried, and the reports it withholds age out of the board meanwhile. Each report
is read in a CONSUMER span, a child of the executor's send span
(``aion.core.kafka_spans``).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import aiokafka  # type: ignore[import-untyped]
from aiokafka.errors import KafkaError  # type: ignore[import-untyped]
from google.protobuf import message as pb_message

from aion.agent import load
from aion.api.events.v1 import events_pb2
from aion.core import kafka as core_kafka
from aion.core import kafka_spans

log = logging.getLogger(__name__)

EVENT_TYPE = "aion.executor.load"
_RETRY_S = 1.0


def report_from(record_value: bytes) -> load.Report | None:
    """The load report a record carries; None when it carries none."""
    try:
        env = events_pb2.Envelope.FromString(record_value)
        if env.type != EVENT_TYPE:
            return None
        data = events_pb2.ExecutorLoad()
        if not env.data.Unpack(data):
            return None
    except pb_message.DecodeError:
        return None
    return load.Report(
        executor=data.executor,
        queue_depth=data.queue_depth,
        in_flight=data.in_flight,
        tokens_per_s=data.tokens_per_s,
        p95_latency_ms=data.p95_latency_ms,
        model_ready=data.model_ready,
    )


class LoadFeed:
    """Consumes ``topic`` into ``board`` until cancelled (``run``, a background task)."""

    def __init__(
        self,
        board: load.LoadBoard,
        *,
        bootstrap: str,
        topic: str,
        security: core_kafka.KafkaSettings | None = None,
    ) -> None:
        self._board = board
        self._bootstrap = bootstrap
        self._topic = topic
        self._security = security
        self.received = 0

    async def run(self) -> None:
        """Consume, reconnecting when the broker goes away."""
        skipped = False
        while True:
            consumer: Any = None
            try:
                await core_kafka.ensure_topics(self._bootstrap, {self._topic: 1}, self._security)
                consumer = aiokafka.AIOKafkaConsumer(
                    self._topic,
                    bootstrap_servers=self._bootstrap,
                    group_id=None,
                    enable_auto_commit=False,
                    auto_offset_reset="latest",
                    client_id="aion-agent-load",
                    **core_kafka.client_options(self._security),
                )
                await consumer.start()
                log.info("reading executor load reports", extra={"topic": self._topic})
                async for record in consumer:
                    with kafka_spans.process(record):
                        report = report_from(record.value)
                        if report is None:
                            if not skipped:
                                log.warning("skipping records that are not load reports")
                            skipped = True
                            continue
                        self._board.record(report)
                    self.received += 1
            except (KafkaError, OSError) as exc:
                log.warning("executor load reports unreachable, retrying: %s", exc)
                await asyncio.sleep(_RETRY_S)
            finally:
                if consumer is not None:
                    await consumer.stop()
