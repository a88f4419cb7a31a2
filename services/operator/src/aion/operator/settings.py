"""Operator settings (environment prefix ``AION_OPERATOR_``)."""

from __future__ import annotations

import pathlib
from typing import Annotated

import pydantic
import pydantic_settings
from pydantic import alias_generators

from aion.core import kafka_security as kafka
from aion.core import settings

# Where Kubernetes mounts the pod's own namespace (the fallback of lease_namespace).
SERVICE_ACCOUNT_NAMESPACE = pathlib.Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


class _Chart(pydantic.BaseModel):
    # The chart's own spelling (camelCase), so it passes its values with toJson.
    model_config = pydantic.ConfigDict(
        extra="forbid", frozen=True, alias_generator=alias_generators.to_camel
    )


class KafkaSasl(_Chart):
    """The SASL principal of the executors: a Secret in each Agent namespace."""

    mechanism: kafka.Mechanism = "SCRAM-SHA-512"
    existing_secret: str = ""
    username_key: str = "username"
    password_key: str = "password"


class KafkaTls(_Chart):
    """The brokers' CA (and the executors' client certificate): a Secret in each Agent
    namespace, mounted at ``render.KAFKA_TLS_DIR``."""

    existing_secret: str = ""
    ca_key: str = "ca.crt"
    client_certificate: bool = False
    cert_key: str = "tls.crt"
    key_key: str = "tls.key"


class ExecutorKafka(_Chart):
    """How the executors the operator renders connect to Kafka for their load reports:
    the chart's ``agent.kafka`` security values, as the agent and knowledge services get
    them. The operator never reads the credentials: it renders Secret references, so the
    named Secrets must exist in each Agent namespace (a Secret cannot be read across
    namespaces); without them the executor pods do not start (a missing SASL Secret
    shows in the Agent's ModelReady condition, a missing TLS one in the pod's events)."""

    security_protocol: kafka.Protocol = "PLAINTEXT"
    sasl: KafkaSasl = KafkaSasl()
    tls: KafkaTls = KafkaTls()

    @pydantic.model_validator(mode="after")
    def _complete(self) -> ExecutorKafka:
        if self.security_protocol.startswith("SASL_") and not self.sasl.existing_secret:
            raise ValueError(
                f"securityProtocol {self.security_protocol} needs "
                "sasl.existingSecret (the Secret with the executors' principal)"
            )
        return self


class AionOperatorSettings(settings.ServiceSettings):
    """What the operator watches, how it places executors, and which image they run.

    Named apart from ``kopf.OperatorSettings``, which ``main`` builds from it.
    """

    model_config = pydantic_settings.SettingsConfigDict(
        env_prefix="AION_OPERATOR_", extra="ignore", frozen=True
    )

    executor_image: str = pydantic.Field(
        min_length=1, description="image of the executor Deployments the operator renders"
    )
    namespaces: Annotated[tuple[str, ...], pydantic_settings.NoDecode] = pydantic.Field(
        default=(), description="comma-separated namespaces to watch; empty watches all"
    )
    agent_target: str = pydantic.Field(
        default="",
        description="gRPC target (host:port) of the agent service that Ready Agents are "
        "registered with; empty registers nowhere",
    )
    kafka_bootstrap: str = pydantic.Field(
        default="",
        description="Kafka brokers the executors publish their load to; empty: no load reports",
    )
    executor_kafka: ExecutorKafka = pydantic.Field(
        default_factory=ExecutorKafka,
        description="JSON of the executors' Kafka security (the chart's agent.kafka "
        "securityProtocol, sasl and tls): TLS and SASL, from Secrets in each "
        "Agent namespace",
    )
    tenant_label: str = pydantic.Field(
        default="aion.dev/tenant",
        min_length=1,
        description="label naming a tenant: on a Namespace (which only cluster admins can "
        "label) it maps the namespace's Agents to that tenant; on an Agent it is "
        "a claim, refused (condition Registered, reason TenantMismatch) when it "
        "names another tenant than the namespace maps to",
    )
    tenants: dict[str, str] = pydantic.Field(
        default_factory=dict,
        description="JSON map of namespace to tenant set by the platform team; it wins "
        "over the Namespace label, and a namespace in neither is its own tenant",
    )
    unschedulable_after_s: float = pydantic.Field(
        default=120.0,
        gt=0,
        description="seconds an executor pod may stay Unschedulable before the Agent "
        "moves to the next eligible pool",
    )
    leader_election: bool = pydantic.Field(
        default=True, description="hold a Lease so that of several operator replicas one is active"
    )
    lease_name: str = pydantic.Field(default="aion-operator", min_length=1)
    lease_namespace: str = pydantic.Field(
        default="",
        validation_alias=pydantic.AliasChoices("AION_OPERATOR_LEASE_NAMESPACE", "POD_NAMESPACE"),
        description="the operator's own namespace: where its Lease lives and where the "
        "platform pods that call executors run; empty: the service account's "
        "(``with_pod_namespace``), else default",
    )
    lease_duration_s: float = pydantic.Field(
        default=15.0,
        gt=0,
        description="seconds a Lease holds without renewal before another replica takes it",
    )
    identity: str = pydantic.Field(
        default="", description="this replica's name in the Lease; empty uses host name and pid"
    )
    retry_s: float = pydantic.Field(
        default=15.0,
        gt=0,
        description="seconds between placement attempts while every eligible pool is full, "
        "or after a placement failed (the API server did not answer, say)",
    )
    readiness_interval_s: float = pydantic.Field(
        default=5.0,
        gt=0,
        description="seconds between reads of each Agent's Deployment for its ready replicas",
    )
    settled_interval_s: float = pydantic.Field(
        default=60.0,
        gt=0,
        description="seconds between looks at an Agent found settled (Ready, registered, "
        "no executor pod waiting to be scheduled, no spec.toolCredentials): a change of "
        "its executor Deployment or of the Agent wakes it at once",
    )
    credentials_interval_s: float = pydantic.Field(
        default=30.0,
        gt=0,
        description="seconds between reads of a registered Agent's spec.toolCredentials "
        "Secrets: a changed Secret is registered again within about this long",
    )
    pool_status_interval_s: float = pydantic.Field(
        default=15.0,
        gt=0,
        description="seconds between updates of each GpuPool's status (GPUs, free GPUs)",
    )
    liveness_port: int = pydantic.Field(
        default=8080, ge=1, le=65535, description="HTTP port of kopf's /healthz endpoint"
    )
    ca_cert_file: str = pydantic.Field(
        default="",
        description="PEM certificate of the install's CA; with ca_key_file the operator "
        "issues the executors' certificates (Secret aion-executor-tls in each "
        "Agent namespace); both empty: executors get none",
    )
    ca_key_file: str = pydantic.Field(
        default="", description="PEM private key of the install's CA (see ca_cert_file)"
    )

    @pydantic.field_validator("namespaces", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @pydantic.field_validator("tenants")
    @classmethod
    def _named(cls, value: dict[str, str]) -> dict[str, str]:
        empty = sorted(ns for ns, tenant in value.items() if not ns or not tenant.strip())
        if empty:
            raise ValueError(f"tenants maps namespaces to tenants; empty for {empty}")
        return value

    @pydantic.model_validator(mode="after")
    def _renewable(self) -> AionOperatorSettings:
        if self.leader_election and self.lease_duration_s < 3:
            raise ValueError(
                "lease_duration_s must be at least 3 seconds, so renewals "
                "(every third of it) can land in time"
            )
        return self

    @property
    def clusterwide(self) -> bool:
        """Whether the operator watches every namespace."""
        return not self.namespaces

    @property
    def platform_namespace(self) -> str:
        """The operator's namespace (``lease_namespace``), else ``default``."""
        return self.lease_namespace or "default"


def with_pod_namespace(
    cfg: AionOperatorSettings, *, path: pathlib.Path = SERVICE_ACCOUNT_NAMESPACE
) -> AionOperatorSettings:
    """``cfg`` with ``lease_namespace`` set from the pod's service account when the
    environment left it empty (a pod always has the file; a laptop does not)."""
    if cfg.lease_namespace:
        return cfg
    try:
        namespace = path.read_text().strip()
    except OSError:
        return cfg
    return cfg.model_copy(update={"lease_namespace": namespace}) if namespace else cfg
