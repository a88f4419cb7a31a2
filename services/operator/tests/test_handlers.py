"""The Agent handlers' decisions: place, render, and record what happened in the status."""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from typing import Any

import kopf
import pytest

from aion.operator import handlers, kube, settings, spec

NOW = datetime.datetime(2025, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)
LATER = NOW + datetime.timedelta(minutes=5)
PRICES = [{"metadata": {"name": "h100"}, "spec": {"priceUsdPerGpuHour": 4.5}},
          {"metadata": {"name": "l4"}, "spec": {"priceUsdPerGpuHour": 0.7}}]


def _agent(data: Any, *, generation: int = 3, status: dict[str, Any] | None = None,
           ) -> dict[str, Any]:
    body: dict[str, Any] = {
        "apiVersion": "aion.dev/v1alpha1", "kind": "Agent",
        "metadata": {"name": "chat", "namespace": "team-a", "uid": "uid-1",
                     "generation": generation},
        "spec": data,
    }
    if status is not None:
        body["status"] = status
    return body


def _pod(node: str, *, gpus: int, name: str = "other", namespace: str = "team-b",
         ) -> dict[str, Any]:
    return {"metadata": {"name": f"{name}-pod", "namespace": namespace,
                         "labels": {"aion.dev/agent": name}},
            "spec": {"nodeName": node, "containers": [
                {"resources": {"limits": {"nvidia.com/gpu": str(gpus)}}}]},
            "status": {"phase": "Running"}}


def _snapshot(nodes: Sequence[dict[str, Any]], pods: Sequence[dict[str, Any]] = (),
              ) -> kube.Snapshot:
    return kube.Snapshot(nodes=tuple(nodes), pods=tuple(pods), gpu_pools=tuple(PRICES))


def _decide(body: dict[str, Any], snapshot: kube.Snapshot,
            cfg: settings.AionOperatorSettings) -> handlers.Decision:
    found = handlers.discover(body, snapshot)
    return handlers.decide(body, spec.parse(body["spec"]), found=found, cfg=cfg, now=NOW)


def _affinity(deployment: dict[str, Any]) -> list[dict[str, Any]]:
    terms = (deployment["spec"]["template"]["spec"]["affinity"]["nodeAffinity"]
             ["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"])
    return list(terms[0]["matchExpressions"])


def test_places_on_the_cheapest_pool_with_its_own_label(
        cfg: settings.AionOperatorSettings, local_nodes: list[dict[str, Any]]) -> None:
    body = _agent({"model": {"name": "m"}, "gpu": {"count": 1}})
    out = _decide(body, _snapshot(local_nodes), cfg)
    assert out.deployment is not None
    assert out.service is not None
    assert _affinity(out.deployment)[0] == {
        "key": "cloud.google.com/gke-nodepool", "operator": "In", "values": ["l4"]}
    pod = out.deployment["spec"]["template"]["spec"]
    assert pod["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert pod["containers"][0]["image"] == "registry.test/aion-executor:1.2.3"
    env = {e["name"]: e["value"] for e in pod["containers"][0]["env"]}
    assert env["AION_EXECUTOR_POOL"] == "l4"
    assert env["AION_EXECUTOR_OTLP_ENDPOINT"] == "http://otel:4317"
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
        cfg: settings.AionOperatorSettings, local_nodes: list[dict[str, Any]]) -> None:
    body = _agent({"model": {"name": "m"}, "gpu": {"count": 1, "products": ["NVIDIA-L4"]}})
    own = [_pod(f"l4-{i}", gpus=1, name="chat", namespace="team-a") for i in range(4)]
    assert _decide(body, _snapshot(local_nodes, own), cfg).status["nodePool"] == "l4"
    others = [_pod(f"l4-{i}", gpus=1) for i in range(4)]
    full = _decide(body, _snapshot(local_nodes, others), cfg)
    assert full.deployment is None
    assert full.status["phase"] == "Pending"
    assert full.status["conditions"][0]["reason"] == "NoCapacity"


def test_unknown_product_has_no_eligible_pool(
        cfg: settings.AionOperatorSettings, local_nodes: list[dict[str, Any]]) -> None:
    body = _agent({"model": {"name": "m"}, "gpu": {"count": 1, "products": ["NVIDIA-B200"]}})
    out = _decide(body, _snapshot(local_nodes), cfg)
    assert (out.deployment, out.service) == (None, None)
    assert out.placement.reason == "NoEligiblePool"
    assert "nodePool" not in out.status
    [condition] = out.status["conditions"]
    assert (condition["type"], condition["status"], condition["reason"]) == (
        "Placed", "False", "NoEligiblePool")
    assert "NVIDIA-B200" in condition["message"]


def test_invalid_spec_fails_permanently_and_says_why() -> None:
    patch = kopf.Patch()
    bad = _agent({"model": {"name": "m"}, "replicas": {"min": 2, "max": 1}})
    with pytest.raises(kopf.PermanentError, match=r"spec.replicas: replicas.min \(2\)"):
        handlers.parse(bad, patch, now=NOW)
    assert patch["status"]["phase"] == "Failed"
    [condition] = patch["status"]["conditions"]
    assert (condition["status"], condition["reason"]) == ("False", "InvalidSpec")
    assert "must not exceed replicas.max" in condition["message"]


def test_other_conditions_are_kept_and_transition_times_move_only_on_change(
        cfg: settings.AionOperatorSettings, local_nodes: list[dict[str, Any]]) -> None:
    ready = {"type": "Ready", "status": "True", "reason": "ReplicasReady", "message": "",
             "lastTransitionTime": "2024-12-01T00:00:00Z"}
    data = {"model": {"name": "m"}, "gpu": {"count": 1}}
    first = _decide(_agent(data, status={"conditions": [ready]}), _snapshot(local_nodes), cfg)
    found = handlers.discover(_agent(data), _snapshot(local_nodes))
    again = handlers.decide(_agent(data, generation=4, status=first.status), spec.parse(data),
                            found=found, cfg=cfg, now=LATER)
    assert [c["type"] for c in again.status["conditions"]] == ["Ready", "Placed"]
    assert again.status["conditions"][0] == ready
    placed = again.status["conditions"][1]
    assert placed["lastTransitionTime"] == "2025-01-02T03:04:05Z"
    assert placed["observedGeneration"] == 4
    broken = handlers.invalid_status(
        _agent({}, generation=5, status=again.status), message="bad", now=LATER)
    assert broken["conditions"][1]["lastTransitionTime"] == "2025-01-02T03:09:05Z"


def _deployment(*, ready: int, updated: int, generation: int = 2,
                observed: int = 2) -> dict[str, Any]:
    return {"metadata": {"generation": generation},
            "status": {"readyReplicas": ready, "updatedReplicas": updated,
                       "observedGeneration": observed}}


def test_readiness_follows_the_deployment() -> None:
    placed = {"phase": "Placed", "nodePool": "l4", "observedGeneration": 3, "conditions": []}
    body = _agent({"model": {"name": "m"}, "replicas": {"min": 2, "max": 2}}, status=placed)
    waiting = handlers.readiness(body, _deployment(ready=1, updated=2), now=NOW)
    assert waiting is not None
    assert (waiting["phase"], waiting["readyReplicas"]) == ("Placed", 1)
    [condition] = waiting["conditions"]
    assert (condition["type"], condition["status"], condition["reason"]) == (
        "Ready", "False", "ReplicasNotReady")
    assert condition["message"] == "1 of 2 executor replica(s) ready on pool l4"
    # Nothing changed since: no patch.
    assert handlers.readiness(_agent(body["spec"], status={**placed, **waiting}),
                              _deployment(ready=1, updated=2), now=LATER) is None
    done = handlers.readiness(body, _deployment(ready=2, updated=2), now=NOW)
    assert done is not None
    assert (done["phase"], done["readyReplicas"]) == ("Ready", 2)
    assert done["conditions"][0]["status"] == "True"
    # A rollout the Deployment controller has not seen yet is not ready.
    stale = handlers.readiness(body, _deployment(ready=2, updated=2, generation=3), now=NOW)
    assert stale is not None
    assert stale["phase"] == "Placed"


def test_readiness_waits_for_the_current_generation_to_be_placed() -> None:
    status = {"phase": "Placed", "nodePool": "l4", "observedGeneration": 2}
    body = _agent({"model": {"name": "m"}}, status=status)
    assert handlers.readiness(body, _deployment(ready=1, updated=1), now=NOW) is None
    assert handlers.readiness(_agent({"model": {"name": "m"}}),
                              _deployment(ready=1, updated=1), now=NOW) is None
    assert handlers.readiness(_agent({"model": {"name": "m"}}, status={
        **status, "observedGeneration": 3}), None, now=NOW) is None


def test_configs_problems_are_reported(local_nodes: list[dict[str, Any]]) -> None:
    problems: list[str] = []
    snapshot = kube.Snapshot(nodes=tuple(local_nodes), pods=(), gpu_pools=(
        {"metadata": {"name": "l4"}, "spec": {"priceUsdPerGpuHour": -1}},))
    found = handlers.discover(_agent({"model": {"name": "m"}}), snapshot, problems=problems)
    assert [p.name for p in found] == ["h100", "l4", "system"]
    assert {p.name: p.price for p in found}["l4"] is None
    assert len(problems) == 1
    assert problems[0].startswith("GpuPool l4 ignored")


def test_handlers_go_on_the_given_registry(cfg: settings.AionOperatorSettings) -> None:
    registry = kopf.OperatorRegistry()
    handlers.register(registry, client=kube.Kube(_unused_client()), cfg=cfg)
    # kopf keeps no public listing of a registry's handlers; its own tests read these.
    ids = {h.id for h in registry._changing.get_all_handlers()}
    assert ids == {"place", "place/spec"}
    assert {h.id for h in registry._spawning.get_all_handlers()} == {"readiness"}
    assert {h.id for h in registry._activities.get_all_handlers()} == {"login"}


def _unused_client() -> Any:
    # Registering makes no call; a client would need a kubeconfig to build.
    return object()
