"""The security of a service's Kafka connections, without the Kafka client: one settings
model and the keyword arguments it turns into.

A service's settings class mixes in ``KafkaSettings``; its fields take the
service's prefix (``AION_AGENT_KAFKA_SECURITY_PROTOCOL``,
``AION_KNOWLEDGE_KAFKA_SASL_USERNAME``...), so each service may have its own
Kafka principal, which the brokers' ACLs then fence. ``client_options``
turns them into the keyword arguments that aiokafka's producer, consumer and
admin client all take (``bootstrap_servers`` aside); every Kafka client of
every service is built with them (``aion.core.kafka``), so no service has its own copy.

- ``PLAINTEXT``: no TLS, no authentication (a development broker).
- ``SSL``: TLS; the brokers are verified against ``ssl_cafile`` (or the
  system's CAs), and ``ssl_certfile``/``ssl_keyfile`` authenticate the client
  when the brokers ask for a certificate.
- ``SASL_PLAINTEXT`` / ``SASL_SSL``: a username and password (PLAIN, or
  SCRAM-SHA-256/512, which never sends the password), over plain TCP or TLS.

This module imports no Kafka client, so a service that only configures others'
Kafka connections (the operator, for the executors it renders) needs no aiokafka.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any, Literal

import pydantic

Protocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
Mechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]


class KafkaSettings(pydantic.BaseModel):
    """The security of a service's Kafka connections; mixed into its settings class."""

    kafka_security_protocol: Protocol = pydantic.Field(
        default="PLAINTEXT", description="PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL"
    )
    kafka_sasl_mechanism: Mechanism = pydantic.Field(
        default="SCRAM-SHA-512", description="PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 (SASL_*)"
    )
    kafka_sasl_username: str | None = pydantic.Field(
        default=None, description="the service's Kafka principal (SASL_*)"
    )
    kafka_sasl_password: pydantic.SecretStr | None = pydantic.Field(
        default=None, description="its password (SASL_*); from a Secret"
    )
    kafka_ssl_cafile: Path | None = pydantic.Field(
        default=None,
        description="PEM CA bundle the brokers' certificates are verified "
        "against (SSL, SASL_SSL); unset: the system's CAs",
    )
    kafka_ssl_certfile: Path | None = pydantic.Field(
        default=None, description="PEM client certificate, when the brokers require one"
    )
    kafka_ssl_keyfile: Path | None = pydantic.Field(
        default=None, description="PEM private key of kafka_ssl_certfile"
    )

    @pydantic.model_validator(mode="after")
    def _complete(self) -> KafkaSettings:
        protocol = self.kafka_security_protocol
        if protocol.startswith("SASL_") and not (
            self.kafka_sasl_username
            and self.kafka_sasl_password
            and self.kafka_sasl_password.get_secret_value()
        ):
            raise ValueError(
                f"kafka_security_protocol {protocol} needs kafka_sasl_username "
                "and kafka_sasl_password"
            )
        if (self.kafka_ssl_certfile is None) != (self.kafka_ssl_keyfile is None):
            raise ValueError("kafka_ssl_certfile and kafka_ssl_keyfile go together")
        if not protocol.endswith("SSL") and (self.kafka_ssl_cafile or self.kafka_ssl_certfile):
            raise ValueError(f"kafka_ssl_* files are used with SSL or SASL_SSL, not {protocol}")
        return self


def ssl_context(cfg: KafkaSettings) -> ssl.SSLContext:
    """A client TLS context: brokers verified (hostname included), client cert if given."""
    context = ssl.create_default_context(
        cafile=str(cfg.kafka_ssl_cafile) if cfg.kafka_ssl_cafile else None
    )
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
        options.update(
            sasl_mechanism=cfg.kafka_sasl_mechanism,
            sasl_plain_username=cfg.kafka_sasl_username,
            sasl_plain_password=cfg.kafka_sasl_password.get_secret_value(),
        )
    return options
