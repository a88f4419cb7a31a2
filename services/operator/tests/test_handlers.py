"""The Agent handlers: validate, render, and record what happened in the status."""

from __future__ import annotations

import datetime
import logging
from typing import Any

import kopf
import pytest

from aion.operator import handlers, settings

NOW = datetime.datetime(2025, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)
LATER = NOW + datetime.timedelta(minutes=5)
LOG = logging.getLogger("test")


def _agent(spec: Any, *, generation: int = 3, status: dict[str, Any] | None = None,
           ) -> dict[str, Any]:
    body: dict[str, Any] = {
        "apiVersion": "aion.dev/v1alpha1", "kind": "Agent",
        "metadata": {"name": "chat", "namespace": "team-a", "uid": "uid-1",
                     "generation": generation},
        "spec": spec,
    }
    if status is not None:
        body["status"] = status
    return body


def test_renders_for_the_first_preferred_pool(cfg: settings.AionOperatorSettings,
                                              gpu_spec: dict[str, Any]) -> None:
    out = handlers.render_agent(_agent(gpu_spec), cfg=cfg, now=NOW)
    assert out.deployment["metadata"]["name"] == "aion-executor-chat"
    assert out.deployment["spec"]["template"]["spec"]["containers"][0]["image"] == (
        "registry.test/aion-executor:1.2.3")
    env = {e["name"]: e["value"]
           for e in out.deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["AION_EXECUTOR_POOL"] == "a100"
    assert env["AION_EXECUTOR_OTLP_ENDPOINT"] == "http://otel:4317"
    assert out.service["kind"] == "Service"
    assert out.status["phase"] == "Pending"
    assert out.status["observedGeneration"] == 3
    [condition] = out.status["conditions"]
    assert condition == {
        "type": "Rendered", "status": "True", "reason": "Rendered",
        "message": "executor Deployment and Service aion-executor-chat rendered for pool a100: "
                   "2 replica(s) of llama-3-8b-instruct with 2 GPU(s) each",
        "lastTransitionTime": "2025-01-02T03:04:05Z", "observedGeneration": 3}


def test_agents_naming_no_pool_use_the_default_pool(cfg: settings.AionOperatorSettings) -> None:
    out = handlers.render_agent(_agent({"model": {"name": "m"}}), cfg=cfg, now=NOW)
    terms = (out.deployment["spec"]["template"]["spec"]["affinity"]["nodeAffinity"]
             ["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"])
    assert terms[0]["matchExpressions"][0]["values"] == ["default"]


def test_reconcile_patches_the_status(cfg: settings.AionOperatorSettings) -> None:
    patch = kopf.Patch()
    handlers.reconcile(_agent({"model": {"name": "m"}}), patch, cfg=cfg, logger=LOG, now=NOW)
    assert patch["status"]["phase"] == "Pending"
    assert patch["status"]["conditions"][0]["reason"] == "Rendered"


def test_invalid_spec_fails_permanently_and_says_why(cfg: settings.AionOperatorSettings) -> None:
    patch = kopf.Patch()
    bad = _agent({"model": {"name": "m"}, "replicas": {"min": 2, "max": 1}})
    with pytest.raises(kopf.PermanentError, match=r"spec.replicas: replicas.min \(2\)"):
        handlers.reconcile(bad, patch, cfg=cfg, logger=LOG, now=NOW)
    assert patch["status"]["phase"] == "Failed"
    [condition] = patch["status"]["conditions"]
    assert condition["status"] == "False"
    assert condition["reason"] == "InvalidSpec"
    assert "must not exceed replicas.max" in condition["message"]


def test_other_conditions_are_kept_and_transition_times_move_only_on_change(
        cfg: settings.AionOperatorSettings) -> None:
    placed = {"type": "Placed", "status": "True", "reason": "PoolFits", "message": "",
              "lastTransitionTime": "2024-12-01T00:00:00Z"}
    first = handlers.render_agent(
        _agent({"model": {"name": "m"}}, status={"conditions": [placed]}), cfg=cfg, now=NOW)
    again = handlers.render_agent(
        _agent({"model": {"name": "m"}}, generation=4, status=first.status), cfg=cfg, now=LATER)
    assert [c["type"] for c in again.status["conditions"]] == ["Placed", "Rendered"]
    assert again.status["conditions"][0] == placed
    rendered = again.status["conditions"][1]
    assert rendered["lastTransitionTime"] == "2025-01-02T03:04:05Z"
    assert rendered["observedGeneration"] == 4
    broken = handlers.invalid_status(
        _agent({}, generation=5, status=again.status), message="bad", now=LATER)
    assert broken["conditions"][1]["lastTransitionTime"] == "2025-01-02T03:09:05Z"


def test_handlers_go_on_the_given_registry(cfg: settings.AionOperatorSettings) -> None:
    registry = kopf.OperatorRegistry()
    handlers.register(registry, cfg=cfg)
    # kopf keeps no public listing of a registry's handlers; its own tests read these.
    ids = {h.id for h in registry._changing.get_all_handlers()}
    assert ids == {"render", "render/spec"}
    assert {h.id for h in registry._activities.get_all_handlers()} == {"login"}
