"""aion as a platform team installs it: images, `helm install` on the real nodes of the
local cluster, `helm test`, a kubectl-applied CPU Agent answering from its own pods,
`helm upgrade`, `helm uninstall`.

Everything is real: the images come from the services' Dockerfiles (buildah) through
the local registry; the pods run in containerd on the kubelets of the `workers` pool;
the release uses the host's Kafka, Postgres and MinIO as managed services; the
operator runs in-cluster under the chart's ServiceAccount and RBAC. The tests run in
order and share one release.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import json
import textwrap
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
import yaml
from prometheus_client import parser

from aion.api.v1 import common_pb2
from aion.core import pki
from aion.infra import images
from aion.infra.cluster import Cluster
from aion.infra.release import CHART, CPU_AGENT_FILE, NAME, NAMESPACE, REAL_POOL, Release, wait_for
from aion.sdk import AsyncClient

pytestmark = [pytest.mark.cluster, pytest.mark.helm, pytest.mark.timeout(1800)]

AGENT = "assistant"  # deploy/examples/agent-cpu.yaml
AGENT_NAMESPACE = "default"
API_KEY = "local-dev-key"  # deploy/local/values-local.yaml


@pytest.fixture(scope="module")
def images_values(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every service's image built (or found by its content tag) and pushed; the chart
    values that name them."""
    return images.write_values(images.build(), tmp_path_factory.mktemp("values") / "images.yaml")


@pytest.fixture(scope="module")
def release(
    cluster: Cluster,
    helm: Path,
    images_values: Path,
    kafka: Any,
    postgres: Any,
    minio: Any,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Release]:
    """The chart installed from a clean slate; uninstalled at the end."""
    rel = Release(cluster, helm, tmp_path_factory.mktemp("helm-home"))
    rel.kubectl(
        "delete",
        "-f",
        str(CPU_AGENT_FILE),
        "-n",
        AGENT_NAMESPACE,
        "--ignore-not-found",
        "--wait=true",
        check=False,
        timeout=180,
    )
    rel.uninstall()
    rel.install(images_values)
    yield rel
    rel.kubectl(
        "delete",
        "-f",
        str(CPU_AGENT_FILE),
        "-n",
        AGENT_NAMESPACE,
        "--ignore-not-found",
        "--wait=true",
        check=False,
        timeout=180,
    )
    rel.uninstall()


def metric(pod: dict[str, Any], name: str, **labels: str) -> float:
    """The sum of a metric's samples with these labels on the pod's own /metrics."""
    port = next(
        p["containerPort"]
        for c in pod["spec"]["containers"]
        for p in c.get("ports", [])
        if p["name"] == "metrics"
    )
    with urllib.request.urlopen(
        f"http://{pod['status']['podIP']}:{port}/metrics", timeout=10
    ) as resp:
        text = resp.read().decode()
    return sum(
        s.value
        for f in parser.text_string_to_metric_families(text)
        for s in f.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


def generate_calls(pod: dict[str, Any]) -> float:
    """Generate RPCs the pod's executor finished."""
    return metric(pod, "grpc_server_handled_total", grpc_method="Generate")


def test_every_deployment_is_ready_on_the_real_nodes(release: Release) -> None:
    deployments = release.json(
        "get", "deployments", "-n", NAMESPACE, "-l", f"app.kubernetes.io/instance={NAME}"
    )["items"]
    names = {d["metadata"]["name"] for d in deployments}
    want = {f"{NAME}-{s}" for s in ("gateway", "router", "agent", "knowledge", "operator")}
    assert names == want
    for d in deployments:  # `helm install --wait` waited for these
        assert d["status"].get("readyReplicas", 0) == d["spec"].get("replicas", 1), (
            d["metadata"]["name"],
            release.diagnose(),
        )
    # The chart's embedding Agent: placed by the in-cluster operator, its executor
    # loads all-MiniLM-L6-v2, and it is registered for the knowledge service.
    embeddings = wait_for(
        "the embedding Agent Ready",
        lambda: next(
            (
                a
                for a in release.json("get", "agents", "-n", NAMESPACE)["items"]
                if a.get("status", {}).get("phase") == "Ready"
            ),
            None,
        ),
        600,
        release.diagnose,
    )
    assert embeddings["status"]["nodePool"] == REAL_POOL
    nodes = release.real_nodes()
    assert len(nodes) >= 2
    pods = release.json("get", "pods", "-n", NAMESPACE, "--field-selector=status.phase=Running")[
        "items"
    ]
    assert pods
    assert {p["spec"]["nodeName"] for p in pods} <= nodes


def test_the_operator_runs_under_the_charts_service_account(release: Release) -> None:
    pods = release.json(
        "get", "pods", "-n", NAMESPACE, "-l", "app.kubernetes.io/component=operator"
    )["items"]
    assert len(pods) == 2  # one active, one standby
    assert {p["spec"]["serviceAccountName"] for p in pods} == {f"{NAME}-operator"}
    admin = [
        b
        for b in release.json("get", "clusterrolebindings")["items"]
        if b["roleRef"]["name"] == "cluster-admin"
        and any(s.get("name") == f"{NAME}-operator" for s in b.get("subjects") or [])
    ]
    assert admin == []


def test_helm_test_streams_a_task_through_the_gateway(release: Release) -> None:
    # The hook pod calls the first ready generate Agent: the example CPU Agent.
    release.apply_agent(CPU_AGENT_FILE, namespace=AGENT_NAMESPACE)
    # (No --logs: a passed test pod is deleted at once; a failed one stays for diagnose.)
    tested = release.helm("test", NAME, "-n", NAMESPACE, "--timeout", "10m")
    assert tested.returncode == 0, f"{tested.stdout}\n{tested.stderr}\n{release.diagnose()}"


async def test_a_kubectl_applied_cpu_agent_answers_from_its_own_pods(
    release: Release,
) -> None:
    agent = await asyncio.to_thread(release.apply_agent, CPU_AGENT_FILE, namespace=AGENT_NAMESPACE)
    assert agent["status"]["nodePool"] == REAL_POOL
    pods = release.executor_pods(AGENT, AGENT_NAMESPACE)
    assert len(pods) == 2
    assert {p["spec"]["nodeName"] for p in pods} <= release.real_nodes()
    before = {p["metadata"]["name"]: generate_calls(p) for p in pods}
    async with AsyncClient(release.gateway_target(), api_key=API_KEY) as client:
        events = [
            e async for e in client.stream(AGENT, "What is Kubernetes?", max_tokens=24, timeout=120)
        ]
        result = events[-1].done.result
        assert result.status == common_pb2.TASK_STATUS_OK, result
        assert result.output.strip()
        assert result.engine.route == common_pb2.ROUTE_LOCAL
        assert result.engine.model == "smollm2-135m-instruct"
        # Tasks spread over both executor pods.
        done = await asyncio.gather(
            *(client.submit(AGENT, f"Count to {i}.", max_tokens=8, timeout=180) for i in range(8))
        )
    assert all(d.result.status == common_pb2.TASK_STATUS_OK for d in done)
    served = collections.Counter(
        {name: generate_calls(p) - before[name] for p in pods for name in [p["metadata"]["name"]]}
    )
    assert sum(served.values()) >= 9, served
    assert min(served.values()) >= 2, f"tasks per executor pod: {dict(served)}"


def test_the_openai_client_reaches_the_agent_through_the_gateways_http_port(
    release: Release,
) -> None:
    release.apply_agent(CPU_AGENT_FILE, namespace=AGENT_NAMESPACE)
    client = openai.OpenAI(
        base_url=f"http://{release.gateway_target('http')}/v1",
        api_key=API_KEY,
        max_retries=0,
        timeout=120,
    )
    assert AGENT in [m.id for m in client.models.list()]
    reply = client.chat.completions.create(
        model=AGENT, max_tokens=16, messages=[{"role": "user", "content": "Say hi."}]
    )
    assert reply.choices[0].message.content
    assert reply.usage is not None
    assert 0 < reply.usage.completion_tokens <= 16
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(
            base_url=f"http://{release.gateway_target('http')}/v1", api_key="wrong", max_retries=0
        ).models.list()


async def test_tasks_end_ok_when_an_executor_pod_is_deleted_mid_load(
    release: Release,
) -> None:
    await asyncio.to_thread(release.apply_agent, CPU_AGENT_FILE, namespace=AGENT_NAMESPACE)
    pod = release.executor_pods(AGENT, AGENT_NAMESPACE)[0]
    victim = pod["metadata"]["name"]
    async with AsyncClient(release.gateway_target(), api_key=API_KEY) as client:
        running = [
            asyncio.create_task(
                client.submit(AGENT, f"Describe the number {i}.", max_tokens=32, timeout=300)
            )
            for i in range(8)
        ]
        # The pod goes while it is generating.
        await asyncio.to_thread(
            wait_for,
            f"{victim} generating",
            lambda: metric(pod, "aion_executor_in_flight") > 0,
            120,
            interval=0.1,
        )
        await asyncio.to_thread(
            release.kubectl, "delete", "pod", victim, "-n", AGENT_NAMESPACE, "--wait=false"
        )
        done = await asyncio.gather(*running)
    assert [d.result.status for d in done] == [common_pb2.TASK_STATUS_OK] * 8, [
        (d.result.status, d.result.error.message) for d in done
    ]


BROKEN_AGENT = """
apiVersion: aion.dev/v1alpha1
kind: Agent
metadata: {name: broken}
spec:
  model: {name: missing-model, task: generate, source: /models/missing.gguf}
  gpu: {count: 0}
  resources: {cpu: 100m, memory: 512Mi}
  placement: {allowedPools: [workers]}
"""


def test_an_executor_that_cannot_load_its_model_says_why_in_the_agent(
    release: Release,
) -> None:
    release.cluster.kubectl("apply", "-n", AGENT_NAMESPACE, "-f", "-", stdin=BROKEN_AGENT)

    def model_ready() -> dict[str, Any] | None:
        agent = release.json("get", "agent", "broken", "-n", AGENT_NAMESPACE)
        found: dict[str, Any] | None = next(
            (
                c
                for c in agent.get("status", {}).get("conditions", [])
                if c["type"] == "ModelReady" and c["reason"] == "CrashLoopBackOff"
            ),
            None,
        )
        return found

    try:
        condition = wait_for(
            "ModelReady False with the executor's reason",
            model_ready,
            300,
            lambda: release.kubectl(
                "describe", "agent", "broken", "-n", AGENT_NAMESPACE, check=False
            ),
        )
    finally:
        release.kubectl(
            "delete",
            "agent",
            "broken",
            "-n",
            AGENT_NAMESPACE,
            "--ignore-not-found",
            "--wait=true",
            timeout=180,
        )
    assert condition["status"] == "False"
    # The kubelet's words and the executor's own last lines: what to fix.
    assert "/models/missing.gguf does not exist" in condition["message"], condition


# Run in a pod of another namespace: the agent service over plaintext, over TLS with
# no client certificate, and with a certificate from a CA of the caller's own; then
# the health port of the same pod in plaintext. Prints one JSON object.
PROBE = textwrap.dedent("""
    import json, os, grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from aion.api.agent.v1 import agent_pb2, agent_pb2_grpc
    target, health = os.environ["TARGET"], os.environ["HEALTH"]
    override = [("grpc.ssl_target_name_override", "agent.aion.internal")]
    def call(channel):
        try:
            agent_pb2_grpc.AgentServiceStub(channel).ListAgents(
                agent_pb2.ListAgentsRequest(tenant="default"), timeout=10)
            return "OK"
        except grpc.RpcError as exc:
            return exc.code().name
    ca = os.environ["CA"].encode()
    out = {
        "plaintext": call(grpc.insecure_channel(target)),
        "no_certificate": call(grpc.secure_channel(
            target, grpc.ssl_channel_credentials(ca), options=override)),
        "foreign_certificate": call(grpc.secure_channel(target, grpc.ssl_channel_credentials(
            ca, os.environ["KEY"].encode(), os.environ["CERT"].encode()), options=override)),
    }
    status = health_pb2_grpc.HealthStub(grpc.insecure_channel(health)).Check(
        health_pb2.HealthCheckRequest(), timeout=10).status
    out["health"] = health_pb2.HealthCheckResponse.ServingStatus.Name(status)
    print(json.dumps(out))
""")


def test_a_pod_without_the_installs_certificate_is_refused_by_the_agent_service(
    release: Release,
) -> None:
    """Another namespace's pod, with no certificate or one from a CA of its own, is refused
    (UNAVAILABLE: the handshake fails) while it reaches the same pod's plaintext health
    port, so the refusal is TLS's, not the network's (the local cluster's network plugin
    does not enforce NetworkPolicy)."""
    ca_secret = release.json("get", "secret", "-n", NAMESPACE, f"{NAME}-tls-ca")
    ca = base64.b64decode(ca_secret["data"]["tls.crt"])
    stranger = pki.issue(pki.new_ca("not the install's CA"), "gateway")
    agent = release.json(
        "get",
        "pods",
        "-n",
        NAMESPACE,
        "-l",
        "app.kubernetes.io/component=agent",
        "--field-selector=status.phase=Running",
    )["items"][0]
    health = next(
        p["containerPort"] for p in agent["spec"]["containers"][0]["ports"] if p["name"] == "health"
    )
    image = agent["spec"]["containers"][0]["image"]
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "aion-tls-probe", "namespace": "default"},
        "spec": {
            "restartPolicy": "Never",
            "nodeSelector": {"cloud.google.com/gke-nodepool": REAL_POOL},
            "automountServiceAccountToken": False,
            "containers": [
                {
                    "name": "probe",
                    "image": image,
                    "command": ["/app/.venv/bin/python", "-c", PROBE],
                    "env": [
                        {"name": "TARGET", "value": f"{NAME}-agent.{NAMESPACE}.svc:50053"},
                        {"name": "HEALTH", "value": f"{agent['status']['podIP']}:{health}"},
                        {"name": "CA", "value": ca.decode()},
                        {"name": "CERT", "value": stranger.cert_pem.decode()},
                        {"name": "KEY", "value": stranger.key_pem.decode()},
                    ],
                }
            ],
        },
    }
    release.kubectl(
        "delete",
        "pod",
        "aion-tls-probe",
        "-n",
        "default",
        "--ignore-not-found",
        "--wait=true",
        check=False,
    )
    release.cluster.kubectl("apply", "-f", "-", stdin=yaml.safe_dump(pod))
    try:
        phase = wait_for(
            "the probe pod to finish",
            lambda: (
                release.json("get", "pod", "aion-tls-probe", "-n", "default")["status"].get("phase")
                in ("Succeeded", "Failed")
                or None
            ),
            300,
            release.diagnose,
        )
        assert phase
        logs = release.kubectl("logs", "aion-tls-probe", "-n", "default")
        seen = json.loads(logs.strip().splitlines()[-1])
    finally:
        release.kubectl(
            "delete", "pod", "aion-tls-probe", "-n", "default", "--ignore-not-found", check=False
        )
    assert seen["health"] == "SERVING", seen  # reachable: the refusals below are TLS's
    for how in ("plaintext", "no_certificate", "foreign_certificate"):
        assert seen[how] == "UNAVAILABLE", (how, seen)
    # The operator keeps the executors' Secrets and a NetworkPolicy per Agent beside them.
    for namespace in (NAMESPACE, AGENT_NAMESPACE):
        names = release.kubectl("get", "secrets,networkpolicies", "-n", namespace, "-o", "name")
        assert "secret/aion-executor-tls" in names, (namespace, names)
        assert "secret/aion-executor-http" in names, (namespace, names)
        assert "networkpolicy.networking.k8s.io/aion-executor-" in names, (namespace, names)


def test_helm_upgrade_with_a_changed_value_rolls_out(release: Release) -> None:
    before = release.json("get", "deployment", f"{NAME}-router", "-n", NAMESPACE)
    upgraded = release.helm(
        "upgrade",
        NAME,
        str(CHART),
        "-n",
        NAMESPACE,
        "--reuse-values",
        "--set",
        "logLevel=DEBUG",
        "--wait",
        "--timeout",
        "10m",
    )
    assert upgraded.returncode == 0, f"{upgraded.stderr}\n{release.diagnose()}"
    after = release.json("get", "deployment", f"{NAME}-router", "-n", NAMESPACE)
    assert after["metadata"]["generation"] > before["metadata"]["generation"]
    env = {
        e["name"]: e.get("value")
        for c in after["spec"]["template"]["spec"]["containers"]
        for e in c.get("env", [])
    }
    assert env.get("AION_ROUTER_LOG_LEVEL") == "DEBUG"
    assert after["status"].get("updatedReplicas") == after["spec"]["replicas"]


def test_helm_uninstall_leaves_only_the_crds(release: Release) -> None:
    release.kubectl(
        "delete",
        "-f",
        str(CPU_AGENT_FILE),
        "-n",
        AGENT_NAMESPACE,
        "--ignore-not-found",
        "--wait=true",
        timeout=180,
    )
    removed = release.uninstall()
    assert removed.returncode == 0, removed.stderr

    def gone() -> bool:
        left = release.kubectl(
            "get",
            "all,configmaps,secrets,serviceaccounts,roles,rolebindings,pvc",
            "-n",
            NAMESPACE,
            "-o",
            "name",
            "-l",
            f"app.kubernetes.io/instance={NAME}",
        )
        return left.strip() == ""

    wait_for("the release's objects gone", gone, 180)
    cluster_wide = release.kubectl(
        "get",
        "clusterroles,clusterrolebindings",
        "-o",
        "name",
        "-l",
        f"app.kubernetes.io/instance={NAME}",
    )
    assert cluster_wide.strip() == ""
    crds = release.kubectl("get", "crd", "-o", "name")
    assert "agents.aion.dev" in crds
    assert "gpupools.aion.dev" in crds
