"""How every aion service talks to Kafka: one settings model, one set of client options,
one producer, one way to create topics and one way to send an event.

A service's settings class mixes in ``KafkaSettings``; its fields take the
service's prefix (``AION_AGENT_KAFKA_SECURITY_PROTOCOL``,
``AION_KNOWLEDGE_KAFKA_SASL_USERNAME``...), so each service may have its own
Kafka principal, which the brokers' ACLs then fence. ``client_options``
turns them into the keyword arguments that aiokafka's producer, consumer and
admin client all take (``bootstrap_servers`` aside); every Kafka client of
every service is built with them, so no service has its own copy.

- ``PLAINTEXT``: no TLS, no authentication (a development broker).
- ``SSL``: TLS; the brokers are verified against ``ssl_cafile`` (or the
  system's CAs), and ``ssl_certfile``/``ssl_keyfile`` authenticate the client
  when the brokers ask for a certificate.
- ``SASL_PLAINTEXT`` / ``SASL_SSL``: a username and password (PLAIN, or
  SCRAM-SHA-256/512, which never sends the password), over plain TCP or TLS.

``producer`` builds the aiokafka producer every service uses (idempotent,
``acks=all``, unless a caller overrides it), ``ensure_topics`` creates the
topics a service writes, and ``send`` publishes one envelope
(``aion.core.events``) inside a PRODUCER span, with the W3C trace context and
the event type in the record's headers. aiokafka is the ``kafka`` extra of
aion-core (``aion-core[kafka]``): only the services that use Kafka import this
module, so the gateway's and router's images stay without it.
"""

from __future__ import annotations

import contextlib
import ssl
from pathlib import Path
from typing import Any, Literal

import aiokafka  # type: ignore[import-untyped]
import pydantic
from aiokafka import admin as kafka_admin
from aiokafka import errors as kafka_errors
from opentelemetry import trace

from aion.api.events.v1 import events_pb2
from aion.core import events

Protocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
Mechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]


class KafkaSettings(pydantic.BaseModel):
    """The security of a service's Kafka connections; mixed into its settings class."""

    kafka_security_protocol: Protocol = pydantic.Field(
        default="PLAINTEXT", description="PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL")
    kafka_sasl_mechanism: Mechanism = pydantic.Field(
        default="SCRAM-SHA-512", description="PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 (SASL_*)")
    kafka_sasl_username: str | None = pydantic.Field(
        default=None, description="the service's Kafka principal (SASL_*)")
    kafka_sasl_password: pydantic.SecretStr | None = pydantic.Field(
        default=None, description="its password (SASL_*); from a Secret")
    kafka_ssl_cafile: Path | None = pydantic.Field(
        default=None, description="PEM CA bundle the brokers' certificates are verified "
                                  "against (SSL, SASL_SSL); unset: the system's CAs")
    kafka_ssl_certfile: Path | None = pydantic.Field(
        default=None, description="PEM client certificate, when the brokers require one")
    kafka_ssl_keyfile: Path | None = pydantic.Field(
        default=None, description="PEM private key of kafka_ssl_certfile")

    @pydantic.model_validator(mode="after")
    def _complete(self) -> KafkaSettings:
        protocol = self.kafka_security_protocol
        if protocol.startswith("SASL_") and not (
                self.kafka_sasl_username and self.kafka_sasl_password
                and self.kafka_sasl_password.get_secret_value()):
            raise ValueError(f"kafka_security_protocol {protocol} needs kafka_sasl_username "
                             "and kafka_sasl_password")
        if (self.kafka_ssl_certfile is None) != (self.kafka_ssl_keyfile is None):
            raise ValueError("kafka_ssl_certfile and kafka_ssl_keyfile go together")
        if not protocol.endswith("SSL") and (
                self.kafka_ssl_cafile or self.kafka_ssl_certfile):
            raise ValueError(f"kafka_ssl_* files are used with SSL or SASL_SSL, not {protocol}")
        return self


def ssl_context(cfg: KafkaSettings) -> ssl.SSLContext:
    """A client TLS context: brokers verified (hostname included), client cert if given."""
    context = ssl.create_default_context(
        cafile=str(cfg.kafka_ssl_cafile) if cfg.kafka_ssl_cafile else None)
    if cfg.kafka_ssl_certfile and cfg.kafka_ssl_keyfile:
        context.load_cert_chain(str(cfg.kafka_ssl_certfile), str(cfg.kafka_ssl_keyfile))
    return context


def client_options(cfg: KafkaSettings | None) -> dict[str, Any]:
    """Keyword arguments for AIOKafkaProducer, AIOKafkaConsumer and AIOKafkaAdminClient
    (none for ``None``: PLAINTEXT)."""
    if cfg is None or cfg.kafka_security_protocol == "PLAINTEXT":
        return {}
    options: dict[str, Any] = {"security_protocol": cfg.kafka_security_protocol}
    if cfg.kafka_security_protocol.endswith("SSL"):
        options["ssl_context"] = ssl_context(cfg)
    if cfg.kafka_security_protocol.startswith("SASL_"):
        assert cfg.kafka_sasl_password is not None  # checked by the model
        options.update(sasl_mechanism=cfg.kafka_sasl_mechanism,
                       sasl_plain_username=cfg.kafka_sasl_username,
                       sasl_plain_password=cfg.kafka_sasl_password.get_secret_value())
    return options


def producer(bootstrap: str, security: KafkaSettings | None = None, *,
             client_id: str = "aion", **overrides: Any) -> Any:
    """An idempotent producer (acks=all, one producer id, ordered retries); not started.

    ``overrides`` are aiokafka keyword arguments (a best-effort producer passes
    ``enable_idempotence=False, acks=1``: it then needs no IdempotentWrite ACL).
    """
    options: dict[str, Any] = {
        "bootstrap_servers": bootstrap, "enable_idempotence": True, "acks": "all",
        "linger_ms": 2, "request_timeout_ms": 15000, "max_batch_size": 256 * 1024,
        "client_id": client_id, **client_options(security)}
    options.update(overrides)
    return aiokafka.AIOKafkaProducer(**options)


async def ensure_topics(bootstrap: str, topics: dict[str, int],
                        security: KafkaSettings | None = None, *,
                        request_timeout_ms: int = 15000) -> None:
    """Create the topics that do not exist yet, with their partition counts."""
    client = kafka_admin.AIOKafkaAdminClient(bootstrap_servers=bootstrap,
                                             request_timeout_ms=request_timeout_ms,
                                             **client_options(security))
    await client.start()
    try:
        existing = set(await client.list_topics())
        missing = [kafka_admin.NewTopic(name=name, num_partitions=parts, replication_factor=1)
                   for name, parts in topics.items() if name not in existing]
        if missing:
            # Another replica may create them meanwhile.
            with contextlib.suppress(kafka_errors.TopicAlreadyExistsError):
                await client.create_topics(missing)
    finally:
        await client.close()


_tracer = trace.get_tracer(__name__)


async def send(client: Any, topic: str, env: events_pb2.Envelope) -> None:
    """Publish ``env`` to ``topic``, keyed by its subject, and wait for the broker's ack.

    The send is a PRODUCER span (a child of the caller's, or a trace of its
    own), whose W3C context travels in the record's headers with ``ce_type``.
    """
    with _tracer.start_as_current_span(f"send {topic}", kind=trace.SpanKind.PRODUCER) as span:
        span.set_attribute("messaging.system", "kafka")
        span.set_attribute("messaging.destination.name", topic)
        span.set_attribute("messaging.message.id", env.id)
        await client.send_and_wait(topic, env.SerializeToString(), key=env.subject.encode(),
                                   headers=events.record_headers(env))
