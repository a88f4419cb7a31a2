"""Agent specs: defaults as the CRD's, and bad specs rejected with the field and the fix."""

from __future__ import annotations

from typing import Any

import pytest

from aion.core import errors
from aion.operator import spec


def test_minimal_spec_gets_the_crd_defaults() -> None:
    s = spec.parse({"model": {"name": "smollm2-135m-instruct"}})
    assert s.model.task == "generate"
    assert s.model.source is None
    assert s.routing.privacy == "local-only"
    assert s.gpu.count == 1
    assert (s.replicas.min, s.replicas.max) == (1, 1)
    assert (s.resources.cpu, s.resources.memory) == ("1", "2Gi")
    assert s.tools == ()
    assert s.knowledge_bases == ()


def test_full_spec_reads_camel_case_fields(gpu_spec: dict[str, Any]) -> None:
    gpu_spec.update(knowledgeBases=["handbook"], tools=["search"],
                    routing={"privacy": "hybrid", "budgetUsdPerTask": 0.02, "p95TargetMs": 800})
    s = spec.parse(gpu_spec)
    assert s.gpu.min_memory_gib == 80
    assert s.knowledge_bases == ("handbook",)
    assert s.routing.budget_usd_per_task == 0.02
    assert s.routing.p95_target_ms == 800
    assert s.placement.ordered() == ("a100", "a100-spot")


def test_integer_quantities_are_accepted() -> None:
    s = spec.parse({"model": {"name": "m"}, "resources": {"cpu": 2, "memory": "512Mi"}})
    assert s.resources.cpu == "2"


@pytest.mark.parametrize(("patch", "field", "says"), [
    ({"model": {}}, "spec.model.name", "Field required"),
    ({"model": {"name": "m", "task": "chat"}}, "spec.model.task", "'generate' or 'embed'"),
    ({"routing": {"privacy": "public"}}, "spec.routing.privacy", "'local-only'"),
    ({"routing": {"budgetUsdPerTask": -1}}, "spec.routing.budgetUsdPerTask",
     "greater than or equal to 0"),
    ({"gpu": {"count": -1}}, "spec.gpu.count", "greater than or equal to 0"),
    ({"gpu": {"count": True}}, "spec.gpu.count", "valid integer"),
    ({"gpu": {"count": 0, "products": ["NVIDIA-L4"]}}, "spec.gpu", "need gpu.count > 0"),
    ({"replicas": {"min": 3, "max": 2}}, "spec.replicas",
     "replicas.min (3) must not exceed replicas.max (2)"),
    ({"resources": {"memory": "lots"}}, "spec.resources.memory", "not a Kubernetes quantity"),
    ({"placement": {"allowedPools": ["a"], "preferredPools": ["b"]}}, "spec.placement",
     "not allowed: b"),
    ({"placement": {"allowedPools": ["bad pool"]}}, "spec.placement.allowedPools[0]",
     "not a node label value"),
    ({"tools": ["search", "search"]}, "spec.tools", "repeated: search"),
    ({"gpus": 1}, "spec.gpus", "Extra inputs are not permitted"),
])
def test_bad_specs_name_the_field_and_the_problem(patch: dict[str, Any], field: str,
                                                  says: str) -> None:
    data: dict[str, Any] = {"model": {"name": "m"}, **patch}
    with pytest.raises(errors.InvalidArgument) as caught:
        spec.parse(data)
    assert caught.value.field == field
    assert says in caught.value.message
    assert caught.value.message.startswith(f"invalid Agent spec: {field}: ")


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(errors.InvalidArgument) as caught:
        spec.parse({"model": {"name": ""}, "gpu": {"count": 99}})
    assert "spec.model.name" in caught.value.message
    assert "spec.gpu.count" in caught.value.message


def test_a_missing_spec_is_rejected() -> None:
    with pytest.raises(errors.InvalidArgument, match="spec: Input should be a valid dictionary"):
        spec.parse(None)
