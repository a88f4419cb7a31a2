"""The Agent CRD (the chart's crds/ file) and ``aion.core.agentspec`` describe the same resource."""

from __future__ import annotations

import pathlib
import typing
from typing import Any

import pydantic
import pytest
import yaml

from aion.core import agentspec, privacy

ROOT = pathlib.Path(__file__).resolve().parents[3]
CRD = ROOT / "charts" / "aion" / "crds" / "agents.aion.dev.yaml"
DEMO = ROOT / "deploy" / "examples" / "demo-agent.yaml"
EXAMPLE = ROOT / "deploy" / "examples" / "agent.yaml"


@pytest.fixture(scope="module")
def crd() -> dict[str, Any]:
    """The CustomResourceDefinition as the API server would read it."""
    data = yaml.safe_load(CRD.read_text())
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def version(crd: dict[str, Any]) -> dict[str, Any]:
    """The one served version."""
    [v] = crd["spec"]["versions"]
    return dict(v)


def _props(version: dict[str, Any], *path: str) -> dict[str, Any]:
    node = version["schema"]["openAPIV3Schema"]
    for name in path:
        node = node["properties"][name]
    return dict(node["properties"])


def _rules(version: dict[str, Any], *path: str) -> list[str]:
    node = version["schema"]["openAPIV3Schema"]
    for name in path:
        node = node["properties"][name]
    return [r["rule"] for r in node.get("x-kubernetes-validations", [])]


def test_names_scope_and_status_subresource(crd: dict[str, Any], version: dict[str, Any]) -> None:
    assert crd["metadata"]["name"] == "agents.aion.dev"
    assert crd["spec"]["group"] == "aion.dev"
    assert crd["spec"]["scope"] == "Namespaced"
    names = crd["spec"]["names"]
    assert (names["kind"], names["plural"], names["shortNames"]) == ("Agent", "agents", ["ag"])
    assert version["name"] == "v1alpha1"
    assert version["served"]
    assert version["storage"]
    assert version["subresources"] == {"status": {}}


def test_printer_columns(version: dict[str, Any]) -> None:
    columns = {c["name"]: c["jsonPath"] for c in version["additionalPrinterColumns"]}
    assert columns["Phase"] == ".status.phase"
    assert columns["Pool"] == ".status.nodePool"
    assert columns["Ready"] == ".status.readyReplicas"
    assert columns["Age"] == ".metadata.creationTimestamp"


def test_spec_fields_defaults_and_rules(version: dict[str, Any]) -> None:
    root = version["schema"]["openAPIV3Schema"]
    assert root["properties"]["spec"]["required"] == ["model"]
    top = _props(version, "spec")
    assert set(top) == {
        "model",
        "instructions",
        "description",
        "maxTokens",
        "tools",
        "toolCredentials",
        "knowledgeBases",
        "routing",
        "gpu",
        "resources",
        "placement",
        "replicas",
    }
    model = _props(version, "spec", "model")
    assert model["task"]["enum"] == list(typing.get_args(agentspec.ModelTask))
    assert model["task"]["default"] == "generate"
    routing = _props(version, "spec", "routing")
    assert set(routing["privacy"]["enum"]) == {p.value for p in privacy.Privacy}
    assert routing["privacy"]["default"] == "local-only"
    gpu = _props(version, "spec", "gpu")
    assert (gpu["count"]["minimum"], gpu["count"]["default"]) == (0, 1)
    assert set(gpu) == {"count", "products", "minMemoryGiB"}
    assert set(_props(version, "spec", "placement")) == {
        "allowedPools",
        "preferredPools",
        "maxPricePerGpuHour",
    }
    replicas = _props(version, "spec", "replicas")
    assert (replicas["min"]["default"], replicas["max"]["default"]) == (1, 1)
    assert _rules(version, "spec", "replicas") == ["self.min <= self.max"]
    assert _rules(version, "spec", "gpu")
    assert _rules(version, "spec", "placement")


def _model(annotation: Any) -> type[pydantic.BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, pydantic.BaseModel):
        return annotation
    return None


def _fields(model: type[pydantic.BaseModel]) -> dict[str, tuple[Any, bool]]:
    """The model's fields by their CRD names: each one's nested model (or None), and
    whether it is a tuple (the CRD's array, whose ``items`` hold the nested fields)."""
    found: dict[str, tuple[Any, bool]] = {}
    for name, field in model.model_fields.items():
        array = typing.get_origin(field.annotation) is tuple
        nested = _model(typing.get_args(field.annotation)[0] if array else field.annotation)
        found[field.alias or name] = (nested, array)
    return found


def _same_fields(schema: dict[str, Any], model: type[pydantic.BaseModel], path: str) -> list[str]:
    props = schema.get("properties", {})
    fields = _fields(model)
    diff = [f"{path}.{k}: only in the CRD" for k in props if k not in fields]
    diff += [f"{path}.{k}: only in aion.core.agentspec" for k in fields if k not in props]
    return diff + [
        d
        for k, (nested, array) in fields.items()
        if nested is not None and k in props
        for d in _same_fields(props[k]["items"] if array else props[k], nested, f"{path}.{k}")
    ]


def test_crd_and_the_one_spec_model_declare_the_same_fields(version: dict[str, Any]) -> None:
    """Every field, at every depth, is in both (the agent service parses with the model)."""
    schema = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert _same_fields(schema, agentspec.AgentSpec, "spec") == []
    # Arrays of objects too: a field missing in an item is found.
    item = schema["properties"]["toolCredentials"]["items"]
    trimmed = {**item, "properties": {k: v for k, v in item["properties"].items() if k != "scheme"}}
    changed = {
        **schema,
        "properties": {
            **schema["properties"],
            "toolCredentials": {**schema["properties"]["toolCredentials"], "items": trimmed},
        },
    }
    assert _same_fields(changed, agentspec.AgentSpec, "spec") == [
        "spec.toolCredentials.scheme: only in aion.core.agentspec"
    ]


def test_tool_credentials_match_the_model(version: dict[str, Any]) -> None:
    """Patterns, the default header, the map key and the rule that a credential's URL
    is a server of spec.tools (the model's check, in CEL)."""
    tools = _props(version, "spec")["toolCredentials"]
    assert (tools["x-kubernetes-list-type"], tools["x-kubernetes-list-map-keys"]) == (
        "map",
        ["url"],
    )
    item = tools["items"]
    assert item["required"] == ["url", "secretRef"]
    props = item["properties"]
    ref = props["secretRef"]["properties"]
    assert ref["name"]["pattern"] == agentspec.SECRET_NAME_PATTERN
    assert ref["key"]["pattern"] == agentspec.SECRET_KEY_PATTERN
    assert props["header"]["pattern"] == agentspec.HEADER_PATTERN
    assert props["scheme"]["pattern"] == agentspec.SCHEME_PATTERN
    assert props["header"]["default"] == agentspec.DEFAULT_HEADER
    assert "default" not in props["scheme"]  # unset: Bearer for Authorization only
    assert props["url"]["maxLength"] == 128
    [rule] = _rules(version, "spec")
    assert "self.toolCredentials.all(c" in rule
    assert "'mcp:' + c.url" in rule
    assert "'a2a:' + c.url" in rule


def test_description_and_max_tokens_limits_match(version: dict[str, Any]) -> None:
    top = _props(version, "spec")
    assert top["description"]["maxLength"] == agentspec.MAX_DESCRIPTION
    assert (top["maxTokens"]["minimum"], top["maxTokens"]["maximum"]) == (1, agentspec.MAX_TOKENS)
    s = agentspec.parse({"model": {"name": "m"}, "description": "d", "maxTokens": 64})
    assert (s.description, s.max_tokens) == ("d", 64)


def test_crd_defaults_match_spec_py(version: dict[str, Any]) -> None:
    s = agentspec.parse({"model": {"name": "m"}})
    assert _props(version, "spec", "gpu")["count"]["default"] == s.gpu.count
    assert _props(version, "spec", "routing")["privacy"]["default"] == s.routing.privacy
    resources = _props(version, "spec", "resources")
    assert (resources["cpu"]["default"], resources["memory"]["default"]) == (
        s.resources.cpu,
        s.resources.memory,
    )
    assert resources["cpu"]["pattern"] == agentspec.QUANTITY_PATTERN
    pools = _props(version, "spec", "placement")["allowedPools"]["items"]
    assert pools["pattern"] == agentspec.LABEL_VALUE_PATTERN
    assert _props(version, "spec", "model")["name"]["pattern"] == agentspec.MODEL_NAME_PATTERN


def test_status_fields(version: dict[str, Any]) -> None:
    status = _props(version, "status")
    assert set(status) >= {
        "phase",
        "nodePool",
        "readyReplicas",
        "observedGeneration",
        "conditions",
        "placementReason",
        "avoidPools",
        "credentialsVersion",
    }
    condition = status["conditions"]["items"]["properties"]
    assert set(condition) >= {"type", "status", "reason", "message", "lastTransitionTime"}


def _undeclared(value: Any, schema: dict[str, Any], path: str) -> list[str]:
    if not isinstance(value, dict):
        return []
    props = schema.get("properties", {})
    missing = [f"{path}.{k}" for k in value if k not in props]
    return missing + [
        m for k, v in value.items() if k in props for m in _undeclared(v, props[k], f"{path}.{k}")
    ]


def test_demo_agent_is_valid() -> None:
    demo = yaml.safe_load(DEMO.read_text())
    assert (demo["apiVersion"], demo["kind"], demo["metadata"]["name"]) == (
        "aion.dev/v1alpha1",
        "Agent",
        "demo",
    )
    s = agentspec.parse(demo["spec"])
    assert (s.model.name, s.model.task, s.gpu.count) == ("smollm2-135m-instruct", "generate", 0)


def test_gpu_example_agent_is_valid() -> None:
    example = yaml.safe_load(EXAMPLE.read_text())
    s = agentspec.parse(example["spec"])
    assert (s.gpu.count, s.gpu.products) == (1, ("NVIDIA-L4", "NVIDIA-H100-80GB-HBM3"))


@pytest.mark.parametrize("path", [DEMO, EXAMPLE], ids=["demo", "gpu"])
def test_example_agents_use_only_declared_fields(
    version: dict[str, Any], path: pathlib.Path
) -> None:
    example = yaml.safe_load(path.read_text())
    schema = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert _undeclared(example["spec"], schema, "spec") == []
