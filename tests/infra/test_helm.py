"""The chart passes Helm's own checks, with Helm built from its Go module.

Helm validates the merged values against charts/aion/values.schema.json on lint,
template and install; these tests check that the defaults and every setting the
templates read pass, and that wrong types, out-of-range numbers, unknown enum
values and misspelt keys are refused with a message naming the field.
"""

from __future__ import annotations

import hashlib
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
        assert _container(deployment)["image"] == f"localhost:5000/aion/{service}:0.1.0"
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
        "policy": {"local_usd_per_1k_tokens": 0.01, "tenants": {"acme": {"max_privacy": "hybrid"}}},
    },
    "provider": {
        "name": "openai",
        "baseUrl": "https://api.example.com/v1",
        "model": "gpt-test",
        "usdPer1kTokens": 0.5,
        "apiKey": {"existingSecret": "provider-key", "key": "token", "value": ""},
    },
    "tests": {"agent": "demo", "input": "Hi.", "maxTokens": 8, "timeoutSeconds": 120},
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
        "replicas": 3,
        "qdrant": {
            "url": "http://qdrant.qdrant:6333",
            "apiKeySecret": "qdrant-key",
            "apiKeyKey": "key",
            "collectionPrefix": "prod",
        },
        "postgres": {"existingSecret": "knowledge-db", "dsnKey": "url"},
        "minio": {
            "endpoint": "minio.storage:9000",
            "bucket": "prod-knowledge",
            "secure": True,
            "existingSecret": "knowledge-s3",
            "accessKeyKey": "id",
            "secretKeyKey": "secret",
        },
        "executorTarget": "embedder.ml:50055",
        "persistence": {
            "enabled": True,
            "existingClaim": "",
            "storageClass": "fast",
            "size": "1Gi",
        },
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
    "tls": {"existingCASecret": "", "caDays": 1000, "certDays": 90, "renewBeforeDays": 10},
    "networkPolicy": {
        "enabled": True,
        "metricsFrom": [
            {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
        ],
    },
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
    # Every existingSecret set: the chart makes only the certificates' Secrets.
    assert not [d for d in docs if d["kind"] == "Secret" and d["type"] != "kubernetes.io/tls"]
    gw_service = _find(docs, "Service", "ai-gateway")
    assert gw_service["spec"]["type"] == "LoadBalancer"
    assert gw_service["metadata"]["annotations"] == gw_values["service"]["annotations"]

    router_service = _find(docs, "Service", "ai-router")
    assert router_service["spec"]["type"] == "NodePort"
    assert router_service["metadata"]["annotations"] == {"example.com/team": "routing"}
    policy = _find(docs, "ConfigMap", "ai-router-policy")["data"]["policy.yaml"]
    assert {k: v for k, v in yaml.safe_load(policy).items() if k != "provider"} == (
        FULL_VALUES["router"]["policy"]
    )

    agent_deployment = _find(docs, "Deployment", "ai-agent")
    assert agent_deployment["spec"]["replicas"] == 5
    agent_env = _env(agent_deployment)
    assert agent_env["AION_AGENT_POSTGRES_DSN"] == {
        "secretKeyRef": {"name": "agent-db", "key": "url"}
    }
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
    knowledge = _find(docs, "Deployment", "ai-knowledge")
    knowledge_env = _env(knowledge)
    assert knowledge["spec"]["replicas"] == 3
    assert "strategy" not in knowledge["spec"]  # a Qdrant server: rolling updates
    assert knowledge_env["AION_KNOWLEDGE_EXECUTOR_TARGET"] == "embedder.ml:50055"
    assert knowledge_env["AION_KNOWLEDGE_EMBEDDING_MODEL"] == "bge-small-en"
    assert knowledge_env["AION_KNOWLEDGE_QDRANT_URL"] == "http://qdrant.qdrant:6333"
    assert knowledge_env["AION_KNOWLEDGE_QDRANT_API_KEY"] == {
        "secretKeyRef": {"name": "qdrant-key", "key": "key"}
    }
    assert knowledge_env["AION_KNOWLEDGE_QDRANT_COLLECTION_PREFIX"] == "prod"
    assert "AION_KNOWLEDGE_QDRANT_PATH" not in knowledge_env
    assert not [d for d in docs if d["kind"] == "PersistentVolumeClaim"], "a server: no volume"
    assert knowledge_env["AION_KNOWLEDGE_POSTGRES_DSN"] == {
        "secretKeyRef": {"name": "knowledge-db", "key": "url"}
    }
    assert knowledge_env["AION_KNOWLEDGE_MINIO_ENDPOINT"] == "minio.storage:9000"
    assert knowledge_env["AION_KNOWLEDGE_MINIO_BUCKET"] == "prod-knowledge"
    assert knowledge_env["AION_KNOWLEDGE_MINIO_SECURE"] == "true"
    assert knowledge_env["AION_KNOWLEDGE_MINIO_SECRET_KEY"] == {
        "secretKeyRef": {"name": "knowledge-s3", "key": "secret"}
    }
    assert (
        knowledge_env["AION_KNOWLEDGE_KAFKA_BOOTSTRAP"] == (agent_env["AION_AGENT_KAFKA_BOOTSTRAP"])
    )

    assert agent_env["AION_AGENT_PROVIDER_BASE_URL"] == "https://api.example.com/v1"
    assert agent_env["AION_AGENT_PROVIDER_MODEL"] == "gpt-test"
    assert agent_env["AION_AGENT_PROVIDER_COST_PER_1K_TOKENS"] == "0.5"
    assert agent_env["AION_AGENT_PROVIDER_API_KEY"] == {
        "secretKeyRef": {"name": "provider-key", "key": "token"}
    }
    assert yaml.safe_load(policy)["provider"] == {
        "name": "openai",
        "base_url": "https://api.example.com/v1",
        "model": "gpt-test",
        "usd_per_1k_tokens": 0.5,
    }

    test_pod = _find(docs, "Pod", "ai-test-stream")
    test_env = {
        e["name"]: e.get("value", e.get("valueFrom"))
        for e in test_pod["spec"]["containers"][0]["env"]
    }
    assert test_env["AION_TEST_GATEWAY"] == f"ai-gateway.{NAMESPACE}.svc:443"
    assert (test_env["AION_TEST_AGENT"], test_env["AION_TEST_MAX_TOKENS"]) == ("demo", "8")
    assert test_env["AION_TEST_API_KEYS"] == {
        "secretKeyRef": {"name": "gateway-auth", "key": "keys.json", "optional": True}
    }
    assert test_pod["spec"]["nodeSelector"] == gw_values["nodeSelector"]

    operator_env = _env(_find(docs, "Deployment", "ai-operator"))
    assert operator_env["AION_OPERATOR_NAMESPACES"] == "team-a,team-b"
    assert operator_env["AION_OPERATOR_UNSCHEDULABLE_AFTER_S"] == "30"
    assert (
        operator_env["AION_OPERATOR_KAFKA_BOOTSTRAP"]
        == (_env(_find(docs, "Deployment", "ai-agent"))["AION_AGENT_KAFKA_BOOTSTRAP"])
    )
    assert operator_env["AION_OPERATOR_LEASE_DURATION_S"] == "10"
    assert operator_env["AION_OPERATOR_LEASE_NAME"] == "ai-operator"
    assert operator_env["AION_OPERATOR_LEASE_NAMESPACE"] == {
        "fieldRef": {"fieldPath": "metadata.namespace"}
    }
    assert _find(docs, "Deployment", "ai-operator")["spec"]["replicas"] == 3
    assert operator_env["AION_OPERATOR_LIVENESS_PORT"] == "8081"
    assert operator_env["AION_OPERATOR_EXECUTOR_IMAGE"] == "registry.example/aion-executor:7"
    # The executors get agent.kafka's security, as the agent service does.
    from aion.operator.settings import ExecutorKafka

    kafka = ExecutorKafka.model_validate_json(operator_env["AION_OPERATOR_EXECUTOR_KAFKA"])
    assert kafka.security_protocol == "PLAINTEXT"
    assert kafka.sasl.password_key == "password"


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
        "--set",
        "knowledge.executorTarget=embedder.ml:50055",
    )
    deployments = {d["metadata"]["name"] for d in docs if d["kind"] == "Deployment"}
    assert deployments == {f"{RELEASE}-{s}" for s in SERVICES if s != "operator"}
    assert not [d for d in docs if d["kind"] in ("Agent", "ClusterRole", "ServiceAccount")]
    env = _env(_find(docs, "Deployment", f"{RELEASE}-knowledge"))
    assert env["AION_KNOWLEDGE_EXECUTOR_TARGET"] == "embedder.ml:50055"
    assert "AION_KNOWLEDGE_EMBEDDING_MODEL" not in env
    proc = _run(
        helm,
        helm_env,
        "template",
        RELEASE,
        str(CHART),
        "--set",
        "knowledge.embeddingAgent.enabled=false",
    )
    assert proc.returncode != 0
    assert "knowledge.executorTarget is required when knowledge.embeddingAgent" in proc.stderr


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
    (
        ["--set", "router.policy.provider.name=x"],
        ["at '/router/policy': additional properties 'provider'"],
    ),
    (
        ["--set", "router.policy.tenants.acme.max_privacy=public"],
        ["'/router/policy/tenants/acme/max_privacy'", "one of 'local-only'"],
    ),
    (["--set", "knowledge.replicas=2"], ["'/knowledge/replicas'", "maximum"]),
    (["--set", "knowledge.qdrant.url=qdrant:6333"], ["'/knowledge/qdrant/url'", "does not match"]),
    (["--set", "knowledge.persistence.size=lots"], ["'/knowledge/persistence/size'"]),
    (["--set", "provider.baseUrl=api.example.com"], ["'/provider/baseUrl'", "does not match"]),
    (["--set", "provider.apiKey.secret=x"], ["at '/provider/apiKey': additional properties"]),
    (["--set", "tests.maxTokens=0"], ["'/tests/maxTokens'", "minimum"]),
    (["--set", "operator.enabled=yes"], ["'/operator/enabled'", "want boolean"]),
    (["--set", "tls.certDays=0"], ["'/tls/certDays'", "minimum"]),
    (["--set", "tls.existingCA=mine"], ["at '/tls': additional properties 'existingCA'"]),
    (["--set", "networkPolicy.enabled=yes"], ["'/networkPolicy/enabled'", "want boolean"]),
    (["--set", "agent.healthPort=0"], ["'/agent/healthPort'", "minimum"]),
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
    "router/policy",
    "provider",
    "provider/apiKey",
    "tests",
    "knowledge/embeddingAgent",
    "knowledge/qdrant",
    "knowledge/persistence",
    "knowledge/postgres",
    "knowledge/minio",
    "tls",
    "networkPolicy",
]
# Maps the chart hands to Kubernetes as they are.
OPEN = [f"{s}/{key}" for s in SERVICES for key in ("resources", "nodeSelector", "affinity")]
OPEN += ["knowledge/embeddingAgent/placement"]


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


def test_without_a_qdrant_url_the_index_is_on_a_claim_of_one_replica(
    helm: Path, helm_env: dict[str, str]
) -> None:
    docs = _template(helm, helm_env, "--set", "knowledge.persistence.storageClass=standard")
    knowledge = _find(docs, "Deployment", f"{RELEASE}-knowledge")
    assert knowledge["spec"]["replicas"] == 1
    assert knowledge["spec"]["strategy"] == {"type": "Recreate"}
    env = _env(knowledge)
    assert env["AION_KNOWLEDGE_QDRANT_PATH"] == "/var/lib/aion/knowledge"
    assert "AION_KNOWLEDGE_QDRANT_URL" not in env
    assert {"name": "index", "mountPath": "/var/lib/aion/knowledge"} in _container(knowledge)[
        "volumeMounts"
    ]
    volumes = {v["name"]: v for v in knowledge["spec"]["template"]["spec"]["volumes"]}
    claim = _find(docs, "PersistentVolumeClaim", f"{RELEASE}-knowledge-index")
    assert volumes["index"]["persistentVolumeClaim"] == {"claimName": f"{RELEASE}-knowledge-index"}
    assert claim["spec"]["storageClassName"] == "standard"
    assert claim["spec"]["resources"]["requests"]["storage"] == "5Gi"

    mine = _template(helm, helm_env, "--set", "knowledge.persistence.existingClaim=my-index")
    assert not [d for d in mine if d["kind"] == "PersistentVolumeClaim"]
    volumes = {
        v["name"]: v
        for v in _find(mine, "Deployment", f"{RELEASE}-knowledge")["spec"]["template"]["spec"][
            "volumes"
        ]
    }
    assert volumes["index"]["persistentVolumeClaim"] == {"claimName": "my-index"}

    scratch = _template(helm, helm_env, "--set", "knowledge.persistence.enabled=false")
    assert not [d for d in scratch if d["kind"] == "PersistentVolumeClaim"]
    volumes = {
        v["name"]: v
        for v in _find(scratch, "Deployment", f"{RELEASE}-knowledge")["spec"]["template"]["spec"][
            "volumes"
        ]
    }
    assert volumes["index"] == {"name": "index", "emptyDir": {}}


def test_a_provider_with_its_key_in_values_gets_a_secret_and_the_router_knows_it(
    helm: Path, helm_env: dict[str, str]
) -> None:
    docs = _template(
        helm,
        helm_env,
        "--set",
        "provider.baseUrl=https://api.example.com/v1",
        "--set",
        "provider.apiKey.value=sk-test",
    )
    secret = _find(docs, "Secret", f"{RELEASE}-agent-provider")
    assert secret["stringData"] == {"api-key": "sk-test"}
    env = _env(_find(docs, "Deployment", f"{RELEASE}-agent"))
    assert env["AION_AGENT_PROVIDER_API_KEY"] == {
        "secretKeyRef": {"name": f"{RELEASE}-agent-provider", "key": "api-key"}
    }
    assert env["AION_AGENT_PROVIDER_MODEL"] == "gpt-4o-mini"
    policy = yaml.safe_load(
        _find(docs, "ConfigMap", f"{RELEASE}-router-policy")["data"]["policy.yaml"]
    )
    assert policy["provider"]["base_url"] == "https://api.example.com/v1"
    assert policy["tenants"] == {}

    keyless = _template(helm, helm_env, "--set", "provider.baseUrl=http://vllm.ml:8000/v1")
    assert not [d for d in keyless if d["kind"] == "Secret" and "provider" in d["metadata"]["name"]]
    keyless_env = _env(_find(keyless, "Deployment", f"{RELEASE}-agent"))
    assert "AION_AGENT_PROVIDER_API_KEY" not in keyless_env

    none = _template(helm, helm_env)
    assert not [k for k in _env(_find(none, "Deployment", f"{RELEASE}-agent")) if "PROVIDER" in k]
    assert "provider" not in yaml.safe_load(
        _find(none, "ConfigMap", f"{RELEASE}-router-policy")["data"]["policy.yaml"]
    )


def _settings_classes() -> dict[str, Any]:
    from aion.agent.settings import AgentSettings
    from aion.gateway.settings import GatewaySettings
    from aion.knowledge.settings import KnowledgeSettings
    from aion.operator.settings import AionOperatorSettings
    from aion.router.settings import RouterSettings

    return {
        "AION_GATEWAY_": GatewaySettings,
        "AION_ROUTER_": RouterSettings,
        "AION_AGENT_": AgentSettings,
        "AION_KNOWLEDGE_": KnowledgeSettings,
        "AION_OPERATOR_": AionOperatorSettings,
    }


@pytest.mark.parametrize("values", ["defaults", "full", "local"])
def test_every_variable_the_chart_sets_is_read_by_its_service(
    helm: Path, helm_env: dict[str, str], full_values: Path, values: str
) -> None:
    from aion.core import settings

    flags = {
        "defaults": [],
        "full": ["--values", str(full_values)],
        "local": ["--values", str(LOCAL_VALUES)],
    }[values]
    classes = _settings_classes()
    checked = 0
    for deployment in (d for d in _template(helm, helm_env, *flags) if d["kind"] == "Deployment"):
        env = {n: "x" for n in _env(deployment) if n.startswith("AION_")}
        [prefix] = {p for p in classes for n in env if n.startswith(p)}
        assert settings.unknown_variables(classes[prefix], env) == [], deployment["metadata"]
        checked += 1
    assert checked == 5


LOCAL_VALUES = REPO / "deploy" / "local" / "values-local.yaml"


def test_the_local_values_point_at_the_host_and_run_on_the_real_nodes(
    helm: Path, helm_env: dict[str, str]
) -> None:
    _helm(helm, helm_env, "lint", str(CHART), "--strict", "--values", str(LOCAL_VALUES))
    docs = _template(helm, helm_env, "--values", str(LOCAL_VALUES))
    local: Doc = yaml.safe_load(LOCAL_VALUES.read_text())
    for deployment in (d for d in docs if d["kind"] == "Deployment"):
        pod = deployment["spec"]["template"]["spec"]
        assert pod["nodeSelector"] == local["gateway"]["nodeSelector"], deployment["metadata"]
    agent = _env(_find(docs, "Deployment", f"{RELEASE}-agent"))
    assert agent["AION_AGENT_KAFKA_BOOTSTRAP"] == local["agent"]["kafka"]["bootstrap"]
    assert _find(docs, "Service", f"{RELEASE}-gateway")["spec"]["type"] == "NodePort"


def test_helm_test_streams_through_the_gateway_with_the_charts_script(
    helm: Path, helm_env: dict[str, str]
) -> None:
    docs = _template(helm, helm_env)
    pod = _find(docs, "Pod", f"{RELEASE}-test-stream")
    script = _find(docs, "ConfigMap", f"{RELEASE}-test-stream")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert script["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert int(script["metadata"]["annotations"]["helm.sh/hook-weight"]) < 0  # first
    assert script["data"]["stream_check.py"] == (CHART / "files" / "stream_check.py").read_text()
    container = pod["spec"]["containers"][0]
    assert container["image"] == "localhost:5000/aion/gateway:0.1.0"  # it has aion.api
    assert container["command"] == ["python", "/etc/aion/test/stream_check.py"]
    assert pod["spec"]["restartPolicy"] == "Never"
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["AION_TEST_GATEWAY"] == f"{RELEASE}-gateway.{NAMESPACE}.svc:50051"


# Internal mTLS and NetworkPolicies (issue 13). What `helm upgrade` keeps (the CA and
# certificates looked up in the cluster) is checked on the real cluster, in
# tests/cluster/test_tls_chart.py: `helm template` never looks up.
INTERNAL = {"router": 51052, "agent": 51053, "knowledge": 51054}


def _secret_pem(secret: Doc, key: str) -> bytes:
    import base64

    return base64.b64decode(secret["data"][key])


def test_every_component_has_a_certificate_for_its_identity_from_the_install_ca(
    helm: Path, helm_env: dict[str, str]
) -> None:
    from cryptography import x509

    docs = _template(helm, helm_env)
    ca_secret = _find(docs, "Secret", f"{RELEASE}-tls-ca")
    assert ca_secret["type"] == "kubernetes.io/tls"
    ca = x509.load_pem_x509_certificate(_secret_pem(ca_secret, "tls.crt"))
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    for service in SERVICES:
        secret = _find(docs, "Secret", f"{RELEASE}-{service}-tls")
        assert _secret_pem(secret, "ca.crt") == _secret_pem(ca_secret, "tls.crt")
        cert = x509.load_pem_x509_certificate(_secret_pem(secret, "tls.crt"))
        cert.verify_directly_issued_by(ca)
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert names.get_values_for_type(x509.DNSName) == [f"{service}.aion.internal"]
        assert int(secret["metadata"]["annotations"]["aion.dev/not-after"]) > 0
        deployment = _find(docs, "Deployment", f"{RELEASE}-{service}")
        pod = deployment["spec"]["template"]
        env = _env(deployment)
        assert {
            k: env[k] for k in ("AION_TLS_CA_FILE", "AION_TLS_CERT_FILE", "AION_TLS_KEY_FILE")
        } == {
            "AION_TLS_CA_FILE": "/etc/aion/tls/ca.crt",
            "AION_TLS_CERT_FILE": "/etc/aion/tls/tls.crt",
            "AION_TLS_KEY_FILE": "/etc/aion/tls/tls.key",
        }
        assert {"name": "tls", "mountPath": "/etc/aion/tls", "readOnly": True} in _container(
            deployment
        )["volumeMounts"]
        volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
        assert volumes["tls"]["secret"]["secretName"] == f"{RELEASE}-{service}-tls"
        # The same certificate as the Secret's: a new one rolls the pods.
        assert (
            pod["metadata"]["annotations"]["checksum/tls"]
            == hashlib.sha256(_secret_pem(secret, "tls.crt")).hexdigest()
        )
    operator = _env(_find(docs, "Deployment", f"{RELEASE}-operator"))
    assert operator["AION_OPERATOR_CA_CERT_FILE"] == "/etc/aion/ca/ca.crt"
    assert operator["AION_OPERATOR_CA_KEY_FILE"] == "/etc/aion/ca/ca.key"
    ca_volume = {
        v["name"]: v
        for v in _find(docs, "Deployment", f"{RELEASE}-operator")["spec"]["template"]["spec"][
            "volumes"
        ]
    }["ca"]
    assert ca_volume["secret"]["secretName"] == f"{RELEASE}-tls-ca"


def test_probes_use_the_health_ports_which_no_service_exposes(
    helm: Path, helm_env: dict[str, str]
) -> None:
    docs = _template(helm, helm_env)
    for service, health in INTERNAL.items():
        deployment = _find(docs, "Deployment", f"{RELEASE}-{service}")
        container = _container(deployment)
        for probe in ("readinessProbe", "livenessProbe"):
            assert container[probe]["grpc"] == {"port": health}, (service, probe)
        assert {"name": "health", "containerPort": health, "protocol": "TCP"} in container["ports"]
        assert _env(deployment)[f"AION_{service.upper()}_HEALTH_PORT"] == str(health)
        ports = [p["port"] for p in _find(docs, "Service", f"{RELEASE}-{service}")["spec"]["ports"]]
        assert health not in ports, service
    # Only the operator calls the Kubernetes API (review L4).
    for service in SERVICES:
        pod = _find(docs, "Deployment", f"{RELEASE}-{service}")["spec"]["template"]["spec"]
        assert pod.get("automountServiceAccountToken", True) is (service == "operator")
    # The gateway's public port is plaintext: its probes stay there.
    gateway = _container(_find(docs, "Deployment", f"{RELEASE}-gateway"))
    assert gateway["readinessProbe"]["grpc"] == {"port": 50051}


def test_an_existing_ca_secret_replaces_the_charts_own(
    helm: Path, helm_env: dict[str, str]
) -> None:
    docs = _template(helm, helm_env, "--set", "tls.existingCASecret=corp-ca")
    assert not [
        d for d in docs if d["kind"] == "Secret" and d["metadata"]["name"].endswith("-tls-ca")
    ]
    volumes = {
        v["name"]: v
        for v in _find(docs, "Deployment", f"{RELEASE}-operator")["spec"]["template"]["spec"][
            "volumes"
        ]
    }
    assert volumes["ca"]["secret"]["secretName"] == "corp-ca"


def _policies(docs: list[Doc]) -> dict[str, Doc]:
    return {
        d["metadata"]["name"].removeprefix(f"{RELEASE}-"): d["spec"]
        for d in docs
        if d["kind"] == "NetworkPolicy"
    }


def _admits(policy: Doc, labels: dict[str, str] | None, port: int) -> bool:
    """Whether a NetworkPolicy's ingress admits a pod of this namespace with ``labels``
    (None: any other source, such as a node or another namespace) on ``port``."""
    for rule in policy["ingress"]:
        if port not in [p["port"] for p in rule.get("ports", [])]:
            continue
        peers = rule.get("from")
        if not peers:
            return True
        for peer in peers:
            if peer.get("namespaceSelector") == {} and "podSelector" not in peer:
                return True
            if labels is not None and "podSelector" in peer and "namespaceSelector" not in peer:
                want = peer["podSelector"].get("matchLabels", {})
                if all(labels.get(k) == v for k, v in want.items()):
                    return True
    return False


def test_network_policies_admit_only_the_callers_of_each_port(
    helm: Path, helm_env: dict[str, str]
) -> None:
    docs = _template(helm, helm_env)
    policies = _policies(docs)
    assert set(policies) == set(SERVICES)
    callers = {
        "router": {"gateway"},
        "agent": {"gateway", "operator"},
        "knowledge": {"gateway", "agent"},
    }
    pods = {
        s: {
            "app.kubernetes.io/name": "aion",
            "app.kubernetes.io/instance": RELEASE,
            "app.kubernetes.io/component": s,
        }
        for s in SERVICES
    }
    pods["stranger"] = {"app": "something-else"}
    for service, policy in policies.items():
        deployment = _find(docs, "Deployment", f"{RELEASE}-{service}")
        assert policy["podSelector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
        assert policy["policyTypes"] == ["Ingress"]
        assert _admits(policy, None, 9090)  # metricsFrom: every namespace by default
        if service in callers:
            port = _container(deployment)["ports"][0]["containerPort"]
            admitted = {p for p, labels in pods.items() if _admits(policy, labels, port)}
            assert admitted == callers[service], service
            assert not _admits(policy, None, port)
            assert _admits(policy, None, INTERNAL[service])  # the kubelet's probes
    assert _admits(policies["gateway"], None, 50051)
    assert _admits(policies["gateway"], None, 8080)
    assert _admits(policies["operator"], None, 8080)  # liveness
    assert not _admits(policies["operator"], None, 50053)

    monitoring = [{"namespaceSelector": {"matchLabels": {"team": "monitoring"}}}]
    narrowed = _policies(
        _template(
            helm, helm_env, "--set-json", f"networkPolicy.metricsFrom={json.dumps(monitoring)}"
        )
    )
    for policy in narrowed.values():
        assert not _admits(policy, None, 9090)
        assert [
            r["from"]
            for r in policy["ingress"]
            if r["ports"] == [{"port": 9090, "protocol": "TCP"}]
        ] == [monitoring]
    off = _template(helm, helm_env, "--set", "networkPolicy.enabled=false")
    assert not _policies(off)
