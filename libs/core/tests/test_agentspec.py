"""Agent specs and resources: defaults as the CRD's, and bad ones rejected with the field
and the fix. The CRD itself is checked against this model in the operator's test_crd.py."""

from __future__ import annotations

from typing import Any

import pytest

from aion.core import agentspec, errors, privacy


@pytest.fixture
def gpu_spec() -> dict[str, Any]:
    """A spec that needs two A100s of at least 80 GiB on a preferred pool."""
    return {
        "model": {"name": "llama-3-8b-instruct", "source": "https://models.test/llama.gguf"},
        "gpu": {"count": 2, "products": ["NVIDIA-A100-SXM4-80GB"], "minMemoryGiB": 80},
        "resources": {"cpu": "4", "memory": "32Gi"},
        "placement": {"allowedPools": ["a100-spot", "a100"], "preferredPools": ["a100"]},
        "replicas": {"min": 2, "max": 4},
    }


def test_minimal_spec_gets_the_crd_defaults() -> None:
    s = agentspec.parse({"model": {"name": "smollm2-135m-instruct"}})
    assert s.model.task == "generate"
    assert s.model.source is None
    assert s.routing.privacy is privacy.Privacy.LOCAL_ONLY
    assert (s.description, s.max_tokens) == ("", None)
    assert s.gpu.count == 1
    assert (s.replicas.min, s.replicas.max) == (1, 1)
    assert (s.resources.cpu, s.resources.memory) == ("1", "2Gi")
    assert s.tools == ()
    assert s.knowledge_bases == ()


def test_full_spec_reads_camel_case_fields(gpu_spec: dict[str, Any]) -> None:
    gpu_spec.update(
        knowledgeBases=["handbook"],
        tools=["search"],
        routing={"privacy": "hybrid", "budgetUsdPerTask": 0.02, "p95TargetMs": 800},
    )
    s = agentspec.parse(gpu_spec)
    assert s.gpu.min_memory_gib == 80
    assert s.knowledge_bases == ("handbook",)
    assert s.routing.budget_usd_per_task == 0.02
    assert s.routing.p95_target_ms == 800
    assert s.placement.ordered() == ("a100", "a100-spot")


def test_integer_quantities_are_accepted() -> None:
    s = agentspec.parse({"model": {"name": "m"}, "resources": {"cpu": 2, "memory": "512Mi"}})
    assert s.resources.cpu == "2"


@pytest.mark.parametrize(
    ("patch", "field", "says"),
    [
        ({"model": {}}, "spec.model.name", "Field required"),
        ({"model": {"name": "m", "task": "chat"}}, "spec.model.task", "'generate' or 'embed'"),
        ({"routing": {"privacy": "public"}}, "spec.routing.privacy", "'local-only'"),
        (
            {"routing": {"budgetUsdPerTask": -1}},
            "spec.routing.budgetUsdPerTask",
            "greater than or equal to 0",
        ),
        ({"gpu": {"count": -1}}, "spec.gpu.count", "greater than or equal to 0"),
        ({"gpu": {"count": True}}, "spec.gpu.count", "valid integer"),
        ({"gpu": {"count": 0, "products": ["NVIDIA-L4"]}}, "spec.gpu", "need gpu.count > 0"),
        (
            {"replicas": {"min": 3, "max": 2}},
            "spec.replicas",
            "replicas.min (3) must not exceed replicas.max (2)",
        ),
        ({"resources": {"memory": "lots"}}, "spec.resources.memory", "not a Kubernetes quantity"),
        (
            {"placement": {"allowedPools": ["a"], "preferredPools": ["b"]}},
            "spec.placement",
            "not allowed: b",
        ),
        (
            {"placement": {"allowedPools": ["bad pool"]}},
            "spec.placement.allowedPools[0]",
            "not a node label value",
        ),
        ({"tools": ["search", "search"]}, "spec.tools", "repeated: search"),
        ({"gpus": 1}, "spec.gpus", "Extra inputs are not permitted"),
        ({"maxTokens": 0}, "spec.maxTokens", "greater than or equal to 1"),
        ({"maxTokens": "64"}, "spec.maxTokens", "valid integer"),
        ({"description": "d" * 5000}, "spec.description", "at most 4096"),
    ],
)
def test_bad_specs_name_the_field_and_the_problem(
    patch: dict[str, Any], field: str, says: str
) -> None:
    data: dict[str, Any] = {"model": {"name": "m"}, **patch}
    with pytest.raises(errors.InvalidArgument) as caught:
        agentspec.parse(data)
    assert caught.value.field == field
    assert says in caught.value.message
    assert caught.value.message.startswith(f"invalid Agent spec: {field}: ")


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(errors.InvalidArgument) as caught:
        agentspec.parse({"model": {"name": ""}, "gpu": {"count": 99}})
    assert "spec.model.name" in caught.value.message
    assert "spec.gpu.count" in caught.value.message


def test_a_missing_spec_is_rejected() -> None:
    with pytest.raises(errors.InvalidArgument, match="spec: Input should be a valid dictionary"):
        agentspec.parse(None)


def _resource(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "aion.dev/v1alpha1",
        "kind": "Agent",
        "metadata": {"name": "helper", "namespace": "team-a", "labels": {"a": "b"}},
        "spec": {"model": {"name": "m"}, **spec},
        "status": {"phase": "Ready"},
    }


def test_a_resource_keeps_every_spec_field() -> None:
    r = agentspec.parse_resource(
        _resource(
            tools=["knowledge_search", "agent:other"],
            maxTokens=64,
            description="helps",
            routing={"privacy": "hybrid"},
        )
    )
    assert r.metadata.name == "helper"
    assert r.spec.tools == ("knowledge_search", "agent:other")
    assert (r.spec.max_tokens, r.spec.description) == (64, "helps")
    assert r.spec.routing.privacy is privacy.Privacy.HYBRID


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"kind": "Pod"}, "kind"),
        ({"apiVersion": "aion.dev/v1"}, "apiVersion"),
        ({"metadata": {"name": "Not_A_Name"}}, "metadata.name"),
        ({"spec": {"model": {"name": "m"}, "tools": "search"}}, "spec.tools"),
    ],
)
def test_bad_resources_name_the_field(change: dict[str, Any], field: str) -> None:
    with pytest.raises(errors.InvalidArgument) as caught:
        agentspec.parse_resource(_resource() | change)
    assert caught.value.field == field
    assert caught.value.message.startswith(f"invalid Agent: {field}: ")


def test_many_problems_are_cut_short() -> None:
    data = {"model": {"name": "m"}, **{f"extra{i}": i for i in range(20)}}
    with pytest.raises(errors.InvalidArgument) as caught:
        agentspec.parse(data)
    assert caught.value.message.endswith("; and 15 more")


def _credentialed(*entries: dict[str, Any], tools: list[str] | None = None) -> dict[str, Any]:
    return {
        "model": {"name": "m"},
        "tools": tools if tools is not None else ["mcp:http://tools/mcp#add", "a2a:http://peer"],
        "toolCredentials": list(entries),
    }


def _credential(url: str = "http://tools/mcp", **changes: Any) -> dict[str, Any]:
    return {"url": url, "secretRef": {"name": "tool-tokens", "key": "token"}, **changes}


def test_tool_credentials_name_a_secret_key_for_a_server_of_the_tools() -> None:
    s = agentspec.parse(
        _credentialed(
            _credential(),
            _credential("http://peer", header="X-API-Key", secretRef={"name": "a.b", "key": "k"}),
        )
    )
    first, second = s.tool_credentials
    assert (first.url, first.secret_ref.name, first.secret_ref.key) == (
        "http://tools/mcp",
        "tool-tokens",
        "token",
    )
    assert (first.header, first.scheme, first.prefix) == ("Authorization", None, "Bearer ")
    assert (second.header, second.prefix) == ("X-API-Key", "")
    assert agentspec.parse(_credentialed()).tool_credentials == ()


@pytest.mark.parametrize(
    ("changes", "prefix"),
    [
        ({"scheme": "Token"}, "Token "),
        ({"scheme": ""}, ""),
        ({"header": "authorization"}, "Bearer "),
        ({"header": "X-API-Key", "scheme": "Key"}, "Key "),
    ],
)
def test_the_scheme_is_bearer_for_authorization_unless_said(
    changes: dict[str, str], prefix: str
) -> None:
    [c] = agentspec.parse(_credentialed(_credential(**changes))).tool_credentials
    assert c.prefix == prefix


def test_server_urls_of_tools() -> None:
    assert agentspec.server_url("mcp:http://a/mcp#add") == "http://a/mcp"
    assert agentspec.server_url("mcp:http://a/mcp") == "http://a/mcp"
    assert agentspec.server_url("a2a:http://a/agent#x") == "http://a/agent#x"
    assert agentspec.server_url("agent:other") is None
    assert agentspec.server_url("knowledge_search") is None


@pytest.mark.parametrize(
    ("spec", "field", "says"),
    [
        (
            _credentialed(_credential("http://other/mcp")),
            "spec",
            "toolCredentials[0].url http://other/mcp is not a server of spec.tools",
        ),
        (
            _credentialed(_credential(), tools=["agent:http://tools/mcp"]),
            "spec",
            "name it there as mcp:http://tools/mcp",
        ),
        (
            _credentialed(_credential(), _credential()),
            "spec",
            "toolCredentials[1]: a second credential for http://tools/mcp",
        ),
        (
            _credentialed(_credential(secretRef={"name": "Tokens_1", "key": "token"})),
            "spec.toolCredentials[0].secretRef.name",
            "not a Secret name",
        ),
        (
            _credentialed(_credential(secretRef={"name": "t", "key": "a/b"})),
            "spec.toolCredentials[0].secretRef.key",
            "not a Secret key",
        ),
        (
            _credentialed(_credential(secretRef={"name": "t"})),
            "spec.toolCredentials[0].secretRef.key",
            "Field required",
        ),
        (
            _credentialed(_credential(header="Bad Header")),
            "spec.toolCredentials[0].header",
            "not an HTTP header name",
        ),
        (
            _credentialed(_credential(header="Mcp-Session-Id")),
            "spec.toolCredentials[0].header",
            "set by the MCP and A2A clients themselves",
        ),
        (
            _credentialed(_credential(scheme="Bear er")),
            "spec.toolCredentials[0].scheme",
            "not an HTTP authentication scheme",
        ),
        (
            _credentialed(_credential(value="literal-token")),
            "spec.toolCredentials[0].value",
            "Extra inputs are not permitted",
        ),
    ],
)
def test_bad_tool_credentials_name_the_field(spec: dict[str, Any], field: str, says: str) -> None:
    with pytest.raises(errors.InvalidArgument) as caught:
        agentspec.parse(spec)
    assert caught.value.field == field
    assert says in caught.value.message
    assert "literal-token" not in caught.value.message
