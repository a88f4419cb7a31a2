"""The chart passes Helm's own checks, with Helm built from its Go module.

Helm validates the merged values against charts/aion/values.schema.json on lint,
template and install; these tests check that the defaults and every setting the
templates read pass, and that wrong types, out-of-range numbers, unknown enum
values and misspelt keys are refused with a message naming the field.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from aion.infra.paths import REPO, versions

pytestmark = pytest.mark.helm

CHART = REPO / "charts" / "aion"
SCHEMA = CHART / "values.schema.json"
RELEASE, NAMESPACE = "aion", "aion"
SERVICES = ("gateway", "router", "agent", "knowledge", "operator")
SCHEMA_ERROR = "values don't meet the specifications of the schema"

Doc = dict[str, Any]


@pytest.fixture(scope="module")
def helm_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """An environment that keeps Helm away from the user's config, cache and repositories."""
    home = tmp_path_factory.mktemp("helm-home")
    env = dict(os.environ)
    for var in ("HELM_CONFIG_HOME", "HELM_CACHE_HOME", "HELM_DATA_HOME"):
        env[var] = str(home / var.lower())
    env.pop("HELM_NAMESPACE", None)
    env.pop("KUBECONFIG", None)
    return env


def _run(helm: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(helm), *args], capture_output=True, text=True, check=False, timeout=120, env=env
    )


def _helm(helm: Path, env: dict[str, str], *args: str) -> str:
    proc = _run(helm, env, *args)
    assert proc.returncode == 0, f"helm {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def _template(helm: Path, env: dict[str, str], *args: str) -> list[Doc]:
    out = _helm(helm, env, "template", RELEASE, str(CHART), "--namespace", NAMESPACE, *args)
    return [d for d in yaml.safe_load_all(out) if d]


def _find(docs: list[Doc], kind: str, name: str) -> Doc:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, (kind, name, sorted((d["kind"], d["metadata"]["name"]) for d in docs))
    return found[0]


def _container(deployment: Doc) -> Doc:
    containers: list[Doc] = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1, containers
    return containers[0]


def _env(deployment: Doc) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in _container(deployment)["env"]}


def test_helm_is_the_pinned_version(helm: Path, helm_env: dict[str, str]) -> None:
    out = _helm(helm, helm_env, "version", "--template", "{{.Version}}")
    assert out.strip() == versions()["HELM_VERSION"]


def test_helm_lint(helm: Path, helm_env: dict[str, str]) -> None:
    out = _helm(helm, helm_env, "lint", str(CHART), "--strict", "--namespace", NAMESPACE)
    assert "1 chart(s) linted, 0 chart(s) failed" in out, out


def test_helm_template_renders_every_service_and_the_crd(
    helm: Path, helm_env: dict[str, str]
) -> None:
    docs = _template(helm, helm_env, "--include-crds")
    deployments = {d["metadata"]["name"] for d in docs if d["kind"] == "Deployment"}
    assert deployments == {f"{RELEASE}-{s}" for s in SERVICES}
    for service in SERVICES:
        deployment = _find(docs, "Deployment", f"{RELEASE}-{service}")
        assert deployment["metadata"]["namespace"] == NAMESPACE
        assert _container(deployment)["image"] == f"aion-{service}:0.1.0"
    for service in ("gateway", "router", "agent", "knowledge"):
        port = _find(docs, "Service", f"{RELEASE}-{service}")["spec"]["ports"][0]["port"]
        assert (
            port
            == _container(_find(docs, "Deployment", f"{RELEASE}-{service}"))["ports"][0][
                "containerPort"
            ]
        )
    crd = _find(docs, "CustomResourceDefinition", "agents.aion.dev")
    assert crd["spec"]["group"] == "aion.dev"
    agent = _find(docs, "Agent", f"{RELEASE}-embeddings")
    assert agent["spec"]["model"] == {"name": "all-minilm-l6-v2", "task": "embed"}
    executor = f"aion-executor-{RELEASE}-embeddings.{NAMESPACE}.svc:50055"
    knowledge = _find(docs, "Deployment", f"{RELEASE}-knowledge")
    assert _env(knowledge)["AION_KNOWLEDGE_EXECUTOR_TARGET"] == executor


def test_helm_template_leaves_out_the_crd_unless_asked(
    helm: Path, helm_env: dict[str, str]
) -> None:
    kinds = {d["kind"] for d in _template(helm, helm_env)}
    assert "CustomResourceDefinition" not in kinds
    assert "Deployment" in kinds


# Every setting the templates read, with the pass-through maps filled in: the schema
# must accept all of it, and it must reach the rendered objects.
FULL_VALUES: Doc = {
    "nameOverride": "",
    "fullnameOverride": "ai",
    "image": {"tag": "1.2.3", "pullPolicy": "Always", "pullSecrets": [{"name": "regcred"}]},
    "logLevel": "DEBUG",
    "otel": {"endpoint": "http://otel-collector.observability:4317"},
    "metrics": {"port": 9191},
    "shutdown": {"terminationGracePeriodSeconds": 30, "graceSeconds": 20, "drainDelaySeconds": 5},
    "gateway": {
        "image": {"repository": "registry.example/aion-gateway", "tag": "gw-1"},
        "replicas": 0,
        "port": 443,
        "service": {
            "type": "LoadBalancer",
            "annotations": {"service.beta.kubernetes.io/aws-load-balancer-type": "nlb"},
        },
        "auth": {
            "existingSecret": "gateway-auth",
            "apiKeysKey": "keys.json",
            "jwtSecretKey": "jwt",
            "apiKeys": "",
            "jwtSecret": "",
        },
        "resources": {
            "requests": {"cpu": 0.5, "memory": "256Mi", "ephemeral-storage": "1Gi"},
            "limits": {"memory": "1Gi"},
            "claims": [{"name": "gpu"}],
        },
        "extraEnv": [
            {"name": "EXTRA", "value": "1"},
            {"name": "FROM_FIELD", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
        ],
        "nodeSelector": {"kubernetes.io/arch": "amd64"},
        "tolerations": [
            {"key": "dedicated", "operator": "Equal", "value": "aion", "effect": "NoSchedule"}
        ],
        "affinity": {
            "podAntiAffinity": {
                "preferredDuringSchedulingIgnoredDuringExecution": [
                    {
                        "weight": 100,
                        "podAffinityTerm": {
                            "topologyKey": "kubernetes.io/hostname",
                            "labelSelector": {"matchLabels": {"a": "b"}},
                        },
                    }
                ]
            }
        },
    },
    "router": {
        "port": 6000,
        "service": {"type": "NodePort", "annotations": {"example.com/team": "routing"}},
        "policy": {"default": {"privacy": "local-only"}, "rules": [{"match": {"tenant": "acme"}}]},
    },
    "agent": {
        "replicas": 5,
        "port": 6001,
        "postgres": {"existingSecret": "agent-db", "dsnKey": "url"},
        "kafka": {"bootstrap": "kafka-0.kafka:9092,kafka-1.kafka:9092", "topicPrefix": "prod."},
        "leaseSeconds": 20,
        "maxConcurrentTasks": 4,
        "maxAttempts": 2,
    },
    "knowledge": {
        "port": 6002,
        "embeddingAgent": {
            "enabled": True,
            "name": "embedder",
            "model": {"name": "bge-small-en", "task": "embed", "source": "hf://BAAI/bge-small-en"},
            "gpu": {"count": 1, "products": ["NVIDIA-L4"], "minMemoryGiB": 16},
            "resources": {"cpu": 2, "memory": "4Gi"},
            "placement": {
                "allowedPools": ["l4", "a10"],
                "preferredPools": ["l4"],
                "maxPricePerGpuHour": 1.5,
            },
            "replicas": {"min": 0, "max": 3},
        },
    },
    "executor": {"image": {"repository": "registry.example/aion-executor", "tag": 7}},
    "operator": {
        "enabled": True,
        "watchNamespaces": ["team-a", "team-b"],
        "replicas": 3,
        "unschedulableAfterSeconds": 30,
        "leaseDurationSeconds": 10,
        "livenessPort": 8081,
    },
}


@pytest.fixture(scope="module")
def full_values(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("values") / "full.yaml"
    path.write_text(yaml.safe_dump(FULL_VALUES))
    return path


def test_helm_lint_accepts_every_setting(
    helm: Path, helm_env: dict[str, str], full_values: Path
) -> None:
    out = _helm(
        helm,
        helm_env,
        "lint",
        str(CHART),
        "--strict",
        "--namespace",
        NAMESPACE,
        "--values",
        str(full_values),
    )
    assert "1 chart(s) linted, 0 chart(s) failed" in out, out


def test_helm_template_passes_every_setting_through(
    helm: Path, helm_env: dict[str, str], full_values: Path
) -> None:
    docs = _template(helm, helm_env, "--values", str(full_values))
    gw_values = FULL_VALUES["gateway"]

    gateway = _find(docs, "Deployment", "ai-gateway")
    pod = gateway["spec"]["template"]["spec"]
    assert gateway["spec"]["replicas"] == 0
    assert _container(gateway)["image"] == "registry.example/aion-gateway:gw-1"
    assert _container(gateway)["imagePullPolicy"] == "Always"
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    assert pod["terminationGracePeriodSeconds"] == 30
    assert _container(gateway)["resources"] == gw_values["resources"]
    for key in ("nodeSelector", "tolerations", "affinity"):
        assert pod[key] == gw_values[key], key
    env = _env(gateway)
    assert env["EXTRA"] == "1"
    assert env["FROM_FIELD"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    assert env["AION_GATEWAY_LOG_LEVEL"] == "DEBUG"
    assert env["AION_GATEWAY_METRICS_PORT"] == "9191"
    assert env["AION_GATEWAY_OTLP_ENDPOINT"] == "http://otel-collector.observability:4317"
    assert env["AION_GATEWAY_ROUTER_TARGET"] == f"ai-router.{NAMESPACE}.svc:6000"
    assert env["AION_GATEWAY_API_KEYS"] == {
        "secretKeyRef": {"name": "gateway-auth", "key": "keys.json", "optional": True}
    }
    assert not [d for d in docs if d["kind"] == "Secret"], "existingSecret set: no Secret"
    gw_service = _find(docs, "Service", "ai-gateway")
    assert gw_service["spec"]["type"] == "LoadBalancer"
    assert gw_service["metadata"]["annotations"] == gw_values["service"]["annotations"]

    router_service = _find(docs, "Service", "ai-router")
    assert router_service["spec"]["type"] == "NodePort"
    assert router_service["metadata"]["annotations"] == {"example.com/team": "routing"}
    policy = _find(docs, "ConfigMap", "ai-router-policy")["data"]["policy.yaml"]
    assert yaml.safe_load(policy) == FULL_VALUES["router"]["policy"]

    agent_deployment = _find(docs, "Deployment", "ai-agent")
    assert agent_deployment["spec"]["replicas"] == 5
    agent_env = _env(agent_deployment)
    assert agent_env["AION_AGENT_POSTGRES_DSN"] == {
        "secretKeyRef": {"name": "agent-db", "key": "url"}}
    assert agent_env["AION_AGENT_KAFKA_BOOTSTRAP"] == "kafka-0.kafka:9092,kafka-1.kafka:9092"
    assert agent_env["AION_AGENT_TOPIC_PREFIX"] == "prod."
    assert agent_env["AION_AGENT_WORKER_ID"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert (agent_env["AION_AGENT_LEASE_S"], agent_env["AION_AGENT_HEARTBEAT_S"]) == ("20", "4")
    assert agent_env["AION_AGENT_MAX_CONCURRENT_TASKS"] == "4"
    assert agent_env["AION_AGENT_MAX_ATTEMPTS"] == "2"
    agent = _find(docs, "Agent", "embedder")
    embedding = FULL_VALUES["knowledge"]["embeddingAgent"]
    for key in ("model", "gpu", "resources", "placement", "replicas"):
        assert agent["spec"][key] == embedding[key], key
    assert (
        _env(_find(docs, "Deployment", "ai-knowledge"))["AION_KNOWLEDGE_EXECUTOR_TARGET"]
        == f"aion-executor-embedder.{NAMESPACE}.svc:50055"
    )

    operator_env = _env(_find(docs, "Deployment", "ai-operator"))
    assert operator_env["AION_OPERATOR_NAMESPACES"] == "team-a,team-b"
    assert operator_env["AION_OPERATOR_UNSCHEDULABLE_AFTER_S"] == "30"
    assert operator_env["AION_OPERATOR_KAFKA_BOOTSTRAP"] == (
        _env(_find(docs, "Deployment", "ai-agent"))["AION_AGENT_KAFKA_BOOTSTRAP"])
    assert operator_env["AION_OPERATOR_LEASE_DURATION_S"] == "10"
    assert operator_env["AION_OPERATOR_LEASE_NAME"] == "ai-operator"
    assert operator_env["AION_OPERATOR_LEASE_NAMESPACE"] == {
        "fieldRef": {"fieldPath": "metadata.namespace"}}
    assert _find(docs, "Deployment", "ai-operator")["spec"]["replicas"] == 3
    assert operator_env["AION_OPERATOR_LIVENESS_PORT"] == "8081"
    assert operator_env["AION_OPERATOR_EXECUTOR_IMAGE"] == "registry.example/aion-executor:7"


def test_helm_template_without_operator_or_embedding_agent(
    helm: Path, helm_env: dict[str, str]
) -> None:
    docs = _template(
        helm,
        helm_env,
        "--set",
        "operator.enabled=false",
        "--set",
        "knowledge.embeddingAgent.enabled=false",
    )
    deployments = {d["metadata"]["name"] for d in docs if d["kind"] == "Deployment"}
    assert deployments == {f"{RELEASE}-{s}" for s in SERVICES if s != "operator"}
    assert not [d for d in docs if d["kind"] in ("Agent", "ClusterRole", "ServiceAccount")]
    assert "AION_KNOWLEDGE_EXECUTOR_TARGET" not in _env(
        _find(docs, "Deployment", f"{RELEASE}-knowledge")
    )


# (helm flags, fragments the error must contain: the field's path and what is wrong)
BAD_VALUES: list[tuple[list[str], list[str]]] = [
    (["--set", "gateway.replicas=lots"], ["'/gateway/replicas'", "got string, want integer"]),
    (["--set", "gatway.replicas=1"], ["at '': additional properties 'gatway' not allowed"]),
    (["--set", "router.replcas=3"], ["at '/router': additional properties 'replcas'"]),
    (
        ["--set", "gateway.auth.existingSecrt=mine"],
        ["at '/gateway/auth': additional properties 'existingSecrt'"],
    ),
    (
        ["--set", "knowledge.embeddingAgent.gpu.cuont=1"],
        ["at '/knowledge/embeddingAgent/gpu': additional properties 'cuont'"],
    ),
    (["--set", "agent.replicas=-1"], ["'/agent/replicas'", "minimum"]),
    (["--set", "agent.postgres.dsn=mysql://x"], ["'/agent/postgres/dsn'", "does not match"]),
    (["--set", "agent.maxAttempts=0"], ["'/agent/maxAttempts'", "minimum"]),
    (["--set-json", "gateway.replicas=1.5"], ["'/gateway/replicas'", "got number, want integer"]),
    (["--set", "gateway.port=70000"], ["'/gateway/port'", "maximum"]),
    (["--set", "metrics.port=0"], ["'/metrics/port'", "minimum"]),
    (["--set", "operator.livenessPort=http"], ["'/operator/livenessPort'", "want integer"]),
    (
        ["--set", "image.pullPolicy=Sometimes"],
        ["'/image/pullPolicy'", "one of 'Always', 'IfNotPresent', 'Never'"],
    ),
    (["--set", "logLevel=TRACE"], ["'/logLevel'", "one of 'DEBUG', 'INFO', 'WARNING', 'ERROR'"]),
    (
        ["--set", "knowledge.embeddingAgent.model.task=classify"],
        ["'/knowledge/embeddingAgent/model/task'", "one of 'generate', 'embed'"],
    ),
    (["--set", "operator.watchNamespaces=team-a"], ["'/operator/watchNamespaces'", "want array"]),
    (
        ["--set-json", "operator.watchNamespaces=[1]"],
        ["'/operator/watchNamespaces/0'", "want string"],
    ),
    (["--set", "gateway.resources=big"], ["'/gateway/resources'", "want object"]),
    (["--set", "router.policy=fast"], ["'/router/policy'", "want object"]),
    (["--set", "operator.enabled=yes"], ["'/operator/enabled'", "want boolean"]),
    (["--set", "gateway.service.type=Ingress"], ["'/gateway/service/type'", "one of 'ClusterIP'"]),
    (
        ["--set-json", 'gateway.extraEnv=[{"value": "x"}]'],
        ["'/gateway/extraEnv/0'", "missing property 'name'"],
    ),
    (
        ["--set", "knowledge.embeddingAgent.name=" + "e" * 50],
        ["'/knowledge/embeddingAgent/name'", "maxLength"],
    ),
]


@pytest.mark.parametrize(
    ("flags", "fragments"), BAD_VALUES, ids=[" ".join(flags) for flags, _ in BAD_VALUES]
)
def test_helm_template_refuses_bad_values(
    helm: Path, helm_env: dict[str, str], flags: list[str], fragments: list[str]
) -> None:
    proc = _run(helm, helm_env, "template", RELEASE, str(CHART), "--namespace", NAMESPACE, *flags)
    assert proc.returncode != 0, f"helm accepted {flags}:\n{proc.stdout[:2000]}"
    assert SCHEMA_ERROR in proc.stderr, proc.stderr
    for fragment in fragments:
        assert fragment in proc.stderr, (fragment, proc.stderr)


def test_helm_lint_refuses_a_misspelt_key(helm: Path, helm_env: dict[str, str]) -> None:
    proc = _run(helm, helm_env, "lint", str(CHART), "--strict", "--set", "gatway.replicas=1")
    assert proc.returncode != 0, proc.stdout
    assert "1 chart(s) failed" in proc.stderr, proc.stderr
    assert "[ERROR] values.yaml: - at '': additional properties 'gatway' not allowed" in (
        proc.stdout
    ), proc.stdout


# Objects whose keys the chart reads one by one: an unknown key there is a typo.
CLOSED = [
    "",
    "image",
    "otel",
    "metrics",
    "shutdown",
    "executor",
    *SERVICES,
    "gateway/service",
    "gateway/auth",
    "knowledge/embeddingAgent",
]
# Maps the chart hands to Kubernetes as they are.
OPEN = [f"{s}/{key}" for s in SERVICES for key in ("resources", "nodeSelector", "affinity")]
OPEN += ["router/policy", "knowledge/embeddingAgent/placement"]


def _resolve(schema: Doc, node: Doc) -> Doc:
    while "$ref" in node:
        ref: str = node["$ref"]
        assert ref.startswith("#/"), ref
        node = schema
        for part in ref[2:].split("/"):
            node = node[part]
    return node


def _at(schema: Doc, path: str) -> Doc:
    node = schema
    for part in filter(None, path.split("/")):
        node = _resolve(schema, node["properties"][part])
    return _resolve(schema, node)


def test_schema_closes_service_blocks_and_opens_pass_through_maps() -> None:
    schema: Doc = json.loads(SCHEMA.read_text())
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"
    for path in CLOSED:
        assert _at(schema, path).get("additionalProperties") is False, path
    for path in OPEN:
        node = _at(schema, path)
        assert node["type"] == "object", path
        assert node.get("additionalProperties", True) is not False, path


def _leaves(values: Doc, prefix: str = "") -> Iterator[str]:
    for key, value in values.items():
        path = f"{prefix}/{key}"
        if isinstance(value, dict) and value:
            yield from _leaves(value, path)
        else:
            yield path


def test_schema_describes_every_default() -> None:
    """Each key of values.yaml has its own entry in the schema (not only an open map's)."""
    schema: Doc = json.loads(SCHEMA.read_text())
    defaults: Doc = yaml.safe_load((CHART / "values.yaml").read_text())
    missing = []
    for path in _leaves(defaults):
        node, seen = schema, ""
        for part in path.split("/")[1:]:
            if seen.lstrip("/") in OPEN:
                break
            props = _resolve(schema, node).get("properties", {})
            if part not in props:
                missing.append(path)
                break
            node, seen = props[part], f"{seen}/{part}"
    assert not missing, missing
