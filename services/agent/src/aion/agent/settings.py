"""Agent service settings (environment prefix ``AION_AGENT_``)."""

from __future__ import annotations

import os
import socket
import uuid
from pathlib import Path

import pydantic
import pydantic_settings

from aion.core import kafka, settings


def _worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class AgentSettings(settings.ServiceSettings, kafka.KafkaSettings):
    """Where the agent service listens, what it stores where, and its task limits."""

    model_config = pydantic_settings.SettingsConfigDict(
        env_prefix="AION_AGENT_", extra="ignore", frozen=True, populate_by_name=True
    )

    port: int = pydantic.Field(default=50053, ge=0, le=65535)
    health_port: int = pydantic.Field(
        default=51053,
        ge=0,
        le=65535,
        description="plaintext port answering grpc.health.v1.Health only (kubelet probes)",
    )
    postgres_dsn: pydantic.SecretStr = pydantic.Field(
        validation_alias=pydantic.AliasChoices("AION_AGENT_POSTGRES_DSN", "AION_POSTGRES_DSN"),
        description="postgresql://user:password@host:port/database of the task store",
    )
    kafka_bootstrap: str = pydantic.Field(
        validation_alias=pydantic.AliasChoices(
            "AION_AGENT_KAFKA_BOOTSTRAP", "AION_KAFKA_BOOTSTRAP"
        ),
        description="host:port[,host:port] of the Kafka brokers",
    )
    topic_prefix: str = pydantic.Field(
        default="aion.", description="prefix of every Kafka topic and consumer group name"
    )
    worker_id: str = pydantic.Field(
        default_factory=_worker_id, description="this replica's name in task leases"
    )
    pool_min_size: int = pydantic.Field(default=1, ge=0)
    pool_max_size: int = pydantic.Field(default=10, gt=0)
    pool_timeout_s: float = pydantic.Field(
        default=5.0,
        gt=0,
        description="how long a call waits for a database connection before it fails UNAVAILABLE",
    )
    lease_s: float = pydantic.Field(
        default=15.0, gt=0, description="how long a task stays owned without a heartbeat"
    )
    heartbeat_s: float = pydantic.Field(default=3.0, gt=0)
    reaper_interval_s: float = pydantic.Field(default=2.0, gt=0)
    max_attempts: int = pydantic.Field(
        default=3, gt=0, description="runs of one task before it ends ERROR (lost workers)"
    )
    max_concurrent_tasks: int = pydantic.Field(default=16, gt=0)
    max_running_per_tenant: int = pydantic.Field(
        default=8,
        gt=0,
        description="tasks one tenant may run at once (across replicas, "
        "sync and async); a sync start over it is refused "
        "RESOURCE_EXHAUSTED, async ones wait in the queue",
    )
    max_idempotency_key_chars: int = pydantic.Field(default=256, gt=0, le=2048)
    dispatch_poll_s: float = pydantic.Field(
        default=1.0,
        gt=0,
        description="how often a replica with room looks for queued "
        "tasks that no record woke it for",
    )
    follow_poll_s: float = pydantic.Field(
        default=2.0,
        gt=0,
        description="how often a stream following a task run on another "
        "replica reads its events when no notification woke it (a safety net: "
        "Postgres LISTEN/NOTIFY wakes it as events are stored)",
    )
    outbox_linger_s: float = pydantic.Field(
        default=0.05,
        ge=0,
        description="how long the outbox publisher waits after a commit woke it before "
        "it publishes, so that the commits of that while share one round (their events "
        "reach Kafka that much later; a publish round on top of every commit slows the "
        "tasks' own writes)",
    )
    task_retention_s: float = pydantic.Field(
        default=7 * 86400.0,
        gt=0,
        description="finished tasks (with their events and steps) "
        "are deleted this long after they ended",
    )
    processed_event_retention_s: float = pydantic.Field(
        default=7 * 86400.0,
        gt=0,
        description="records of processed Kafka events are kept "
        "this long; at least the topics' retention",
    )
    retention_interval_s: float = pydantic.Field(
        default=300.0, gt=0, description="how often one replica applies the retention"
    )
    agents_file: Path | None = pydantic.Field(
        default=None, description="YAML file of Agent resources registered at start"
    )
    agents_tenant: str = pydantic.Field(
        default="default", description="tenant the agents of agents_file belong to"
    )
    executor_target: str | None = pydantic.Field(
        default=None, description="executor host:port for agents registered without endpoints"
    )
    knowledge_target: str | None = pydantic.Field(
        default=None, description="knowledge service host:port; unset disables retrieval"
    )
    provider_base_url: str | None = pydantic.Field(
        default=None, description="OpenAI-compatible API base URL used when the route is api"
    )
    provider_api_key: pydantic.SecretStr | None = None
    provider_model: str = "gpt-4o-mini"
    provider_cost_per_1k_tokens: float = pydantic.Field(default=0.0, ge=0)
    executor_load_topic: str = pydantic.Field(
        default="aion.executor.load",
        min_length=1,
        validation_alias=pydantic.AliasChoices(
            "AION_AGENT_EXECUTOR_LOAD_TOPIC", "AION_EXECUTOR_LOAD_TOPIC"
        ),
        description="the executors' load reports (AION_EXECUTOR_LOAD_TOPIC), read to "
        "send each call to the replica with the most room",
    )
    load_stale_s: float = pydantic.Field(
        default=15.0,
        gt=0,
        description="a load report older than this is ignored (at least twice the "
        "executors' load_interval_s)",
    )
    spill_queue_threshold: int = pydantic.Field(
        default=4,
        ge=1,
        description="queued calls per executor replica at which it counts as full; with "
        "every replica full, hybrid tasks spill to the API and local-only ones wait",
    )
    breaker_failures: int = pydantic.Field(
        default=3,
        ge=1,
        description="failed calls in a row that open the circuit breaker of an executor "
        "replica or of the API",
    )
    breaker_open_s: float = pydantic.Field(
        default=5.0,
        gt=0,
        description="how long an open breaker refuses calls before it lets a probe through",
    )
    max_input_chars: int = pydantic.Field(default=32_768, gt=0)
    default_timeout_s: float = pydantic.Field(default=300.0, gt=0)
    max_tokens_limit: int = pydantic.Field(default=2048, gt=0)
    retrieval_top_k: int = pydantic.Field(default=4, ge=0)

    @pydantic.model_validator(mode="after")
    def _heartbeat_inside_lease(self) -> AgentSettings:
        if self.heartbeat_s >= self.lease_s / 2:
            raise ValueError(
                f"heartbeat_s ({self.heartbeat_s}) must be under half of lease_s ({self.lease_s})"
            )
        return self
