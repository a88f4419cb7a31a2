"""Operator settings (environment prefix ``AION_OPERATOR_``)."""

from __future__ import annotations

from typing import Annotated

import pydantic
import pydantic_settings

from aion.core import settings


class AionOperatorSettings(settings.ServiceSettings):
    """What the operator watches, how it places executors, and which image they run.

    Named apart from ``kopf.OperatorSettings``, which ``main`` builds from it.
    """

    model_config = pydantic_settings.SettingsConfigDict(
        env_prefix="AION_OPERATOR_", extra="ignore", frozen=True)

    executor_image: str = pydantic.Field(
        min_length=1, description="image of the executor Deployments the operator renders")
    namespaces: Annotated[tuple[str, ...], pydantic_settings.NoDecode] = pydantic.Field(
        default=(), description="comma-separated namespaces to watch; empty watches all")
    agent_target: str = pydantic.Field(
        default="",
        description="gRPC target (host:port) of the agent service that Ready Agents are "
                    "registered with; empty registers nowhere")
    kafka_bootstrap: str = pydantic.Field(
        default="",
        description="Kafka brokers the executors publish their load to; empty: no load reports")
    tenant_label: str = pydantic.Field(
        default="aion.dev/tenant", min_length=1,
        description="label naming a tenant: on a Namespace (which only cluster admins can "
                    "label) it maps the namespace's Agents to that tenant; on an Agent it is "
                    "a claim, refused (condition Registered, reason TenantMismatch) when it "
                    "names another tenant than the namespace maps to")
    tenants: dict[str, str] = pydantic.Field(
        default_factory=dict,
        description="JSON map of namespace to tenant set by the platform team; it wins "
                    "over the Namespace label, and a namespace in neither is its own tenant")
    unschedulable_after_s: float = pydantic.Field(
        default=120.0, gt=0,
        description="seconds an executor pod may stay Unschedulable before the Agent "
                    "moves to the next eligible pool")
    leader_election: bool = pydantic.Field(
        default=True,
        description="hold a Lease so that of several operator replicas one is active")
    lease_name: str = pydantic.Field(default="aion-operator", min_length=1)
    lease_namespace: str = pydantic.Field(
        default="",
        description="namespace of the Lease; empty uses the pod's own namespace "
                    "(POD_NAMESPACE or the service account's), else default")
    lease_duration_s: float = pydantic.Field(
        default=15.0, gt=0,
        description="seconds a Lease holds without renewal before another replica takes it")
    identity: str = pydantic.Field(
        default="", description="this replica's name in the Lease; empty uses host name and pid")
    retry_s: float = pydantic.Field(
        default=15.0, gt=0,
        description="seconds between placement attempts while every eligible pool is full")
    readiness_interval_s: float = pydantic.Field(
        default=5.0, gt=0,
        description="seconds between reads of each Agent's Deployment for its ready replicas")
    pool_status_interval_s: float = pydantic.Field(
        default=15.0, gt=0,
        description="seconds between updates of each GpuPool's status (GPUs, free GPUs)")
    liveness_port: int = pydantic.Field(
        default=8080, ge=1, le=65535, description="HTTP port of kopf's /healthz endpoint")
    ca_cert_file: str = pydantic.Field(
        default="",
        description="PEM certificate of the install's CA; with ca_key_file the operator "
                    "issues the executors' certificates (Secret aion-executor-tls in each "
                    "Agent namespace); both empty: executors get none")
    ca_key_file: str = pydantic.Field(
        default="", description="PEM private key of the install's CA (see ca_cert_file)")

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
            raise ValueError("lease_duration_s must be at least 3 seconds, so renewals "
                             "(every third of it) can land in time")
        return self

    @property
    def clusterwide(self) -> bool:
        """Whether the operator watches every namespace."""
        return not self.namespaces
