"""What handling an Agent decides (``status``, pure): place, render, and record what
happened in the status; and what registration tells the agent service."""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from typing import Any

import kopf
import pytest

from aion.api.v1 import common_pb2
from aion.core import agentspec
from aion.operator import pools, reconcile, registration, settings, status, stuck

NOW = datetime.datetime(2025, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)
LATER = NOW + datetime.timedelta(minutes=5)
PRICES = [
    {"metadata": {"name": "h100"}, "spec": {"priceUsdPerGpuHour": 4.5}},
    {"metadata": {"name": "l4"}, "spec": {"priceUsdPerGpuHour": 0.7}},
]


def _agent(
    data: Any,
    *,
    generation: int = 3,
    status: dict[str, Any] | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "apiVersion": "aion.dev/v1alpha1",
        "kind": "Agent",
        "metadata": {
            "name": "chat",
            "namespace": "team-a",
            "uid": "uid-1",
            "generation": generation,
        },
        "spec": data,
    }
    if status is not None:
        body["status"] = status
    return body


def _pod(
    node: str,
    *,
    gpus: int,
    name: str = "other",
    namespace: str = "team-b",
) -> dict[str, Any]:
    return {
        "metadata": {
            "name": f"{name}-pod",
            "namespace": namespace,
            "labels": {"aion.dev/agent": name},
        },
        "spec": {
            "nodeName": node,
            "containers": [{"resources": {"limits": {"nvidia.com/gpu": str(gpus)}}}],
        },
        "status": {"phase": "Running"},
    }


def _snapshot(
    nodes: Sequence[dict[str, Any]],
    pods: Sequence[dict[str, Any]] = (),
) -> pools.Snapshot:
    return pools.Snapshot(nodes=tuple(nodes), pods=tuple(pods), gpu_pools=tuple(PRICES))


def _decide(
    body: dict[str, Any], snapshot: pools.Snapshot, cfg: settings.AionOperatorSettings
) -> status.Outcome:
    found = status.discover(body, snapshot)
    return status.place(body, agentspec.parse(body["spec"]), found=found, cfg=cfg, now=NOW)


def _affinity(deployment: dict[str, Any]) -> list[dict[str, Any]]:
    terms = deployment["spec"]["template"]["spec"]["affinity"]["nodeAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"
    ]["nodeSelectorTerms"]
    return list(terms[0]["matchExpressions"])


def test_places_on_the_cheapest_pool_with_its_own_label(
    cfg: settings.AionOperatorSettings, local_nodes: list[dict[str, Any]]
) -> None:
    body = _agent({"model": {"name": "m"}, "gpu": {"count": 1}})
    out = _decide(body, _snapshot(local_nodes), cfg)
    assert out.deployment is not None
    assert out.service is not None
    assert _affinity(out.deployment)[0] == {
        "key": "cloud.google.com/gke-nodepool",
        "operator": "In",
        "values": ["l4"],
    }
    pod = out.deployment["spec"]["template"]["spec"]
    assert pod["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    ]
    assert pod["containers"][0]["image"] == "registry.test/aion-executor:1.2.3"
    env = {e["name"]: e["value"] for e in pod["containers"][0]["env"] if "value" in e}
    assert env["AION_EXECUTOR_HOST"] == "0.0.0.0"  # the pod's address, for probes and calls
    assert env["AION_EXECUTOR_OTLP_ENDPOINT"] == "http://otel:4317"
    assert env["AION_EXECUTOR_HTTP_PORT"] == "8000"
    assert "AION_EXECUTOR_KAFKA_BOOTSTRAP" not in env  # the fixture sets no brokers
    ports = {p["name"]: p["port"] for p in out.service["spec"]["ports"]}
    assert ports == {"grpc": 50055, "http": 8000}
    assert out.deployment["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    assert out.service["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    assert out.status["phase"] == "Placed"
    assert out.status["nodePool"] == "l4"
    assert out.status["observedGeneration"] == 3
    [condition] = out.status["conditions"]
    assert condition["type"] == "Placed"
    assert (condition["status"], condition["reason"]) == ("True", "Placed")
    assert condition["lastTransitionTime"] == "2025-01-02T03:04:05Z"
    assert condition["observedGeneration"] == 3
    assert out.status["placementReason"] == condition["message"]
    assert "$0.70" in condition["message"]


def test_the_agents_own_pods_do_not_fill_its_pool(
    cfg: settings.AionOperatorSettings, local_nodes: list[dict[str, Any]]
) -> None:
    body = _agent({"model": {"name": "m"}, "gpu": {"count": 1, "products": ["NVIDIA-L4"]}})
    own = [_pod(f"l4-{i}", gpus=1, name="chat", namespace="team-a") for i in range(4)]
    assert _decide(body, _snapshot(local_nodes, own), cfg).status["nodePool"] == "l4"
    others = [_pod(f"l4-{i}", gpus=1) for i in range(4)]
    full = _decide(body, _snapshot(local_nodes, others), cfg)
    assert full.deployment is None
    assert full.status["phase"] == "Pending"
    assert full.status["conditions"][0]["reason"] == "NoCapacity"


def test_unknown_product_has_no_eligible_pool(
    cfg: settings.AionOperatorSettings, local_nodes: list[dict[str, Any]]
) -> None:
    body = _agent({"model": {"name": "m"}, "gpu": {"count": 1, "products": ["NVIDIA-B200"]}})
    out = _decide(body, _snapshot(local_nodes), cfg)
    assert (out.deployment, out.service) == (None, None)
    assert out.placement.reason == "NoEligiblePool"
    assert "nodePool" not in out.status
    [condition] = out.status["conditions"]
    assert (condition["type"], condition["status"], condition["reason"]) == (
        "Placed",
        "False",
        "NoEligiblePool",
    )
    assert "NVIDIA-B200" in condition["message"]


def test_invalid_spec_fails_permanently_and_says_why() -> None:
    patch = kopf.Patch()
    bad = _agent({"model": {"name": "m"}, "replicas": {"min": 2, "max": 1}})
    with pytest.raises(kopf.PermanentError, match=r"spec.replicas: replicas.min \(2\)"):
        reconcile.parse(bad, patch, now=NOW)
    assert patch["status"]["phase"] == "Failed"
    [condition] = patch["status"]["conditions"]
    assert (condition["status"], condition["reason"]) == ("False", "InvalidSpec")
    assert "must not exceed replicas.max" in condition["message"]


def test_other_conditions_are_kept_and_transition_times_move_only_on_change(
    cfg: settings.AionOperatorSettings, local_nodes: list[dict[str, Any]]
) -> None:
    ready = {
        "type": "Ready",
        "status": "True",
        "reason": "ReplicasReady",
        "message": "",
        "lastTransitionTime": "2024-12-01T00:00:00Z",
    }
    data = {"model": {"name": "m"}, "gpu": {"count": 1}}
    first = _decide(_agent(data, status={"conditions": [ready]}), _snapshot(local_nodes), cfg)
    found = status.discover(_agent(data), _snapshot(local_nodes))
    again = status.place(
        _agent(data, generation=4, status=first.status),
        agentspec.parse(data),
        found=found,
        cfg=cfg,
        now=LATER,
    )
    assert [c["type"] for c in again.status["conditions"]] == ["Ready", "Placed"]
    assert again.status["conditions"][0] == ready
    placed = again.status["conditions"][1]
    assert placed["lastTransitionTime"] == "2025-01-02T03:04:05Z"
    assert placed["observedGeneration"] == 4
    broken = status.invalid_status(
        _agent({}, generation=5, status=again.status), message="bad", now=LATER
    )
    assert broken["conditions"][1]["lastTransitionTime"] == "2025-01-02T03:09:05Z"


def _deployment(
    *, ready: int, updated: int, generation: int = 2, observed: int = 2
) -> dict[str, Any]:
    return {
        "metadata": {"generation": generation},
        "status": {
            "readyReplicas": ready,
            "updatedReplicas": updated,
            "observedGeneration": observed,
        },
    }


def test_readiness_follows_the_deployment() -> None:
    placed = {"phase": "Placed", "nodePool": "l4", "observedGeneration": 3, "conditions": []}
    body = _agent({"model": {"name": "m"}, "replicas": {"min": 2, "max": 2}}, status=placed)
    waiting = status.readiness(body, _deployment(ready=1, updated=2), now=NOW)
    assert waiting is not None
    assert (waiting["phase"], waiting["readyReplicas"]) == ("Placed", 1)
    model, condition = waiting["conditions"]
    assert (model["type"], model["status"], model["reason"]) == (
        "ModelReady",
        "True",
        "ModelLoaded",
    )
    assert (condition["type"], condition["status"], condition["reason"]) == (
        "Ready",
        "False",
        "ReplicasNotReady",
    )
    assert condition["message"] == "1 of 2 executor replica(s) ready on pool l4"
    loading = status.readiness(body, _deployment(ready=0, updated=2), now=NOW)
    assert loading is not None
    assert (loading["conditions"][0]["status"], loading["conditions"][0]["reason"]) == (
        "False",
        "ModelLoading",
    )
    # An executor pod that cannot run says why in ModelReady, and in Ready's message.
    pod = {
        "metadata": {"name": "exec-1"},
        "status": {
            "containerStatuses": [
                {
                    "state": {
                        "waiting": {
                            "reason": "CreateContainerConfigError",
                            "message": 'secret "hf-token" not found',
                        }
                    }
                }
            ]
        },
    }
    broken = status.readiness(body, _deployment(ready=0, updated=2), now=NOW, pods=[pod])
    assert broken is not None
    model = broken["conditions"][0]
    assert (model["status"], model["reason"]) == ("False", "CreateContainerConfigError")
    assert model["message"] == 'executor pod exec-1: secret "hf-token" not found'
    assert broken["conditions"][1]["message"].endswith('secret "hf-token" not found')
    # Nothing changed since: no patch.
    assert (
        status.readiness(
            _agent(body["spec"], status={**placed, **waiting}),
            _deployment(ready=1, updated=2),
            now=LATER,
        )
        is None
    )
    done = status.readiness(body, _deployment(ready=2, updated=2), now=NOW)
    assert done is not None
    assert (done["phase"], done["readyReplicas"]) == ("Ready", 2)
    assert [c["status"] for c in done["conditions"]] == ["True", "True"]
    # A rollout the Deployment controller has not seen yet is not ready.
    stale = status.readiness(body, _deployment(ready=2, updated=2, generation=3), now=NOW)
    assert stale is not None
    assert stale["phase"] == "Placed"


def test_readiness_waits_for_the_current_generation_to_be_placed() -> None:
    placed = {"phase": "Placed", "nodePool": "l4", "observedGeneration": 2}
    body = _agent({"model": {"name": "m"}}, status=placed)
    assert status.readiness(body, _deployment(ready=1, updated=1), now=NOW) is None
    assert (
        status.readiness(_agent({"model": {"name": "m"}}), _deployment(ready=1, updated=1), now=NOW)
        is None
    )
    assert (
        status.readiness(
            _agent({"model": {"name": "m"}}, status={**placed, "observedGeneration": 3}),
            None,
            now=NOW,
        )
        is None
    )
    # Replicas the spec's rules refuse (min above max): no readiness to say.
    current = {**placed, "observedGeneration": 3}
    inverted = {"model": {"name": "m"}, "replicas": {"min": 3, "max": 2}}
    assert (
        status.readiness(_agent(inverted, status=current), _deployment(ready=3, updated=3), now=NOW)
        is None
    )
    fine = {"model": {"name": "m"}, "replicas": {"min": 2, "max": 2}}
    assert status.readiness(_agent(fine, status=current), _deployment(ready=3, updated=3), now=NOW)


def test_configs_problems_are_reported(local_nodes: list[dict[str, Any]]) -> None:
    problems: list[str] = []
    snapshot = pools.Snapshot(
        nodes=tuple(local_nodes),
        pods=(),
        gpu_pools=({"metadata": {"name": "l4"}, "spec": {"priceUsdPerGpuHour": -1}},),
    )
    found = status.discover(_agent({"model": {"name": "m"}}), snapshot, problems=problems)
    assert [p.name for p in found] == ["h100", "l4", "system"]
    assert {p.name: p.price for p in found}["l4"] is None
    assert len(problems) == 1
    assert problems[0].startswith("GpuPool l4 ignored")


def _unschedulable(seconds: float) -> stuck.Stuck:
    return stuck.Stuck(
        pod="aion-executor-chat-1",
        seconds=seconds,
        message="0/8 nodes are available: 4 node(s) had untolerated taint",
    )


def test_falling_back_moves_to_the_next_pool_and_says_why(
    cfg: settings.AionOperatorSettings, local_nodes: list[dict[str, Any]]
) -> None:
    placed = _decide(
        _agent({"model": {"name": "m"}, "gpu": {"count": 1}}), _snapshot(local_nodes), cfg
    )
    registered = {
        "type": "Registered",
        "status": "True",
        "reason": "Registered",
        "message": "registered",
        "lastTransitionTime": "2025-01-02T03:04:05Z",
    }
    body = _agent(
        {"model": {"name": "m"}, "gpu": {"count": 1}},
        status={**placed.status, "conditions": [*placed.status["conditions"], registered]},
    )
    found = status.discover(body, _snapshot(local_nodes))
    moved = status.fall_back(
        body, agentspec.parse(body["spec"]), _unschedulable(130), found=found, cfg=cfg, now=LATER
    )
    assert moved is not None
    assert moved.deployment is not None
    assert _affinity(moved.deployment)[0]["values"] == ["h100"]
    assert moved.status["nodePool"] == "h100"
    assert moved.status["avoidPools"] == ["l4"]
    kinds = {c["type"]: c for c in moved.status["conditions"]}
    assert "Registered" not in kinds  # registered again once Ready on h100
    degraded = kinds["CapacityDegraded"]
    assert (degraded["status"], degraded["reason"]) == ("True", "FellBack")
    assert "stayed unschedulable on pool l4 for 130s" in degraded["message"]
    assert "untolerated taint" in degraded["message"]
    assert "moved to pool h100" in degraded["message"]
    assert moved.placement.message == degraded["message"]
    # Nowhere left: the Agent stays, and says so once.
    again = _agent(body["spec"], status=moved.status)
    stay = status.fall_back(
        again, agentspec.parse(body["spec"]), _unschedulable(200), found=found, cfg=cfg, now=LATER
    )
    assert stay is not None
    assert stay.deployment is None
    [degraded] = [c for c in stay.status["conditions"] if c["type"] == "CapacityDegraded"]
    assert (degraded["status"], degraded["reason"]) == ("True", "NoCapacity")
    assert "no other eligible pool has room" in degraded["message"]
    assert set(stay.status) == {"conditions"}
    said = _agent(body["spec"], status={**moved.status, **stay.status})
    assert (
        status.fall_back(
            said,
            agentspec.parse(body["spec"]),
            _unschedulable(300),
            found=found,
            cfg=cfg,
            now=LATER,
        )
        is None
    )


def test_a_new_spec_forgets_fallbacks_and_a_placed_agent_stays_on_its_pool(
    cfg: settings.AionOperatorSettings, local_nodes: list[dict[str, Any]]
) -> None:
    degraded = {
        "type": "CapacityDegraded",
        "status": "True",
        "reason": "FellBack",
        "message": "moved",
        "lastTransitionTime": "2025-01-02T03:04:05Z",
    }
    body = _agent(
        {"model": {"name": "m"}, "gpu": {"count": 1}},
        status={
            "nodePool": "h100",
            "avoidPools": ["l4"],
            "observedGeneration": 2,
            "conditions": [degraded],
        },
    )
    found = status.discover(body, _snapshot(local_nodes))
    fresh = status.place(
        body, agentspec.parse(body["spec"]), found=found, cfg=cfg, now=NOW, stay="h100"
    )
    assert fresh.status["nodePool"] == "h100"
    assert fresh.placement.message.startswith("stays on pool h100, where it runs")
    assert fresh.status["avoidPools"] is None  # a merge patch removes it
    assert [c["type"] for c in fresh.status["conditions"]] == ["Placed"]
    resumed = status.place(
        body, agentspec.parse(body["spec"]), found=found, cfg=cfg, now=NOW, exclude=["l4"]
    )
    assert resumed.status["nodePool"] == "h100"
    assert resumed.status["avoidPools"] == ["l4"]
    assert "CapacityDegraded" in [c["type"] for c in resumed.status["conditions"]]


def test_an_autoscaled_executor_leaves_replicas_to_the_hpa(
    cfg: settings.AionOperatorSettings, local_nodes: list[dict[str, Any]]
) -> None:
    body = _agent({"model": {"name": "m"}, "gpu": {"count": 1}, "replicas": {"min": 2, "max": 4}})
    found = status.discover(body, _snapshot(local_nodes))
    own = status.place(body, agentspec.parse(body["spec"]), found=found, cfg=cfg, now=NOW)
    assert own.deployment is not None
    assert own.deployment["spec"]["replicas"] == 2
    hpa = status.place(
        body, agentspec.parse(body["spec"]), found=found, cfg=cfg, now=NOW, autoscaled=True
    )
    assert hpa.deployment is not None
    assert "replicas" not in hpa.deployment["spec"]


def test_registration_is_due_once_ready_and_again_for_each_new_spec() -> None:
    ready = {"phase": "Ready", "nodePool": "l4", "observedGeneration": 3, "conditions": []}
    body = _agent({"model": {"name": "m"}}, status=ready)
    assert status.needs_registration(body)
    assert not status.needs_registration(
        _agent({"model": {"name": "m"}}, status={**ready, "phase": "Placed"})
    )
    done = status.registered_status(body, ok=True, message="registered", now=NOW)
    assert not status.needs_registration(_agent(body["spec"], status={**ready, **done}))
    failed = status.registered_status(body, ok=False, message="down", now=NOW)
    assert failed["conditions"][0]["reason"] == "AgentServiceUnavailable"
    assert status.needs_registration(_agent(body["spec"], status={**ready, **failed}))
    newer = _agent(body["spec"], generation=4, status={**ready, **done, "observedGeneration": 4})
    assert status.needs_registration(newer)


def test_the_registration_names_tenant_pool_and_executor() -> None:
    body = _agent(
        {
            "model": {"name": "m", "task": "embed"},
            "instructions": "Be brief.",
            "knowledgeBases": ["docs"],
            "routing": {"privacy": "hybrid"},
        }
    )
    req = registration.request(body, agentspec.parse(body["spec"]), tenant_name="acme", pool="l4")
    assert (req.tenant, req.agent.name, req.agent.model, req.agent.model_task) == (
        "acme",
        "chat",
        "m",
        "embed",
    )
    assert req.owner == "team-a/uid-1"
    assert (req.agent.node_pool, req.agent.ready, req.instructions) == ("l4", True, "Be brief.")
    assert list(req.agent.knowledge_bases) == ["docs"]
    assert req.privacy == req.agent.privacy == common_pb2.PRIVACY_HYBRID
    assert list(req.executor_endpoints) == ["aion-executor-chat.team-a.svc:50055"]
    assert list(req.tools) == []
    body["spec"]["tools"] = ["knowledge_search", "agent:helper"]
    req = registration.request(body, agentspec.parse(body["spec"]), tenant_name="acme", pool="l4")
    assert list(req.tools) == ["knowledge_search", "agent:helper"]


def test_the_registration_carries_description_max_tokens_and_routing_targets() -> None:
    body = _agent({"model": {"name": "m"}})
    req = registration.request(body, agentspec.parse(body["spec"]), tenant_name="acme", pool="l4")
    assert (req.agent.description, req.agent.max_tokens) == ("", 0)
    assert not req.agent.HasField("budget_usd_per_task")
    assert not req.agent.HasField("p95_target_ms")
    body["spec"] |= {
        "description": "answers questions",
        "maxTokens": 128,
        "routing": {"budgetUsdPerTask": 0.02, "p95TargetMs": 800},
    }
    req = registration.request(body, agentspec.parse(body["spec"]), tenant_name="acme", pool="l4")
    assert (req.agent.description, req.agent.max_tokens) == ("answers questions", 128)
    assert (req.agent.budget_usd_per_task, req.agent.p95_target_ms) == (0.02, 800)


LABEL = "aion.dev/tenant"


def test_the_platform_maps_namespaces_to_tenants() -> None:
    # The chart's operator.tenants first, then the Namespace's label, then its name.
    assert registration.tenant_of("team-a", labels={}, tenants={}, label=LABEL) == "team-a"
    assert (
        registration.tenant_of("team-a", labels={LABEL: "acme"}, tenants={}, label=LABEL) == "acme"
    )
    assert (
        registration.tenant_of(
            "team-a", labels={LABEL: "acme"}, tenants={"team-a": "globex"}, label=LABEL
        )
        == "globex"
    )
    assert (
        registration.tenant_of("team-b", labels={}, tenants={"team-a": "globex"}, label=LABEL)
        == "team-b"
    )


def test_an_agent_claiming_another_tenant_is_refused_and_told_how_to_fix_it() -> None:
    body = _agent({"model": {"name": "m"}})
    assert registration.mismatch(body, "team-a", label=LABEL) is None
    body["metadata"]["labels"] = {LABEL: "acme"}
    assert registration.mismatch(body, "acme", label=LABEL) is None
    why = registration.mismatch(body, "team-a", label=LABEL)
    assert why is not None
    assert "claims tenant acme" in why
    assert "namespace team-a belongs to tenant team-a" in why
    assert "remove the label" in why
    assert "operator.tenants" in why


def test_a_refusal_is_a_registered_false_condition_said_once() -> None:
    ready = {"phase": "Ready", "nodePool": "l4", "observedGeneration": 3, "conditions": []}
    body = _agent({"model": {"name": "m"}}, status=ready)
    refused = status.registered_status(
        body, ok=False, reason="TenantMismatch", message="claims acme", now=NOW
    )
    [cond] = refused["conditions"]
    assert (cond["type"], cond["status"], cond["reason"]) == (
        "Registered",
        "False",
        "TenantMismatch",
    )
    again = _agent(body["spec"], status={**ready, **refused})
    assert status.needs_registration(again)  # a fixed label registers at the next look
    assert status.refused_again(again, reason="TenantMismatch", message="claims acme")
    assert not status.refused_again(again, reason="TenantMismatch", message="claims b")


def test_a_gpupool_status_follows_its_pool_and_skips_unchanged_writes(
    local_nodes: list[dict[str, Any]],
) -> None:
    snapshot = _snapshot(local_nodes, [_pod("h100-0", gpus=3)])
    h100 = {"metadata": {"name": "h100"}, "spec": {"priceUsdPerGpuHour": 4.5}}
    found = status.pool_status(h100, snapshot, now=NOW)
    assert found is not None
    assert (found["product"], found["nodes"], found["gpus"], found["freeGpus"]) == (
        "NVIDIA-H100-80GB-HBM3",
        2,
        16,
        13,
    )
    assert status.pool_status({**h100, "status": found}, snapshot, now=LATER) is None
    missing = status.pool_status({"metadata": {"name": "a100"}}, snapshot, now=NOW)
    assert missing is not None
    assert (missing["nodes"], missing["gpus"], missing["product"]) == (0, 0, None)


def test_a_fallback_keeps_the_certificate_and_the_network_policy(
    cfg: settings.AionOperatorSettings, local_nodes: list[dict[str, Any]]
) -> None:
    body = _agent(
        {"model": {"name": "m"}, "gpu": {"count": 1}},
        status={"nodePool": "l4", "observedGeneration": 3},
    )
    found = status.discover(body, _snapshot(local_nodes))
    moved = status.fall_back(
        body,
        agentspec.parse(body["spec"]),
        _unschedulable(600),
        found=found,
        cfg=cfg,
        now=NOW,
        tls_version="v1",
        platform_namespace="aion",
    )
    assert moved is not None
    assert moved.deployment is not None
    assert moved.network_policy is not None
    assert (
        moved.deployment["spec"]["template"]["metadata"]["annotations"]["aion.dev/tls-serial"]
        == "v1"
    )
