"""The suite's metrics in the real Prometheus: every service's metrics port registered as a
file_sd target is scraped (`up` 1, job and `service` label = the service), and a small load
through the gateway (auth on) shows in the gateway's request counter, the agent's outbox
counter and the executor's gauges as Prometheus scraped them, and in the chart's recording
rules (charts/aion/files/prometheus), which the local Prometheus evaluates."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from aion.api.v1 import common_pb2
from aion.infra import devstack
from aion.infra.component import poll
from aion.infra.prometheus import Prometheus
from aion.sdk import AsyncClient, errors

pytestmark = [pytest.mark.e2e, pytest.mark.prometheus]
TASKS = 'grpc_service="aion.v1.Tasks"'


@pytest.fixture
def scraped(suite: devstack.LocalSuite, prometheus: Prometheus) -> Iterator[str]:
    """The suite's services as Prometheus targets while the test runs; yields its tag."""
    suite.register_targets(prometheus)
    try:
        yield suite.scrape_tag
    finally:
        for group in suite.scrape_groups().values():
            prometheus.remove_targets(group)


def _by(prometheus: Prometheus, expr: str, label: str) -> dict[str, float]:
    return {r["metric"].get(label, ""): float(r["value"][1]) for r in prometheus.query(expr)}


def _gateway_tasks(prometheus: Prometheus, tag: str) -> dict[str, float]:
    """The gateway's completed Tasks RPCs by code, as last scraped."""
    expr = f'sum by (grpc_code) (grpc_server_handled_total{{job="gateway",suite="{tag}",{TASKS}}})'
    return _by(prometheus, expr, "grpc_code")


async def test_a_small_load_shows_in_the_scraped_metrics(
    suite: devstack.LocalSuite, prometheus: Prometheus, scraped: str
) -> None:
    tag = scraped
    every = set(suite.services)
    up = poll(
        lambda: _by(prometheus, f'up{{suite="{tag}"}}', "service"),
        lambda v: set(v) == every and all(x == 1.0 for x in v.values()),
        timeout=45,
    )
    assert up == dict.fromkeys(every, 1.0), up
    # The counters of earlier tests in the session's suite count too: compare with what
    # Prometheus had before the load (nothing, when no Tasks call ended yet).
    before = _gateway_tasks(prometheus, tag)
    published = _by(prometheus, f'aion_agent_outbox_published_total{{suite="{tag}"}}', "job")

    # Two rounds, each scraped by every target before going on: a counter's rate needs
    # it to grow between two samples, and a series the first round creates has none
    # before it.
    async with AsyncClient(suite.gateway) as client:
        for tasks in (1, 2):
            await _tasks(client, tasks)
            with pytest.raises(errors.NotFound):
                await client.submit("no-such-agent", "hi", max_tokens=4)
            _wait_scraped(prometheus, tag, time.time())

    after = _gateway_tasks(prometheus, tag)
    assert after.get("OK", 0) >= before.get("OK", 0) + 3, (before, after)
    assert after.get("NOT_FOUND", 0) >= before.get("NOT_FOUND", 0) + 2, (before, after)
    # Each task's state changes went through the outbox to Kafka.
    outbox = poll(
        lambda: _by(prometheus, f'aion_agent_outbox_published_total{{suite="{tag}"}}', "job"),
        lambda v: v.get("agent", 0) >= published.get("agent", 0) + 3,
        timeout=45,
    )
    assert outbox.get("agent", 0) >= published.get("agent", 0) + 3, (published, outbox)
    ready = _by(prometheus, f'aion_executor_model_ready{{suite="{tag}"}}', "service")
    assert ready == {"executor": 1.0, "embedder": 1.0}, ready

    # The recording rules over the whole Prometheus (other suites' series count too):
    # each has a positive value once the load's samples are in.
    recorded = poll(lambda: _recorded(prometheus), lambda v: all(x > 0 for x in v.values()), 60)
    assert {k: v for k, v in recorded.items() if not v > 0} == {}, recorded


RECORDED = (
    "aion:tasks:rate5m",
    'status:aion_tasks:rate5m{status="OK"}',
    "aion:task_latency_seconds:p95_rate5m",
    'grpc_code:aion_gateway_task_rpcs:rate5m{grpc_code="OK"}',
    'grpc_code:aion_gateway_task_rpcs:rate5m{grpc_code="NOT_FOUND"}',
    'job:aion_grpc_requests:rate5m{job="gateway"}',
    'job:aion_grpc_requests:rate5m{job="executor"}',
    "aion:outbox_published:rate5m",
)


def _wait_scraped(prometheus: Prometheus, tag: str, since: float) -> None:
    """Until every target of the suite has been scraped after ``since`` (a Unix time)."""
    expr = f'min(timestamp(up{{suite="{tag}"}}))'
    last = poll(
        lambda: max([float(r["value"][1]) for r in prometheus.query(expr)], default=0.0),
        lambda t: t > since,
        timeout=30,
    )
    assert last > since, f"the suite's targets were not all scraped after {since} ({last})"


def _recorded(prometheus: Prometheus, exprs: tuple[str, ...] = RECORDED) -> dict[str, float]:
    """Each recording rule's value (its largest series; 0 where it has none yet)."""
    out = {}
    for expr in exprs:
        values = [float(r["value"][1]) for r in prometheus.query(expr)]
        out[expr] = max(values, default=0.0)
    return out


async def _tasks(client: AsyncClient, n: int) -> None:
    for i in range(n):
        answer = await client.submit("demo", f"Say {i}.", max_tokens=4, temperature=0)
        assert answer.result.status == common_pb2.TASK_STATUS_OK


# A recording rule of charts/aion/files/prometheus/rules.yaml per service level the load
# moves: each must come out positive from what Prometheus scraped. (Here executors have
# no `agent` label: the agent: rules come out as one series.)
SERVICE_LEVELS = (
    "aion:tasks:rate5m",
    "aion:task_latency_seconds:p50_rate5m",
    "aion:gateway_added_latency_seconds:p95_rate5m",
    "aion:time_to_first_token_seconds:p50_rate5m",
    "aion:executor_tokens:rate5m",
    "agent:aion_executor_batch_size:mean_rate5m",
    "aion:outbox_published:rate5m",
    "aion:outbox_lag_seconds:p50_rate5m",
)


async def test_the_recording_rules_show_a_small_load(
    suite: devstack.LocalSuite, prometheus: Prometheus, scraped: str
) -> None:
    loaded = {g["name"]: g for g in prometheus.api("rules")["groups"]}
    assert {"aion.tasks", "aion.gateway", "aion.executor", "aion.outbox"} <= set(loaded)
    for group in loaded.values():
        assert all(r["health"] != "err" for r in group["rules"]), group
    # Scraped once before the load: the counters' first increase is then visible to rate().
    poll(
        lambda: _by(prometheus, f'up{{suite="{scraped}"}}', "service"),
        lambda v: set(v) == set(suite.services) and all(x == 1.0 for x in v.values()),
        timeout=45,
    )
    async with AsyncClient(suite.gateway) as client:
        for i in range(3):
            events = [e async for e in client.stream("demo", f"Count to {i + 2}.", max_tokens=6)]
            assert events[-1].WhichOneof("event") == "done", events[-1]
    values = poll(
        lambda: _recorded(prometheus, SERVICE_LEVELS),
        lambda v: all(x > 0 for x in v.values()),  # NaN (no data) is not > 0
        timeout=60,
    )
    assert all(x > 0 for x in values.values()), values
