"""Kafka with SASL: the services' clients (built from ``aion.core.kafka``) connect with the
right credentials and are refused with wrong ones or none.

The test starts a broker of its own (other ports, its own folder) whose extra
listener takes SASL_PLAINTEXT with the PLAIN mechanism, and stops it afterwards;
the shared broker is not touched.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydantic
import pytest
from aiokafka import AIOKafkaConsumer  # type: ignore[import-untyped]
from aiokafka import errors as kafka_errors

from aion.agent.settings import AgentSettings
from aion.api.events.v1 import events_pb2
from aion.core import kafka as core_kafka
from aion.core import settings
from aion.executor import load_report, stats
from aion.executor.settings import ExecutorSettings
from aion.infra.devstack import suite
from aion.infra.kafka import HOST, Kafka
from aion.infra.paths import Layout
from aion.knowledge import queue
from aion.knowledge.settings import KnowledgeSettings

pytestmark = pytest.mark.kafka

USER, PASSWORD = "aion-agent", "s3cret-of-the-agent"


class SaslKafka(Kafka):
    """The local broker plus a SASL_PLAINTEXT listener (PLAIN, one user) on ``sasl_port``."""

    sasl_port = 0

    def prepare(self) -> None:
        super().prepare()
        props = dict(
            line.split("=", 1)
            for line in self.config.read_text().splitlines()
            if line and not line.startswith("#")
        )
        listener = f"SASL_PLAINTEXT://{HOST}:{self.sasl_port}"
        props["listeners"] += "," + listener
        props["advertised.listeners"] += "," + listener
        props["listener.security.protocol.map"] += ",SASL_PLAINTEXT:SASL_PLAINTEXT"
        props["sasl.enabled.mechanisms"] = "PLAIN"
        props["listener.name.sasl_plaintext.plain.sasl.jaas.config"] = (
            "org.apache.kafka.common.security.plain.PlainLoginModule required "
            f'user_{USER}="{PASSWORD}";'
        )
        self.config.write_text("".join(f"{k}={v}\n" for k, v in props.items()))


@pytest.fixture(scope="module")
def sasl_bootstrap() -> Iterator[str]:
    env = {
        "AION_KAFKA_PORT": str(suite.free_port()),
        "AION_KAFKA_CONTROLLER_PORT": str(suite.free_port()),
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    home = Path(f"/var/tmp/aion-test-sasl-kafka-{uuid.uuid4().hex[:8]}")
    try:
        broker = SaslKafka(Layout(home=home, cache=Layout.from_env().cache))
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    broker.sasl_port = suite.free_port()
    try:
        broker.up()
        yield f"{HOST}:{broker.sasl_port}"
    finally:
        broker.down()
        shutil.rmtree(home, ignore_errors=True)


def security(password: str) -> core_kafka.KafkaSettings:
    return core_kafka.KafkaSettings(
        kafka_security_protocol="SASL_PLAINTEXT",
        kafka_sasl_mechanism="PLAIN",
        kafka_sasl_username=USER,
        kafka_sasl_password=pydantic.SecretStr(password),
    )


def test_the_options_follow_the_protocol() -> None:
    assert core_kafka.client_options(None) == {}
    assert core_kafka.client_options(core_kafka.KafkaSettings()) == {}
    opts = core_kafka.client_options(security("pw"))
    assert opts == {
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": "PLAIN",
        "sasl_plain_username": USER,
        "sasl_plain_password": "pw",
    }
    tls = core_kafka.client_options(core_kafka.KafkaSettings(kafka_security_protocol="SSL"))
    assert tls["security_protocol"] == "SSL"
    assert tls["ssl_context"].check_hostname
    with pytest.raises(pydantic.ValidationError, match="needs kafka_sasl_username"):
        core_kafka.KafkaSettings(kafka_security_protocol="SASL_SSL")
    with pytest.raises(pydantic.ValidationError, match="go together"):
        core_kafka.KafkaSettings(kafka_security_protocol="SSL", kafka_ssl_certfile=Path("/c.pem"))


@pytest.mark.parametrize("cls", [AgentSettings, KnowledgeSettings, ExecutorSettings])
def test_each_kafka_client_service_reads_the_security_settings_under_its_prefix(
    cls: type[settings.ServiceSettings],
) -> None:
    prefix = str(cls.model_config["env_prefix"])
    names = {prefix + n.upper() for n in core_kafka.KafkaSettings.model_fields}
    assert names <= settings.known_variables(cls)


def test_sasl_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AION_AGENT_POSTGRES_DSN", "postgresql://x@h/db")
    monkeypatch.setenv("AION_AGENT_KAFKA_BOOTSTRAP", "k:9093")
    monkeypatch.setenv("AION_AGENT_KAFKA_SECURITY_PROTOCOL", "SASL_PLAINTEXT")
    with pytest.raises(settings.SettingsError, match="needs kafka_sasl_username"):
        settings.load(AgentSettings)
    monkeypatch.setenv("AION_AGENT_KAFKA_SASL_USERNAME", USER)
    monkeypatch.setenv("AION_AGENT_KAFKA_SASL_PASSWORD", PASSWORD)
    monkeypatch.setenv("AION_AGENT_KAFKA_SASL_MECHANISM", "SCRAM-SHA-256")
    options = core_kafka.client_options(settings.load(AgentSettings))
    assert options == {
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": "SCRAM-SHA-256",
        "sasl_plain_username": USER,
        "sasl_plain_password": PASSWORD,
    }


async def test_right_credentials_produce_and_consume(sasl_bootstrap: str) -> None:
    good = security(PASSWORD)
    topic = f"sasl-{uuid.uuid4().hex[:8]}"
    await core_kafka.ensure_topics(sasl_bootstrap, {topic: 1}, good)
    publisher = queue.Publisher(sasl_bootstrap, topic, good)
    await publisher.start()
    try:
        await publisher.publish("doc-1", 42, timeout_s=30)
    finally:
        await publisher.stop()
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=sasl_bootstrap,
        auto_offset_reset="earliest",
        group_id=f"g-{topic}",
        **core_kafka.client_options(good),
    )
    await consumer.start()
    try:
        record = await consumer.getone()
    finally:
        await consumer.stop()
    assert queue.decode(record.value) == 42


async def test_the_executor_load_reports_reach_a_sasl_broker(sasl_bootstrap: str) -> None:
    good = security(PASSWORD)
    topic = f"sasl-load-{uuid.uuid4().hex[:8]}"
    load = stats.Load(
        model_ready=True,
        queue_depth=1,
        in_flight=0,
        max_queue=4,
        tokens_per_s=2.0,
        p95_latency_s=None,
    )
    async with load_report.LoadReporter(
        lambda: load,
        bootstrap=sasl_bootstrap,
        topic=topic,
        interval_s=60,
        executor="pod-1",
        model="m",
        security=good,
    ) as reporter:
        await reporter.connect()
        await reporter.publish()
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=sasl_bootstrap,
        auto_offset_reset="earliest",
        group_id=f"g-{topic}",
        **core_kafka.client_options(good),
    )
    await consumer.start()
    try:
        record = await consumer.getone()
    finally:
        await consumer.stop()
    assert dict(record.headers)["ce_type"] == b"aion.executor.load"
    assert events_pb2.Envelope.FromString(record.value).subject == "pod-1"


@pytest.mark.parametrize(
    ("options", "why"),
    [
        pytest.param(
            core_kafka.client_options(security("wrong password")),
            "SaslAuthenticationFailed: Authentication failed: Invalid username or password",
            id="wrong-password",
        ),
        # A client without SASL speaks Kafka to a listener that wants a SASL handshake first.
        pytest.param({}, "closed", id="no-credentials"),
    ],
)
async def test_wrong_or_missing_credentials_are_refused(
    sasl_bootstrap: str,
    options: dict[str, Any],
    why: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    producer = core_kafka.producer(
        sasl_bootstrap, request_timeout_ms=5000, metadata_max_age_ms=5000, **options
    )
    try:
        with pytest.raises(kafka_errors.KafkaError) as info:
            await producer.start()
    finally:
        await producer.stop()
    assert "Unable to bootstrap" in str(info.value)
    # Refused by the broker for its reason (aiokafka logs it, then gives up bootstrapping).
    assert any(why in r.getMessage() for r in caplog.records if r.name.startswith("aiokafka")), [
        r.getMessage() for r in caplog.records
    ]
