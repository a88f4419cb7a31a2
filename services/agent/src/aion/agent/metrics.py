"""The agent service's Prometheus metrics (served by ``aion.core.metrics.MetricsServer``).

Tasks ended by their run are counted by final status, with their end-to-end time
(from the task's creation to its end: queueing included). The outbox's health is
its backlog (rows not yet on Kafka), their age, and the lag of each published row
(its write to its Kafka ack); lease reclaims count the runs whose worker was lost,
by what became of the task; tenants' spend is counted as their tasks' priced model
calls are recorded; the route choice counts the calls the API served in the pool's
stead, the calls waiting for room in a saturated pool and those refused for one,
and the circuit breakers that opened.
"""

from __future__ import annotations

import prometheus_client

TASKS_FINISHED = prometheus_client.Counter(
    "aion_agent_tasks_finished_total",
    "Tasks whose run ended, by final status: OK, ERROR, TIMEOUT, CANCELED (those ended by "
    "lease recovery are counted by aion_agent_task_lease_reclaims_total).",
    ["status"],
)
for _status in ("OK", "ERROR", "TIMEOUT", "CANCELED"):
    TASKS_FINISHED.labels(_status)  # at 0 from the start, so rate() sees the first task end
TASK_SECONDS = prometheus_client.Histogram(
    "aion_agent_task_seconds",
    "A task's end-to-end time, from its creation (accepted) to its end, queueing included.",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800),
)
OUTBOX_PUBLISHED = prometheus_client.Counter(
    "aion_agent_outbox_published_total", "Outbox rows published to Kafka (acked)."
)
OUTBOX_PUBLISH_FAILURES = prometheus_client.Counter(
    "aion_agent_outbox_publish_failures_total",
    "Publish rounds that failed (Kafka or Postgres away) and were retried.",
    ["error"],
)
OUTBOX_BACKLOG = prometheus_client.Gauge(
    "aion_agent_outbox_backlog", "Outbox rows waiting to be published (sampled)."
)
OUTBOX_OLDEST_AGE = prometheus_client.Gauge(
    "aion_agent_outbox_oldest_age_seconds",
    "Age of the oldest row waiting in the outbox; 0 when it is empty (sampled).",
)
OUTBOX_LAG = prometheus_client.Histogram(
    "aion_agent_outbox_lag_seconds",
    "From the transaction that wrote an outbox row to its Kafka ack.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)
LEASE_RECLAIMS = prometheus_client.Counter(
    "aion_agent_task_lease_reclaims_total",
    "Tasks whose run's lease expired (its worker was lost), by outcome: requeued, "
    "timeout, canceled, abandoned (too many attempts).",
    ["outcome"],
)
DEAD_LETTERS = prometheus_client.Counter(
    "aion_agent_dead_letters_total", "Records a consumer sent to a dead-letter topic.", ["consumer"]
)
TENANT_SPEND = prometheus_client.Counter(
    "aion_tenant_spend_usd_total",
    "What tenants' tasks spent on priced model calls (the external API), in US dollars, "
    "as each model call is recorded (one stopped at its task's budget included).",
    ["tenant"],
)
SPILLS = prometheus_client.Counter(
    "aion_agent_spills_total",
    "Model calls of hybrid tasks the external API served in the executor pool's stead, "
    "by why: load (every replica full), sla (the pool's p95 misses it), fallback (the "
    "pool failed before answering).",
    ["chosen_by"],
)
WAITING_FOR_ROOM = prometheus_client.Gauge(
    "aion_agent_calls_waiting_for_room",
    "Model calls waiting for room in a saturated executor pool (backpressure).",
)
SATURATED_REFUSALS = prometheus_client.Counter(
    "aion_agent_saturated_refusals_total",
    "Model calls refused RESOURCE_EXHAUSTED: the executor pool was full and room was "
    "further away than the task's deadline.",
)
BREAKER_OPENS = prometheus_client.Counter(
    "aion_agent_breaker_opens_total",
    "Circuit breakers that opened (repeated failures, or a failed probe), by target: "
    "executor (a replica) or api (the provider).",
    ["target"],
)
