"""The executor Deployment and Service rendered for an Agent."""

from __future__ import annotations

from typing import Any

import pytest

from aion.core import agentspec
from aion.operator import render, settings

OWNER = render.Owner(name="chat", uid="0b7c-uid")


def _deployment(
    data: dict[str, Any], *, pool: str = "a100", env: dict[str, str] | None = None
) -> dict[str, Any]:
    return render.executor_deployment(
        "chat",
        "team-a",
        agentspec.parse(data),
        pool_label="aion.dev/node-pool",
        pool=pool,
        image="aion-executor:1",
        owner=OWNER,
        env=env,
    )


def _container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return dict(containers[0])


def _env(deployment: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in _container(deployment)["env"] if "value" in e}


def _match_expressions(deployment: dict[str, Any]) -> list[dict[str, Any]]:
    affinity = deployment["spec"]["template"]["spec"]["affinity"]["nodeAffinity"]
    terms = affinity["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert len(terms) == 1
    return list(terms[0]["matchExpressions"])


def test_required_affinity_to_the_pool_and_gpu_kind(gpu_spec: dict[str, Any]) -> None:
    assert _match_expressions(_deployment(gpu_spec)) == [
        {"key": "aion.dev/node-pool", "operator": "In", "values": ["a100"]},
        {"key": "nvidia.com/gpu.product", "operator": "In", "values": ["NVIDIA-A100-SXM4-80GB"]},
        {"key": "nvidia.com/gpu.memory", "operator": "Gt", "values": ["81919"]},
    ]


def test_cpu_agent_is_pinned_to_its_pool_only() -> None:
    d = _deployment({"model": {"name": "m"}, "gpu": {"count": 0}}, pool="cpu")
    assert _match_expressions(d) == [
        {"key": "aion.dev/node-pool", "operator": "In", "values": ["cpu"]}
    ]


@pytest.mark.parametrize("count", [0, 1, 4])
def test_gpu_toleration_and_limit_iff_gpus(count: int) -> None:
    d = _deployment({"model": {"name": "m"}, "gpu": {"count": count}})
    pod = d["spec"]["template"]["spec"]
    limits = _container(d)["resources"]["limits"]
    if count:
        assert pod["tolerations"] == [
            {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
        ]
        assert limits["nvidia.com/gpu"] == str(count)
        assert _env(d)["AION_EXECUTOR_DEVICE"] == "cuda"
    else:
        assert "tolerations" not in pod
        assert "nvidia.com/gpu" not in limits
        assert _env(d)["AION_EXECUTOR_DEVICE"] == "cpu"


def test_resources_and_replicas(gpu_spec: dict[str, Any]) -> None:
    d = _deployment(gpu_spec)
    assert _container(d)["resources"] == {
        "requests": {"cpu": "4", "memory": "32Gi"},
        "limits": {"memory": "32Gi", "nvidia.com/gpu": "2"},
    }
    assert d["spec"]["replicas"] == 2


def test_env_carries_model_address_and_platform_settings(gpu_spec: dict[str, Any]) -> None:
    env = _env(_deployment(gpu_spec, env={"AION_EXECUTOR_OTLP_ENDPOINT": "http://otel:4317"}))
    assert env["AION_EXECUTOR_MODEL_NAME"] == "llama-3-8b-instruct"
    assert env["AION_EXECUTOR_MODEL_SOURCE"] == "https://models.test/llama.gguf"
    assert env["AION_EXECUTOR_MODEL_TASK"] == "generate"
    assert env["AION_EXECUTOR_HOST"] == "0.0.0.0"
    assert env["AION_EXECUTOR_PORT"] == "50055"
    assert env["AION_EXECUTOR_OTLP_ENDPOINT"] == "http://otel:4317"
    assert (
        float(env["AION_EXECUTOR_GRACE_S"]) + float(env["AION_EXECUTOR_DRAIN_DELAY_S"])
        < (_deployment(gpu_spec)["spec"]["template"]["spec"]["terminationGracePeriodSeconds"])
    )


def test_grpc_probes_on_the_executor_health_port() -> None:
    c = _container(_deployment({"model": {"name": "m"}}))
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["grpc"] == {"port": 51055}
    assert {"name": "grpc", "containerPort": 50055, "protocol": "TCP"} in c["ports"]


def test_labels_owner_and_selector() -> None:
    d = _deployment({"model": {"name": "m"}})
    meta = d["metadata"]
    assert meta["name"] == "aion-executor-chat"
    assert meta["namespace"] == "team-a"
    assert meta["ownerReferences"] == [
        {
            "apiVersion": "aion.dev/v1alpha1",
            "kind": "Agent",
            "name": "chat",
            "uid": "0b7c-uid",
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]
    assert meta["labels"]["app.kubernetes.io/name"] == "aion-executor"
    assert meta["labels"]["app.kubernetes.io/instance"] == "chat"
    assert meta["labels"]["app.kubernetes.io/part-of"] == "aion"
    assert meta["labels"]["app.kubernetes.io/managed-by"] == "aion-operator"
    selector = d["spec"]["selector"]["matchLabels"]
    template_labels = d["spec"]["template"]["metadata"]["labels"]
    assert selector.items() <= template_labels.items()


def test_runs_as_non_root() -> None:
    pod = _deployment({"model": {"name": "m"}})["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001


def test_service_selects_the_executor_pods() -> None:
    svc = render.executor_service("chat", "team-a", owner=OWNER)
    d = _deployment({"model": {"name": "m"}})
    assert svc["metadata"]["name"] == d["metadata"]["name"]
    assert svc["metadata"]["ownerReferences"] == d["metadata"]["ownerReferences"]
    assert svc["spec"]["selector"] == d["spec"]["selector"]["matchLabels"]
    assert svc["spec"]["ports"] == [
        {
            "name": "grpc",
            "port": 50055,
            "targetPort": "grpc",
            "protocol": "TCP",
            "appProtocol": "grpc",
        },
        {
            "name": "http",
            "port": 8000,
            "targetPort": "http",
            "protocol": "TCP",
            "appProtocol": "http",
        },
    ]
    container = d["spec"]["template"]["spec"]["containers"][0]
    assert {p["name"] for p in container["ports"]} == {"grpc", "http", "metrics", "health"}


def test_long_agent_names_stay_valid_and_distinct() -> None:
    a = render.executor_name("a" * 70 + ".x")
    b = render.executor_name("a" * 70 + ".y")
    assert a != b
    assert len(a) <= 63
    assert len(b) <= 63
    assert "." not in a
    assert len(render.labels("a" * 100)["aion.dev/agent"]) <= 63


def _tls_deployment(version: str | None) -> dict[str, Any]:
    return render.executor_deployment(
        "chat",
        "team-a",
        agentspec.parse({"model": {"name": "m"}}),
        pool_label="p",
        pool="cpu",
        image="aion-executor:1",
        owner=OWNER,
        tls_version=version,
    )


def test_executor_mounts_its_certificate_and_reads_its_token_from_secrets() -> None:
    d = _tls_deployment("2027-12-02T17:00:00+00:00")
    pod = d["spec"]["template"]["spec"]
    container = _container(d)
    env = {e["name"]: e for e in container["env"]}
    assert {
        k: env[k]["value"] for k in ("AION_TLS_CA_FILE", "AION_TLS_CERT_FILE", "AION_TLS_KEY_FILE")
    } == {
        "AION_TLS_CA_FILE": "/etc/aion/tls/ca.crt",
        "AION_TLS_CERT_FILE": "/etc/aion/tls/tls.crt",
        "AION_TLS_KEY_FILE": "/etc/aion/tls/tls.key",
    }
    assert env["AION_EXECUTOR_HTTP_TOKEN"]["valueFrom"] == {
        "secretKeyRef": {"name": "aion-executor-http", "key": "token"}
    }
    # Load reports name the pod by the IP the agent service dials (agent's load.py).
    assert env["AION_EXECUTOR_INSTANCE_ID"]["valueFrom"] == {
        "fieldRef": {"fieldPath": "status.podIP"}
    }
    assert {"name": "tls", "mountPath": "/etc/aion/tls", "readOnly": True} in container[
        "volumeMounts"
    ]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["tls"]["secret"] == {"secretName": "aion-executor-tls", "defaultMode": 0o440}
    # A renewed certificate changes the pod template, which rolls the pods.
    annotations = d["spec"]["template"]["metadata"]["annotations"]
    assert annotations["aion.dev/tls-serial"] == "2027-12-02T17:00:00+00:00"


def test_without_a_ca_the_executor_has_no_certificate_but_still_its_token() -> None:
    d = _tls_deployment(None)
    container = _container(d)
    names = {e["name"] for e in container["env"]}
    assert not {n for n in names if n.startswith("AION_TLS_")}
    assert "AION_EXECUTOR_HTTP_TOKEN" in names
    assert [m["name"] for m in container["volumeMounts"]] == ["tmp"]
    assert "aion.dev/tls-serial" not in d["spec"]["template"]["metadata"]["annotations"]


def test_probes_use_the_plaintext_health_port_and_the_pod_is_locked_down() -> None:
    d = _tls_deployment("v")
    container = _container(d)
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"] == {"port": render.HEALTH_PORT}, probe
    assert render.HEALTH_PORT == 51055
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["AION_EXECUTOR_HEALTH_PORT"] == "51055"
    assert {"name": "health", "containerPort": 51055, "protocol": "TCP"} in container["ports"]
    pod = d["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]
    # The health port is a container port only: the Service offers gRPC and HTTP.
    service = render.executor_service("chat", "team-a", owner=OWNER)
    assert [p["port"] for p in service["spec"]["ports"]] == [50055, 8000]


def test_executor_network_policy_admits_only_the_platforms_agent_and_knowledge_pods() -> None:
    policy = render.executor_network_policy(
        "chat", "team-a", owner=OWNER, platform_namespace="aion"
    )
    assert policy["metadata"]["namespace"] == "team-a"
    assert policy["metadata"]["ownerReferences"] == [OWNER.reference()]
    assert policy["spec"]["podSelector"] == {"matchLabels": render.selector("chat")}
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    calls, open_ports = policy["spec"]["ingress"]
    [peer] = calls["from"]
    assert peer["namespaceSelector"] == {"matchLabels": {"kubernetes.io/metadata.name": "aion"}}
    assert peer["podSelector"]["matchExpressions"] == [
        {"key": "app.kubernetes.io/component", "operator": "In", "values": ["agent", "knowledge"]}
    ]
    assert [p["port"] for p in calls["ports"]] == [50055, 8000]
    assert "from" not in open_ports
    assert [p["port"] for p in open_ports["ports"]] == [51055, 9090]


def _kafka(**values: Any) -> settings.ExecutorKafka:
    return settings.ExecutorKafka.model_validate(values)


def test_executors_publish_to_kafka_with_the_platforms_sasl_and_tls_from_secrets() -> None:
    kafka = _kafka(
        securityProtocol="SASL_SSL",
        sasl={"mechanism": "SCRAM-SHA-256", "existingSecret": "kafka-user"},
        tls={"existingSecret": "kafka-ca", "clientCertificate": True},
    )
    deployment = render.executor_deployment(
        "chat",
        "team-a",
        agentspec.parse({"model": {"name": "m"}}),
        pool_label="p",
        pool="cpu",
        image="aion-executor:1",
        owner=OWNER,
        kafka=kafka,
    )
    container = _container(deployment)
    env = _env(deployment)
    assert env["AION_EXECUTOR_KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
    assert env["AION_EXECUTOR_KAFKA_SASL_MECHANISM"] == "SCRAM-SHA-256"
    assert env["AION_EXECUTOR_KAFKA_SSL_CAFILE"] == f"{render.KAFKA_TLS_DIR}/ca.crt"
    assert env["AION_EXECUTOR_KAFKA_SSL_CERTFILE"] == f"{render.KAFKA_TLS_DIR}/tls.crt"
    assert env["AION_EXECUTOR_KAFKA_SSL_KEYFILE"] == f"{render.KAFKA_TLS_DIR}/tls.key"
    # Credentials are Secret references, never values in the Deployment.
    refs = {
        e["name"]: e["valueFrom"]["secretKeyRef"]
        for e in container["env"]
        if "secretKeyRef" in e.get("valueFrom", {})
    }
    assert refs["AION_EXECUTOR_KAFKA_SASL_USERNAME"] == {"name": "kafka-user", "key": "username"}
    assert refs["AION_EXECUTOR_KAFKA_SASL_PASSWORD"] == {"name": "kafka-user", "key": "password"}
    assert {"name": "kafka-tls", "mountPath": render.KAFKA_TLS_DIR, "readOnly": True} in (
        container["volumeMounts"]
    )
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert volumes["kafka-tls"]["secret"]["secretName"] == "kafka-ca"


def test_plaintext_kafka_and_tls_without_a_secret_mount_nothing() -> None:
    for kafka in (_kafka(), _kafka(securityProtocol="SSL")):
        deployment = render.executor_deployment(
            "chat",
            "team-a",
            agentspec.parse({"model": {"name": "m"}}),
            pool_label="p",
            pool="cpu",
            image="aion-executor:1",
            owner=OWNER,
            kafka=kafka,
        )
        env = _env(deployment)
        assert env["AION_EXECUTOR_KAFKA_SECURITY_PROTOCOL"] == kafka.security_protocol
        assert "AION_EXECUTOR_KAFKA_SSL_CAFILE" not in env  # SSL: the system's CAs
        assert "kafka-tls" not in {
            v["name"] for v in deployment["spec"]["template"]["spec"]["volumes"]
        }


def test_placing_an_agent_renders_the_operators_kafka_security(
    cfg: settings.AionOperatorSettings,
) -> None:
    kafka = _kafka(securityProtocol="SASL_PLAINTEXT", sasl={"existingSecret": "kafka-user"})
    with_kafka = cfg.model_copy(update={"kafka_bootstrap": "kafka:9092", "executor_kafka": kafka})
    env = render.executor_env(with_kafka)
    assert env["AION_EXECUTOR_KAFKA_BOOTSTRAP"] == "kafka:9092"
    without = render.executor_env(cfg)
    assert "AION_EXECUTOR_KAFKA_BOOTSTRAP" not in without
