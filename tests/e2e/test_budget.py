"""Budgets through the gateway: checked before routing, enforced while the task runs.

A suite of its own, with the executor's OpenAI-compatible HTTP endpoint standing in for
the external API (the router's policy and the agent service's provider both name it,
at a price per token). An Agent whose ``budgetUsdPerTask`` covers the router's estimate
goes to the API; asked for a long answer, its generation stops when the spend reaches
the budget, and the task ends RESOURCE_EXHAUSTED with its output so far and what it
spent. A task whose own budget is under the estimate runs on the local pool instead.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from aion.api.v1 import common_pb2
from aion.infra import devstack
from aion.infra.devstack import suite as devsuite
from aion.sdk import Client

pytestmark = pytest.mark.e2e

MODEL = "smollm2-135m-instruct"
USD_PER_1K = 1.0  # a token costs $0.001
TOKEN_USD = USD_PER_1K / 1000
INPUT = "Write a long story about a lighthouse keeper."
# The router estimates input/4 + 256 tokens; the agent service counts the prompt (these
# instructions and the input, about four characters a token) before any token comes,
# so the budget leaves room for a few dozen generated tokens only.
INSTRUCTIONS = "You are a storyteller. " * 40
ROUTER_ESTIMATE_USD = (len(INPUT) // 4 + 256) * TOKEN_USD
BUDGET_USD = round(ROUTER_ESTIMATE_USD + 10 * TOKEN_USD, 6)
AGENT = f"""
apiVersion: aion.dev/v1alpha1
kind: Agent
metadata:
  name: spender
spec:
  model:
    name: {MODEL}
    task: generate
  instructions: "{INSTRUCTIONS}"
  routing:
    privacy: allow-api
    budgetUsdPerTask: {BUDGET_USD}
"""


def _spend_metric(agent_metrics_port: int, tenant: str) -> float:
    text = httpx.get(f"http://127.0.0.1:{agent_metrics_port}/metrics", timeout=5).text
    found = re.search(rf'^aion_tenant_spend_usd_total{{tenant="{tenant}"}} (\S+)$', text, re.M)
    return float(found.group(1)) if found else 0.0


def test_a_budget_stops_a_long_generation_on_the_api_route(
    tmp_path: Path, fresh_suite: Callable[..., devstack.LocalSuite]
) -> None:
    http_port = devsuite.free_port()
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        "provider:\n  name: executor-http\n"
        f"  base_url: http://127.0.0.1:{http_port}/v1\n"
        f"  model: {MODEL}\n  usd_per_1k_tokens: {USD_PER_1K}\n"
    )
    suite = fresh_suite(
        tmp_path / "suite",
        {
            "AION_EXECUTOR_HTTP_PORT": str(http_port),
            "AION_ROUTER_POLICY_FILE": str(policy),
            "AION_AGENT_PROVIDER_BASE_URL": f"http://127.0.0.1:{http_port}/v1",
            "AION_AGENT_PROVIDER_API_KEY": devsuite.DEV_EXECUTOR_HTTP_TOKEN,
            "AION_AGENT_PROVIDER_MODEL": MODEL,
            "AION_AGENT_PROVIDER_COST_PER_1K_TOKENS": str(USD_PER_1K),
        },
    )
    metrics_port = suite.services["agent"].metrics_port
    with Client(suite.gateway) as client:
        [agent] = client.apply_agents(AGENT, timeout=30)
        assert agent.budget_usd_per_task == pytest.approx(BUDGET_USD)
        before = _spend_metric(metrics_port, "default")

        # The Agent's budget covers the router's estimate: the API; the spend stops it.
        result = client.submit("spender", INPUT, max_tokens=1024, timeout=180).result
        assert result.engine.route == common_pb2.ROUTE_API, result.engine.reason
        assert result.status == common_pb2.TASK_STATUS_ERROR, result
        assert result.error.code == "RESOURCE_EXHAUSTED", result.error
        assert f"of its ${BUDGET_USD:.6f} budget" in result.error.message
        assert not result.error.retriable
        assert result.output.strip()  # what it generated before the stop is kept
        # About 35 tokens (the budget less the prompt), far from its max_tokens of 1024.
        assert 5 < result.usage.completion_tokens < 200, result.usage
        # Stopped at the chunk that reached the budget: at most one token's price over.
        assert BUDGET_USD <= result.usage.cost_usd <= BUDGET_USD + TOKEN_USD + 1e-9
        spent = _spend_metric(metrics_port, "default") - before
        assert spent == pytest.approx(result.usage.cost_usd)

        # The task's own budget, under the router's estimate: the local pool, and why.
        cheap = client.submit(
            "spender", INPUT, max_tokens=4, budget_usd=BUDGET_USD / 10, timeout=180
        ).result
        assert cheap.status == common_pb2.TASK_STATUS_OK, cheap.error
        assert cheap.engine.route == common_pb2.ROUTE_LOCAL
        assert cheap.engine.chosen_by == "budget"
        assert "over the task budget" in cheap.engine.reason
        assert cheap.usage.cost_usd == 0

        # The gateway keeps agent records for routing (AGENT_CACHE_S), but an Agent applied
        # through it routes the very next task: the Agent's budget, now under the estimate.
        lower = AGENT.replace(
            f"budgetUsdPerTask: {BUDGET_USD}", f"budgetUsdPerTask: {BUDGET_USD / 10}"
        )
        [agent] = client.apply_agents(lower, timeout=30)
        assert agent.budget_usd_per_task == pytest.approx(BUDGET_USD / 10)
        after = client.submit("spender", INPUT, max_tokens=4, timeout=180).result
        assert after.status == common_pb2.TASK_STATUS_OK, after.error
        assert after.engine.route == common_pb2.ROUTE_LOCAL, after.engine.reason
        assert after.engine.chosen_by == "budget"
