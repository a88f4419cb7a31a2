"""An Agent's executor Deployment and Service, as pure functions of its spec.

The handlers apply what these return; tests call them directly. One executor
Deployment serves one Agent's model on one node pool. Its Service is headless,
so the agent service can balance gRPC calls over the executor pods itself
(``dns:///<service>:50055`` with round_robin) instead of pinning one pod.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping
from typing import Any

from aion.core import agentspec
from aion.operator import conventions
from aion.operator import settings as operator_settings

Manifest = dict[str, Any]

EXECUTOR_PORT = 50055
# The executor's OpenAI-compatible HTTP API (/v1/chat/completions, /v1/embeddings, ...).
HTTP_PORT = 8000
METRICS_PORT = 9090
# Plaintext gRPC health only, for the kubelet's probes: the gRPC port requires mTLS.
HEALTH_PORT = 51055
TLS_DIR = "/etc/aion/tls"
# Where the Kafka TLS Secret is mounted, as the chart mounts it for the agent service.
KAFKA_TLS_DIR = "/etc/aion/kafka-tls"
# The platform's pods that call executors (chart labels), in the operator's namespace.
CALLERS = ("agent", "knowledge")
# Shorter than the pod's termination grace, so the executor drains before SIGKILL.
# A deleted or rolled pod finishes the generations it has started: long answers on a
# busy CPU take tens of seconds, and a stream cut mid-answer fails its task.
TERMINATION_GRACE_S = 75
GRACE_S = 60
DRAIN_DELAY_S = 3
RUN_AS = 10001
# On every executor's Deployment, Service and pods, whichever the Agent.
EXECUTORS: Mapping[str, str] = {"app.kubernetes.io/name": "aion-executor"}
# Which Agent an executor's objects serve (in ``selector``).
INSTANCE = "app.kubernetes.io/instance"


@dataclasses.dataclass(frozen=True)
class Owner:
    """The Agent that owns what is rendered for it; deleting it deletes them."""

    name: str
    uid: str

    def reference(self) -> Manifest:
        """The ownerReferences entry naming this Agent as the controller."""
        return {
            "apiVersion": conventions.API_VERSION,
            "kind": conventions.AGENT_KIND,
            "name": self.name,
            "uid": self.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }


def _bounded(text: str) -> str:
    # Names and label values stop at 63 characters; a hash keeps long ones distinct.
    text = text.replace(".", "-")
    if len(text) <= 63:
        return text
    digest = hashlib.sha256(text.encode()).hexdigest()[:8]
    return f"{text[:54].rstrip('-')}-{digest}"


def executor_name(agent_name: str) -> str:
    """The name of an Agent's executor Deployment and Service (a DNS-1035 label)."""
    return _bounded(f"aion-executor-{agent_name}")


def selector(agent_name: str) -> dict[str, str]:
    """The labels that select an Agent's executor pods (immutable once applied)."""
    return {
        **EXECUTORS,
        INSTANCE: _bounded(agent_name),
    }


def labels(agent_name: str) -> dict[str, str]:
    """The labels on everything rendered for an Agent."""
    return {
        **selector(agent_name),
        "app.kubernetes.io/component": "executor",
        "app.kubernetes.io/part-of": "aion",
        "app.kubernetes.io/managed-by": "aion-operator",
        conventions.AGENT_LABEL: _bounded(agent_name),
    }


def _metadata(agent_name: str, namespace: str, owner: Owner) -> Manifest:
    return {
        "name": executor_name(agent_name),
        "namespace": namespace,
        "labels": labels(agent_name),
        "ownerReferences": [owner.reference()],
    }


def _node_affinity(spec: agentspec.AgentSpec, *, pool_label: str, pool: str) -> Manifest:
    match = [{"key": pool_label, "operator": "In", "values": [pool]}]
    if spec.gpu.count > 0 and spec.gpu.products:
        match.append(
            {
                "key": conventions.GPU_PRODUCT_LABEL,
                "operator": "In",
                "values": list(spec.gpu.products),
            }
        )
    if spec.gpu.count > 0 and spec.gpu.min_memory_gib is not None:
        # Gt is strict: more than one MiB under the minimum is at least the minimum.
        match.append(
            {
                "key": conventions.GPU_MEMORY_LABEL,
                "operator": "Gt",
                "values": [str(spec.gpu.min_memory_gib * 1024 - 1)],
            }
        )
    return {
        "requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{"matchExpressions": match}]
        }
    }


def _env(spec: agentspec.AgentSpec, *, extra: Mapping[str, str], tls: bool) -> list[Manifest]:
    # Every pod address, not only loopback: the kubelet's probes and the agent
    # service dial the pod's IP. The Agent and pool are the pod's labels and affinity.
    values = {
        "AION_EXECUTOR_HOST": "0.0.0.0",
        "AION_EXECUTOR_PORT": str(EXECUTOR_PORT),
        "AION_EXECUTOR_HEALTH_PORT": str(HEALTH_PORT),
        "AION_EXECUTOR_HTTP_PORT": str(HTTP_PORT),
        "AION_EXECUTOR_METRICS_PORT": str(METRICS_PORT),
        "AION_EXECUTOR_GRACE_S": str(GRACE_S),
        "AION_EXECUTOR_DRAIN_DELAY_S": str(DRAIN_DELAY_S),
        "AION_EXECUTOR_MODEL_NAME": spec.model.name,
        "AION_EXECUTOR_MODEL_TASK": spec.model.task,
        "AION_EXECUTOR_DEVICE": "cuda" if spec.gpu.count > 0 else "cpu",
    }
    if spec.model.source is not None:
        values["AION_EXECUTOR_MODEL_SOURCE"] = spec.model.source
    if tls:
        values |= {
            "AION_TLS_CA_FILE": f"{TLS_DIR}/ca.crt",
            "AION_TLS_CERT_FILE": f"{TLS_DIR}/tls.crt",
            "AION_TLS_KEY_FILE": f"{TLS_DIR}/tls.key",
        }
    # The root filesystem is read-only: whatever a library caches goes to /tmp.
    values["HOME"] = "/tmp"
    values.update(extra)
    # The HTTP API's bearer token, which the operator keeps in the namespace.
    token = {
        "name": "AION_EXECUTOR_HTTP_TOKEN",
        "valueFrom": {
            "secretKeyRef": {"name": conventions.HTTP_SECRET, "key": conventions.TOKEN_KEY}
        },
    }
    # The executor names itself in its load reports by its pod IP: the agent service
    # dials pod IPs (the headless Service), so it matches reports to the pods it calls.
    instance = {
        "name": "AION_EXECUTOR_INSTANCE_ID",
        "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}},
    }
    return [*({"name": k, "value": v} for k, v in values.items()), token, instance]


def executor_env(cfg: operator_settings.AionOperatorSettings) -> dict[str, str]:
    """The platform settings every executor gets from the operator's own (plain values)."""
    env = {"AION_EXECUTOR_LOG_LEVEL": cfg.log_level}
    if cfg.kafka_bootstrap:  # load reports for the router
        env["AION_EXECUTOR_KAFKA_BOOTSTRAP"] = cfg.kafka_bootstrap
    if cfg.otlp_endpoint:
        env["AION_EXECUTOR_OTLP_ENDPOINT"] = cfg.otlp_endpoint
    return env


def _secret_ref(name: str, secret: str, key: str) -> Manifest:
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}


def _kafka_tls(kafka: operator_settings.ExecutorKafka) -> bool:
    return kafka.security_protocol.endswith("SSL") and bool(kafka.tls.existing_secret)


def kafka_env(kafka: operator_settings.ExecutorKafka) -> list[Manifest]:
    """The executor's Kafka security (``aion.core.kafka.KafkaSettings``), as the chart's
    ``aion.kafkaEnv`` renders it for the agent: the principal from its Secret, the CA
    and client certificate as files of the mounted TLS Secret."""
    prefix = "AION_EXECUTOR_KAFKA_"
    env: list[Manifest] = [{"name": prefix + "SECURITY_PROTOCOL", "value": kafka.security_protocol}]
    if kafka.security_protocol.startswith("SASL_"):
        sasl = kafka.sasl
        env += [
            {"name": prefix + "SASL_MECHANISM", "value": sasl.mechanism},
            _secret_ref(prefix + "SASL_USERNAME", sasl.existing_secret, sasl.username_key),
            _secret_ref(prefix + "SASL_PASSWORD", sasl.existing_secret, sasl.password_key),
        ]
    if _kafka_tls(kafka):
        tls = kafka.tls
        env.append({"name": prefix + "SSL_CAFILE", "value": f"{KAFKA_TLS_DIR}/{tls.ca_key}"})
        if tls.client_certificate:
            env += [
                {"name": prefix + "SSL_CERTFILE", "value": f"{KAFKA_TLS_DIR}/{tls.cert_key}"},
                {"name": prefix + "SSL_KEYFILE", "value": f"{KAFKA_TLS_DIR}/{tls.key_key}"},
            ]
    return env


def _grpc_probe(*, period_s: int, failures: int) -> Manifest:
    return {
        "grpc": {"port": HEALTH_PORT},
        "periodSeconds": period_s,
        "timeoutSeconds": 5,
        "failureThreshold": failures,
    }


def _container(
    spec: agentspec.AgentSpec,
    *,
    image: str,
    env: Mapping[str, str],
    tls: bool,
    kafka: operator_settings.ExecutorKafka | None,
) -> Manifest:
    limits: dict[str, str] = {"memory": spec.resources.memory}
    if spec.gpu.count > 0:
        limits[conventions.GPU_RESOURCE] = str(spec.gpu.count)
    return {
        "name": "executor",
        "image": image,
        "ports": [
            {"name": "grpc", "containerPort": EXECUTOR_PORT, "protocol": "TCP"},
            {"name": "http", "containerPort": HTTP_PORT, "protocol": "TCP"},
            {"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"},
            {"name": "health", "containerPort": HEALTH_PORT, "protocol": "TCP"},
        ],
        "env": [*_env(spec, extra=env, tls=tls), *(kafka_env(kafka) if kafka else [])],
        "resources": {
            "requests": {"cpu": spec.resources.cpu, "memory": spec.resources.memory},
            "limits": limits,
        },
        # Loading a model takes a while: the startup probe allows 15 minutes for it.
        "startupProbe": _grpc_probe(period_s=10, failures=90),
        "readinessProbe": _grpc_probe(period_s=5, failures=2),
        "livenessProbe": _grpc_probe(period_s=20, failures=3),
        # A failed model load's last log lines reach the Agent's ModelReady condition.
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [
            {"name": "tmp", "mountPath": "/tmp"},
            *([{"name": "tls", "mountPath": TLS_DIR, "readOnly": True}] if tls else []),
            *(
                [{"name": "kafka-tls", "mountPath": KAFKA_TLS_DIR, "readOnly": True}]
                if kafka and _kafka_tls(kafka)
                else []
            ),
        ],
    }


def executor_deployment(
    agent_name: str,
    namespace: str,
    spec: agentspec.AgentSpec,
    *,
    pool_label: str,
    pool: str,
    image: str,
    owner: Owner,
    env: Mapping[str, str] | None = None,
    autoscaled: bool = False,
    tls_version: str | None = None,
    kafka: operator_settings.ExecutorKafka | None = None,
) -> Manifest:
    """The Deployment that serves ``spec.model`` for one Agent on the node pool ``pool``.

    ``env`` adds platform settings (trace endpoint, Kafka) to the executor's own.
    ``autoscaled``: a HorizontalPodAutoscaler owns the replica count, so the
    manifest leaves ``replicas`` out and a server-side apply never resets it.
    ``tls_version``: the serial of the namespace's executor certificate (Secret
    ``aion-executor-tls``), mounted at ``/etc/aion/tls``; a pod annotation, so a
    renewed certificate rolls the pods. None: no certificate (no CA configured).
    ``kafka``: the security of the executor's Kafka connection (``kafka_env``); None
    when it publishes no load reports.
    """
    gpus = spec.gpu.count > 0
    tls = tls_version is not None
    volumes: list[Manifest] = [{"name": "tmp", "emptyDir": {}}]
    if tls:
        volumes.append(
            {"name": "tls", "secret": {"secretName": conventions.TLS_SECRET, "defaultMode": 0o440}}
        )
    if kafka is not None and _kafka_tls(kafka):
        volumes.append(
            {
                "name": "kafka-tls",
                "secret": {"secretName": kafka.tls.existing_secret, "defaultMode": 0o440},
            }
        )
    pod: Manifest = {
        "affinity": {"nodeAffinity": _node_affinity(spec, pool_label=pool_label, pool=pool)},
        "containers": [_container(spec, image=image, env=env or {}, tls=tls, kafka=kafka)],
        "volumes": volumes,
        "terminationGracePeriodSeconds": TERMINATION_GRACE_S,
        "enableServiceLinks": False,
        # Executors never call the Kubernetes API.
        "automountServiceAccountToken": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUN_AS,
            "runAsGroup": RUN_AS,
            "fsGroup": RUN_AS,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
    }
    if gpus:
        pod["tolerations"] = [
            {"key": conventions.GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}
        ]
    deployment: Manifest = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(agent_name, namespace, owner),
        "spec": {
            "selector": {"matchLabels": selector(agent_name)},
            # A GPU pool seldom has a spare GPU for a surge pod: replace pods one by one.
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": 0 if gpus else 1, "maxUnavailable": 1 if gpus else 0},
            },
            "template": {
                "metadata": {
                    "labels": labels(agent_name),
                    "annotations": {
                        "prometheus.io/scrape": "true",
                        "prometheus.io/port": str(METRICS_PORT),
                        "prometheus.io/path": "/metrics",
                        **(
                            {conventions.TLS_ANNOTATION: tls_version}
                            if tls_version is not None
                            else {}
                        ),
                    },
                },
                "spec": pod,
            },
        },
    }
    if not autoscaled:
        deployment["spec"]["replicas"] = spec.replicas.min
    return deployment


def executor_service(agent_name: str, namespace: str, *, owner: Owner) -> Manifest:
    """The headless Service in front of an Agent's executor pods (ready pods only)."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(agent_name, namespace, owner),
        "spec": {
            "clusterIP": "None",
            "selector": selector(agent_name),
            "ports": [
                {
                    "name": "grpc",
                    "port": EXECUTOR_PORT,
                    "targetPort": "grpc",
                    "protocol": "TCP",
                    "appProtocol": "grpc",
                },
                {
                    "name": "http",
                    "port": HTTP_PORT,
                    "targetPort": "http",
                    "protocol": "TCP",
                    "appProtocol": "http",
                },
            ],
        },
    }


def executor_network_policy(
    agent_name: str, namespace: str, *, owner: Owner, platform_namespace: str
) -> Manifest:
    """Who may reach an Agent's executor pods, as defence in depth behind mTLS and the token.

    gRPC and HTTP: only the platform's agent and knowledge pods (chart labels) in
    ``platform_namespace``, where the operator runs. The health port (the kubelet's
    probes; it answers only health checks) and the metrics port: from anywhere.
    """
    callers = {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": platform_namespace}},
        "podSelector": {
            "matchLabels": {"app.kubernetes.io/part-of": "aion"},
            "matchExpressions": [
                {"key": "app.kubernetes.io/component", "operator": "In", "values": list(CALLERS)}
            ],
        },
    }
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _metadata(agent_name, namespace, owner),
        "spec": {
            "podSelector": {"matchLabels": selector(agent_name)},
            "policyTypes": ["Ingress"],
            "ingress": [
                {
                    "from": [callers],
                    "ports": [
                        {"port": EXECUTOR_PORT, "protocol": "TCP"},
                        {"port": HTTP_PORT, "protocol": "TCP"},
                    ],
                },
                {
                    "ports": [
                        {"port": HEALTH_PORT, "protocol": "TCP"},
                        {"port": METRICS_PORT, "protocol": "TCP"},
                    ]
                },
            ],
        },
    }
