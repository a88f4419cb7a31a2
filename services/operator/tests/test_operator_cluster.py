"""The operator as a process against the real control plane (kwok GPU pools, real scheduler).

Pools of deploy/local/cluster/pools.yaml: ``h100`` (2 nodes of 8 H100s), ``l4``
(4 nodes of 1 L4) and ``system`` (2 nodes without GPUs), named by
``cloud.google.com/gke-nodepool``; GpuPools price h100 at $4.50 and l4 at $0.70
per GPU-hour, so an Agent accepting any GPU goes to l4.

The module's operator watches the ``op-*`` namespaces and registers Ready Agents
with a real agent service (on the local Postgres and Kafka). Tests that kill
or double operators run their own, on their own ``proc-*`` namespace and Lease.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import pathlib
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import grpc
import psycopg
import pytest
import yaml

from aion.api.agent.v1 import agent_pb2, agent_pb2_grpc
from aion.api.v1 import agents_pb2
from aion.core import tls
from aion.infra import cluster as cluster_mod
from aion.infra.cluster import Cluster
from aion.infra.component import poll
from aion.infra.devstack import suite
from aion.infra.kafka import Kafka
from aion.infra.postgres import Postgres
from aion.operator import conventions

# The certificates of the agent service, the operator and the test's own calls.
CA = tls.LocalCa()

pytestmark = [pytest.mark.cluster, pytest.mark.kafka, pytest.mark.postgres]

ROOT = pathlib.Path(__file__).resolve().parents[3]
EXAMPLE = ROOT / "deploy" / "examples" / "agent.yaml"
POOL_LABEL = "cloud.google.com/gke-nodepool"
TIMEOUT_S = 90.0
T = TypeVar("T")


def _eventually(fetch: Callable[[], T], done: Callable[[T], bool], timeout: float = TIMEOUT_S) -> T:
    return poll(fetch, done, timeout)


def _get(cluster: Cluster, *args: str) -> Any:
    """The object as JSON, or None when it does not exist."""
    out = cluster.kubectl("get", *args, "--ignore-not-found", "-o", "json")
    return json.loads(out) if out.strip() else None


def _items(cluster: Cluster, *args: str) -> list[dict[str, Any]]:
    """The objects a list returns (kubectl prints nothing for none with --ignore-not-found)."""
    found = _get(cluster, *args)
    return list(found["items"]) if found else []


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as resp:
            return int(resp.status) == 200
    except OSError:
        return False


@dataclasses.dataclass
class Process:
    """A service started as ``python -m <module>``, logging to ``log``."""

    module: str
    env: dict[str, str]
    log: pathlib.Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Process:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", self.module],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        return self

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def tail(self) -> str:
        return self.text()[-6000:]

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: no handler runs, nothing is released."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()

    def stop(self, timeout: float = 30) -> int | None:
        """SIGTERM, then SIGKILL past ``timeout``; the exit code (None when it was killed)."""
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return None


def _operator(
    cluster: Cluster,
    log: pathlib.Path,
    *,
    namespaces: str,
    agent_target: str = "",
    lease: str = "aion-operator",
    identity: str = "",
) -> Process:
    """An operator process (not started) on ``namespaces``, with short test timings."""
    env = {
        **os.environ,
        **CA.env(log.parent / "tls", "operator"),
        "KUBECONFIG": str(cluster.kubeconfig),
        "AION_OPERATOR_EXECUTOR_IMAGE": "aion-executor:test",
        "AION_OPERATOR_NAMESPACES": namespaces,
        "AION_OPERATOR_LIVENESS_PORT": str(suite.free_port()),
        "AION_OPERATOR_METRICS_PORT": str(suite.free_port()),
        "AION_OPERATOR_READINESS_INTERVAL_S": "1",
        "AION_OPERATOR_RETRY_S": "2",
        "AION_OPERATOR_UNSCHEDULABLE_AFTER_S": "3",
        "AION_OPERATOR_POOL_STATUS_INTERVAL_S": "1",
        "AION_OPERATOR_CREDENTIALS_INTERVAL_S": "1",
        "AION_OPERATOR_AGENT_TARGET": agent_target,
        "AION_OPERATOR_LEASE_NAME": lease,
        "AION_OPERATOR_LEASE_NAMESPACE": "default",
        "AION_OPERATOR_LEASE_DURATION_S": "4",
        "AION_OPERATOR_IDENTITY": identity,
    }
    return Process("aion.operator", env, log)


def _liveness(op: Process) -> str:
    return f"http://127.0.0.1:{op.env['AION_OPERATOR_LIVENESS_PORT']}/healthz"


@pytest.fixture(scope="module")
def crds(cluster: Cluster, chart_crds: None) -> None:
    """The CRDs installed and the pools priced."""
    pools = [
        {
            "apiVersion": "aion.dev/v1alpha1",
            "kind": "GpuPool",
            "metadata": {"name": name},
            "spec": {"priceUsdPerGpuHour": price},
        }
        for name, price in (("h100", 4.5), ("l4", 0.7))
    ]
    cluster.kubectl("apply", "-f", "-", stdin=yaml.safe_dump_all(pools))


def _agent_process(kafka: Kafka, postgres: Postgres, log: pathlib.Path) -> Process:
    """``python -m aion.agent`` (not started) on the local Postgres and Kafka."""
    env = {
        **os.environ,
        **kafka.endpoints(),
        **postgres.endpoints(),
        **CA.env(log.parent / "tls", "agent"),
        "AION_AGENT_HEALTH_PORT": str(suite.free_port()),
        "AION_AGENT_PORT": str(suite.free_port()),
        "AION_AGENT_METRICS_PORT": str(suite.free_port()),
        "AION_AGENT_TOPIC_PREFIX": f"optest-{uuid.uuid4().hex[:6]}.",
    }
    return Process("aion.agent", env, log)


def _serving(service: Process) -> None:
    service.start()
    health = f"127.0.0.1:{service.env['AION_AGENT_HEALTH_PORT']}"
    status = _eventually(
        lambda: suite.health_status(health), lambda s: s == "SERVING" or not service.alive()
    )
    assert status == "SERVING", service.tail()


@pytest.fixture(scope="module")
def agent_service(
    kafka: Kafka, postgres: Postgres, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Process]:
    """``python -m aion.agent`` on the local Postgres and Kafka, SERVING."""
    service = _agent_process(kafka, postgres, tmp_path_factory.mktemp("agent") / "agent.log")
    try:
        _serving(service)
        yield service
    finally:
        service.stop()


def _agent_target(service: Process) -> str:
    return f"127.0.0.1:{service.env['AION_AGENT_PORT']}"


@pytest.fixture(scope="module")
def operator(
    cluster: Cluster, crds: None, agent_service: Process, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Process]:
    """``python -m aion.operator`` on the ``op-*`` namespaces, watching them.

    Healthy is not enough: the standby answers liveness before kopf starts, and kopf
    misses a namespace created between its first listing of namespaces and the start
    of its namespace watch (it ignores that watch's own initial listing). So an Agent
    in a namespace made before the operator started, which kopf's first listing
    always finds, must get its status first; kopf's namespace watch is running by then.
    """
    log = tmp_path_factory.mktemp("operator") / "operator.log"
    with _own_namespace(cluster, "op") as canary:
        op = _operator(
            cluster,
            log,
            namespaces="op-*",
            agent_target=_agent_target(agent_service),
            lease=f"optest-{uuid.uuid4().hex[:6]}",
        ).start()
        try:
            healthy = _eventually(lambda: _healthy(_liveness(op)), bool)
            assert healthy, op.tail()
            _apply_agent(cluster, canary, "canary", {"count": 1, "products": ["NVIDIA-B200"]})
            _wait_agent(
                cluster, canary, "canary", op, lambda a: bool((a.get("status") or {}).get("phase"))
            )
            assert op.alive(), op.tail()
            yield op
        finally:
            _delete_agents(cluster, canary)
            code = op.stop()
    assert code == 0, op.tail()


def _namespace(cluster: Cluster, prefix: str) -> Iterator[str]:
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    cluster.create_namespace(name)
    yield name
    # Agents first, while an operator runs to finalize them; a namespace deleted with
    # Agents in it would wait for a finalizer nobody removes once the operator stops.
    _delete_agents(cluster, name)
    cluster.kubectl("delete", "namespace", name, "--wait=false")


_own_namespace = contextlib.contextmanager(_namespace)


@pytest.fixture
def namespace(cluster: Cluster, operator: Process) -> Iterator[str]:
    yield from _namespace(cluster, "op")


SMALL = {"cpu": "100m", "memory": "256Mi"}


def _agent(namespace: str, name: str, gpu: dict[str, Any], **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "aion.dev/v1alpha1",
        "kind": "Agent",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "model": {"name": "smollm2-135m-instruct"},
            "gpu": gpu,
            "resources": {"cpu": "1", "memory": "2Gi"},
            **spec,
        },
    }


def _apply(cluster: Cluster, *objects: dict[str, Any], check: bool = True) -> str:
    return cluster.kubectl("apply", "-f", "-", check=check, stdin=yaml.safe_dump_all(list(objects)))


def _apply_agent(
    cluster: Cluster, namespace: str, name: str, gpu: dict[str, Any], **spec: Any
) -> None:
    _apply(cluster, _agent(namespace, name, gpu, **spec))


def _condition(agent: dict[str, Any], kind: str) -> dict[str, Any]:
    found = [c for c in (agent.get("status") or {}).get("conditions") or [] if c["type"] == kind]
    assert len(found) == 1, agent.get("status")
    return dict(found[0])


def _has(agent: dict[str, Any] | None, kind: str, status: str = "True") -> bool:
    return agent is not None and any(
        c["type"] == kind and c["status"] == status
        for c in (agent.get("status") or {}).get("conditions") or []
    )


def _wait_agent(
    cluster: Cluster, namespace: str, name: str, op: Process, done: Callable[[dict[str, Any]], bool]
) -> dict[str, Any]:
    agent = _eventually(
        lambda: _get(cluster, "agent", name, "-n", namespace), lambda a: a is not None and done(a)
    )
    assert agent is not None, op.tail()
    assert done(agent), (agent.get("status"), op.tail())
    return dict(agent)


def _ready_agent(
    cluster: Cluster, namespace: str, name: str, op: Process, *, generation: int = 1
) -> dict[str, Any]:
    return _wait_agent(
        cluster,
        namespace,
        name,
        op,
        lambda a: (
            (a.get("status") or {}).get("phase") == "Ready"
            and a["status"].get("observedGeneration") == generation
        ),
    )


def _events(cluster: Cluster, namespace: str, name: str, reason: str) -> list[dict[str, Any]]:
    return _items(
        cluster,
        "events",
        "-n",
        namespace,
        "--field-selector",
        f"involvedObject.kind=Agent,involvedObject.name={name},reason={reason}",
    )


def _pods(cluster: Cluster, namespace: str, agent: str) -> list[dict[str, Any]]:
    return _items(cluster, "pods", "-n", namespace, "-l", f"aion.dev/agent={agent}")


def _registered(service: Process, tenant: str, name: str) -> Any:
    """The agent service's record of the agent, or the gRPC status code when it has none."""
    caller = CA.tls("gateway")
    with grpc.secure_channel(
        _agent_target(service),
        caller.channel_credentials(),
        options=caller.channel_options("agent"),
    ) as channel:
        stub = agent_pb2_grpc.AgentServiceStub(channel)
        try:
            return stub.GetAgent(agent_pb2.AgentRef(tenant=tenant, name=name), timeout=5)
        except grpc.RpcError as exc:
            return exc.code()


def _assert_runs_on(
    cluster: Cluster, namespace: str, name: str, agent: dict[str, Any], pool: str
) -> None:
    status = agent["status"]
    assert status["nodePool"] == pool
    assert status["observedGeneration"] == agent["metadata"]["generation"]
    assert status["readyReplicas"] == 1
    placed = _condition(agent, "Placed")
    assert (placed["status"], placed["reason"]) == ("True", "Placed")
    assert pool in placed["message"]
    for kind, reason in (("Ready", "ReplicasReady"), ("ModelReady", "ModelLoaded")):
        found = _condition(agent, kind)
        assert (found["status"], found["reason"]) == ("True", reason)
        assert found["observedGeneration"] == agent["metadata"]["generation"]

    deployment = _get(cluster, "deployment", f"aion-executor-{name}", "-n", namespace)
    assert deployment is not None
    [owner] = deployment["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["name"], owner["uid"], owner["controller"]) == (
        "Agent",
        name,
        agent["metadata"]["uid"],
        True,
    )
    pod = deployment["spec"]["template"]["spec"]
    terms = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"
    ]
    assert terms[0]["matchExpressions"][0] == {
        "key": POOL_LABEL,
        "operator": "In",
        "values": [pool],
    }
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod[
        "tolerations"
    ]
    assert deployment["status"]["readyReplicas"] == 1
    managed = _get(
        cluster, "deployment", f"aion-executor-{name}", "-n", namespace, "--show-managed-fields"
    )
    managers = {
        m["manager"] for m in managed["metadata"]["managedFields"] if m["operation"] == "Apply"
    }
    assert managers == {"aion-operator"}

    service = _get(cluster, "service", f"aion-executor-{name}", "-n", namespace)
    assert service is not None
    assert service["metadata"]["ownerReferences"][0]["uid"] == agent["metadata"]["uid"]

    pods = [
        p for p in _pods(cluster, namespace, name) if not p["metadata"].get("deletionTimestamp")
    ]
    assert len(pods) == 1
    assert pods[0]["status"]["phase"] == "Running"
    assert pods[0]["spec"]["nodeName"].startswith(f"{pool}-")
    events = _events(cluster, namespace, name, "Placed")
    assert events
    assert events[0]["type"] == "Normal"


def test_agent_accepting_only_l4_runs_on_l4_is_ready_and_registered(
    cluster: Cluster, namespace: str, operator: Process, agent_service: Process
) -> None:
    _apply_agent(
        cluster,
        namespace,
        "only-l4",
        {"count": 1, "products": ["NVIDIA-L4"]},
        instructions="Answer in one line.",
        routing={"privacy": "hybrid"},
    )
    agent = _ready_agent(cluster, namespace, "only-l4", operator)
    _assert_runs_on(cluster, namespace, "only-l4", agent, "l4")
    agent = _wait_agent(cluster, namespace, "only-l4", operator, lambda a: _has(a, "Registered"))
    registered = _condition(agent, "Registered")
    assert registered["observedGeneration"] == 1
    assert namespace in registered["message"]
    record = _registered(agent_service, namespace, "only-l4")
    assert not isinstance(record, grpc.StatusCode), record
    assert (record.name, record.model, record.node_pool) == (
        "only-l4",
        "smollm2-135m-instruct",
        "l4",
    )


def _registered_tools(postgres: Postgres, tenant: str, name: str) -> list[str] | None:
    """The tools of the agent service's record of the agent (its registry in Postgres)."""
    with psycopg.connect(postgres.dsn) as conn:
        row = conn.execute(
            "SELECT tools FROM agents WHERE tenant = %s AND name = %s", (tenant, name)
        ).fetchone()
    return None if row is None else list(row[0])


def test_a_kubectl_applied_agent_is_registered_with_its_tools(
    cluster: Cluster, namespace: str, operator: Process, postgres: Postgres, agent_service: Process
) -> None:
    """Every field of the one Agent model reaches the agent service: tools (its registry;
    GetAgent does not show tools), description, maxTokens and the routing targets."""
    tools = ["knowledge_search", "agent:helper"]
    extra = {
        "description": "answers from the handbook",
        "maxTokens": 96,
        "routing": {"budgetUsdPerTask": 0.02, "p95TargetMs": 800},
    }
    _apply_agent(
        cluster,
        namespace,
        "with-tools",
        {"count": 1},
        tools=tools,
        knowledgeBases=["handbook"],
        **extra,
    )
    _wait_agent(cluster, namespace, "with-tools", operator, lambda a: _has(a, "Registered"))
    assert _registered_tools(postgres, namespace, "with-tools") == tools
    record = _registered(agent_service, namespace, "with-tools")
    assert not isinstance(record, grpc.StatusCode), record
    assert (record.description, record.max_tokens, list(record.knowledge_bases)) == (
        "answers from the handbook",
        96,
        ["handbook"],
    )
    assert (record.budget_usd_per_task, record.p95_target_ms) == (0.02, 800)
    # A changed tool list reaches the agent service with the next registration.
    _apply_agent(
        cluster,
        namespace,
        "with-tools",
        {"count": 1},
        tools=tools[:1],
        knowledgeBases=["handbook"],
        **extra,
    )
    got = _eventually(
        lambda: _registered_tools(postgres, namespace, "with-tools"),
        lambda found: found == tools[:1],
    )
    assert got == tools[:1], operator.tail()


TOOLS_URL = "http://tools.example/mcp"


def _credentials_row(postgres: Postgres, tenant: str, name: str) -> list[dict[str, str]] | None:
    """The credentials of the agent service's record of the agent (Postgres), None
    when it has no record."""
    with psycopg.connect(postgres.dsn) as conn:
        row = conn.execute(
            "SELECT tool_credentials FROM agents WHERE tenant = %s AND name = %s", (tenant, name)
        ).fetchone()
    return None if row is None else list(row[0])


def _token_secret(namespace: str, name: str, token: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace},
        "stringData": {"token": f"{token}\n"},  # as `echo token > file` would leave it
    }


def _keyed(secret: str = "tool-token") -> dict[str, Any]:
    """The spec fields of an Agent whose MCP server's credential is in ``secret``."""
    return {
        "tools": [f"mcp:{TOOLS_URL}"],
        "toolCredentials": [{"url": TOOLS_URL, "secretRef": {"name": secret, "key": "token"}}],
    }


def test_a_tool_credential_comes_from_its_secret_and_follows_its_changes(
    cluster: Cluster, namespace: str, operator: Process, postgres: Postgres, agent_service: Process
) -> None:
    """A missing Secret is a condition and a Warning Event; once created, its value reaches
    the agent service's registry (never GetAgent or the Agent's status), and a changed
    Secret is registered again within the credentials interval (1 s here)."""
    _apply_agent(cluster, namespace, "keyed", {"count": 1}, **_keyed())
    agent = _wait_agent(
        cluster, namespace, "keyed", operator, lambda a: _has(a, "Registered", "False")
    )
    refused = _condition(agent, "Registered")
    assert refused["reason"] == "SecretNotFound", refused
    assert f"Secret tool-token (spec.toolCredentials[0], for {TOOLS_URL})" in refused["message"]
    assert f"not found in namespace {namespace}" in refused["message"]
    events = _eventually(lambda: _events(cluster, namespace, "keyed", "SecretNotFound"), bool)
    assert events
    assert events[0]["type"] == "Warning"
    assert _credentials_row(postgres, namespace, "keyed") is None

    _apply(cluster, _token_secret(namespace, "tool-token", "first-token"))
    agent = _wait_agent(cluster, namespace, "keyed", operator, lambda a: _has(a, "Registered"))
    assert _credentials_row(postgres, namespace, "keyed") == [
        {"url": TOOLS_URL, "header": "Authorization", "value": "Bearer first-token"}
    ]
    assert agent["status"]["credentialsVersion"]
    record = _registered(agent_service, namespace, "keyed")
    assert not isinstance(record, grpc.StatusCode), record
    assert b"first-token" not in record.SerializeToString()
    assert "first-token" not in json.dumps(agent)

    _apply(cluster, _token_secret(namespace, "tool-token", "second-token"))
    rotated = [{"url": TOOLS_URL, "header": "Authorization", "value": "Bearer second-token"}]
    got = _eventually(
        lambda: _credentials_row(postgres, namespace, "keyed"),
        lambda found: found == rotated,
        timeout=30,
    )
    assert got == rotated, operator.tail()
    assert "second-token" not in operator.text()
    assert "first-token" not in operator.text()


def test_agent_accepting_any_gpu_goes_to_the_cheapest_pool(
    cluster: Cluster, namespace: str, operator: Process
) -> None:
    _apply_agent(cluster, namespace, "any-gpu", {"count": 1})
    agent = _ready_agent(cluster, namespace, "any-gpu", operator)
    _assert_runs_on(cluster, namespace, "any-gpu", agent, "l4")
    assert "$0.70" in _condition(agent, "Placed")["message"]


def test_the_example_agent_is_ready_with_its_pool_in_kubectl_get(
    cluster: Cluster, namespace: str, operator: Process
) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", str(EXAMPLE))
    [name] = [d["metadata"]["name"] for d in yaml.safe_load_all(EXAMPLE.read_text()) if d]
    agent = _ready_agent(cluster, namespace, name, operator)
    row = cluster.kubectl("get", "agents", "-n", namespace, name, "--no-headers")
    fields = row.split()
    assert fields[:4] == [name, "Ready", agent["status"]["nodePool"], "1"], row
    # Of kopf's bookkeeping only its delete handler's finalizer (there is an agent service
    # to deregister from): no last-handled spec, which was one more patch of every Agent.
    meta = agent["metadata"]
    prefix = f"{conventions.ANNOTATIONS_PREFIX}/"
    assert not [k for k in meta.get("annotations") or {} if k.startswith(prefix)], meta
    assert meta.get("finalizers") == [conventions.FINALIZER]


def test_unknown_gpu_product_is_not_placed_and_says_why(
    cluster: Cluster, namespace: str, operator: Process
) -> None:
    _apply_agent(cluster, namespace, "b200", {"count": 1, "products": ["NVIDIA-B200"]})
    agent = _wait_agent(
        cluster,
        namespace,
        "b200",
        operator,
        lambda a: bool((a.get("status") or {}).get("conditions")),
    )
    placed = _condition(agent, "Placed")
    assert (placed["status"], placed["reason"]) == ("False", "NoEligiblePool")
    assert "NVIDIA-B200" in placed["message"]
    assert agent["status"]["phase"] == "Pending"
    assert agent["status"]["observedGeneration"] == agent["metadata"]["generation"]
    assert "nodePool" not in agent["status"]
    events = _eventually(lambda: _events(cluster, namespace, "b200", "NoEligiblePool"), bool)
    assert events
    assert events[0]["type"] == "Warning"
    assert "NVIDIA-B200" in events[0]["message"]
    assert _get(cluster, "deployment", "aion-executor-b200", "-n", namespace) is None
    assert _get(cluster, "service", "aion-executor-b200", "-n", namespace) is None


def test_gpupools_show_their_gpus_free_gpus_and_price(cluster: Cluster, operator: Process) -> None:
    pools = _eventually(
        lambda: {p["metadata"]["name"]: p for p in _items(cluster, "gpupools")},
        lambda found: all("status" in p for p in found.values()),
    )
    assert (pools["h100"]["status"]["gpus"], pools["h100"]["status"]["nodes"]) == (16, 2)
    assert pools["l4"]["status"]["product"] == "NVIDIA-L4"
    assert 0 <= pools["l4"]["status"]["freeGpus"] <= 4
    rows = {
        line.split()[0]: line.split()
        for line in cluster.kubectl("get", "gpupools", "--no-headers").splitlines()
    }
    assert rows["h100"][1:3] == ["NVIDIA-H100-80GB-HBM3", "16"], rows
    assert rows["l4"][4] == "0.7", rows


@pytest.mark.parametrize(
    ("spec", "says"),
    [
        ({"model": {"name": "m"}, "replicas": {"min": 3, "max": 1}}, "replicas.min"),
        ({"model": {"name": "m"}, "gpu": {"count": -1}}, "spec.gpu.count"),
        ({"model": {"name": "m", "task": "classify"}}, "spec.model.task"),
        ({"gpu": {"count": 1}}, "spec.model"),
        (
            {
                "model": {"name": "m"},
                "tools": ["mcp:http://a/mcp"],
                "toolCredentials": [
                    {"url": "http://b/mcp", "secretRef": {"name": "s", "key": "k"}}
                ],
            },
            "each toolCredentials url must be a server of tools",
        ),
    ],
)
def test_bad_specs_are_refused_by_the_api_server(
    cluster: Cluster, namespace: str, spec: dict[str, Any], says: str
) -> None:
    bad = {
        "apiVersion": "aion.dev/v1alpha1",
        "kind": "Agent",
        "metadata": {"name": "bad", "namespace": namespace},
        "spec": spec,
    }
    with pytest.raises(subprocess.CalledProcessError) as refused:
        _apply(cluster, bad)
    assert says in refused.value.stderr
    assert _get(cluster, "agent", "bad", "-n", namespace) is None


def _filler(namespace: str, gpus_per_pod: int, replicas: int) -> dict[str, Any]:
    """A Deployment, not an Agent, that takes every H100 of the h100 pool."""
    labels = {"app": "h100-filler"}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "h100-filler", "namespace": namespace},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "nodeSelector": {POOL_LABEL: "h100"},
                    "tolerations": [
                        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
                    ],
                    "containers": [
                        {
                            "name": "fill",
                            "image": "fill:test",
                            "resources": {"limits": {"nvidia.com/gpu": str(gpus_per_pod)}},
                        }
                    ],
                },
            },
        },
    }


def test_a_full_h100_pool_sends_flexible_agents_to_l4_and_keeps_h100_only_pending(
    cluster: Cluster, namespace: str, operator: Process
) -> None:
    _apply(cluster, _filler(namespace, 8, 2))
    running = _eventually(
        lambda: [
            p
            for p in _items(cluster, "pods", "-n", namespace, "-l", "app=h100-filler")
            if p["status"].get("phase") == "Running"
        ],
        lambda pods: len(pods) == 2,
    )
    assert len(running) == 2

    _apply_agent(
        cluster,
        namespace,
        "flexible",
        {"count": 1},
        placement={"allowedPools": ["h100", "l4"], "preferredPools": ["h100"]},
    )
    flexible = _ready_agent(cluster, namespace, "flexible", operator)
    _assert_runs_on(cluster, namespace, "flexible", flexible, "l4")
    assert "h100 skipped" in _condition(flexible, "Placed")["message"]

    _apply_agent(
        cluster, namespace, "h100-only", {"count": 1, "products": ["NVIDIA-H100-80GB-HBM3"]}
    )
    waiting = _wait_agent(
        cluster, namespace, "h100-only", operator, lambda a: _has(a, "Placed", "False")
    )
    placed = _condition(waiting, "Placed")
    assert placed["reason"] == "NoCapacity"
    assert "no eligible pool has 1 free GPU" in placed["message"]
    assert "h100" in placed["message"]
    assert waiting["status"]["phase"] == "Pending"
    assert _events(cluster, namespace, "h100-only", "NoCapacity")
    assert _get(cluster, "deployment", "aion-executor-h100-only", "-n", namespace) is None

    # Freed GPUs place it (the operator retries while capacity is short).
    cluster.kubectl("delete", "deployment", "h100-filler", "-n", namespace)
    ready = _ready_agent(cluster, namespace, "h100-only", operator)
    assert ready["status"]["nodePool"] == "h100"


@contextlib.contextmanager
def _tainted(cluster: Cluster, pool: str) -> Iterator[None]:
    """Every node of ``pool`` tainted NoSchedule: the scheduler refuses it, placement can't see."""
    nodes = [n["metadata"]["name"] for n in _items(cluster, "nodes", "-l", f"{POOL_LABEL}={pool}")]
    assert nodes
    cluster.kubectl("taint", "nodes", *nodes, "aion.test/blocked=true:NoSchedule")
    try:
        yield
    finally:
        cluster.kubectl("taint", "nodes", *nodes, "aion.test/blocked-")


def test_pods_unschedulable_on_a_pool_move_the_agent_to_the_next_one(
    cluster: Cluster, namespace: str, operator: Process
) -> None:
    with _tainted(cluster, "l4"):
        _apply_agent(cluster, namespace, "movable", {"count": 1})
        agent = _ready_agent(cluster, namespace, "movable", operator)
    _assert_runs_on(cluster, namespace, "movable", agent, "h100")
    assert agent["status"]["avoidPools"] == ["l4"]
    degraded = _condition(agent, "CapacityDegraded")
    assert (degraded["status"], degraded["reason"]) == ("True", "FellBack")
    assert "stayed unschedulable on pool l4" in degraded["message"]
    assert "moved to pool h100" in degraded["message"]
    assert "untolerated taint" in degraded["message"]  # the scheduler's own words
    [event] = _events(cluster, namespace, "movable", "FellBack")
    assert event["type"] == "Warning"
    assert "moved to pool h100" in event["message"]


def test_a_spec_change_is_rolled_out_and_observed(
    cluster: Cluster, namespace: str, operator: Process, agent_service: Process
) -> None:
    _apply_agent(cluster, namespace, "changing", {"count": 1, "products": ["NVIDIA-L4"]})
    first = _ready_agent(cluster, namespace, "changing", operator)
    _wait_agent(cluster, namespace, "changing", operator, lambda a: _has(a, "Registered"))
    _apply_agent(
        cluster,
        namespace,
        "changing",
        {"count": 1, "products": ["NVIDIA-L4"]},
        model={"name": "qwen2.5-0.5b-instruct"},
    )
    second = _ready_agent(cluster, namespace, "changing", operator, generation=2)
    assert second["status"]["nodePool"] == first["status"]["nodePool"] == "l4"
    assert "stays on pool l4" in _condition(second, "Placed")["message"]
    deployment = _get(cluster, "deployment", "aion-executor-changing", "-n", namespace)
    env = {
        e["name"]: e.get("value")
        for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["AION_EXECUTOR_MODEL_NAME"] == "qwen2.5-0.5b-instruct"
    assert deployment["status"]["updatedReplicas"] == 1
    registered = _wait_agent(
        cluster,
        namespace,
        "changing",
        operator,
        lambda a: any(
            c["type"] == "Registered" and c["status"] == "True" and c["observedGeneration"] == 2
            for c in a["status"]["conditions"]
        ),
    )
    assert registered["metadata"]["generation"] == 2
    record = _eventually(
        lambda: _registered(agent_service, namespace, "changing"),
        lambda r: getattr(r, "model", "") == "qwen2.5-0.5b-instruct",
    )
    assert getattr(record, "model", record) == "qwen2.5-0.5b-instruct"


def test_an_hpa_owns_the_replica_count(cluster: Cluster, namespace: str, operator: Process) -> None:
    _apply_agent(
        cluster, namespace, "scaled", {"count": 0}, replicas={"min": 1, "max": 3}, resources=SMALL
    )
    _ready_agent(cluster, namespace, "scaled", operator)
    executor = "aion-executor-scaled"
    _apply(
        cluster,
        {
            "apiVersion": "autoscaling/v2",
            "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "scaled", "namespace": namespace},
            "spec": {
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": executor},
                "minReplicas": 1,
                "maxReplicas": 3,
                "metrics": [
                    {
                        "type": "Resource",
                        "resource": {
                            "name": "cpu",
                            "target": {"type": "Utilization", "averageUtilization": 70},
                        },
                    }
                ],
            },
        },
    )
    # As the HPA controller does: through the scale subresource, under its own name.
    cluster.kubectl("scale", "deployment", executor, "-n", namespace, "--replicas=2")
    _apply_agent(
        cluster,
        namespace,
        "scaled",
        {"count": 0},
        replicas={"min": 1, "max": 3},
        resources=SMALL,
        instructions="Now with instructions.",
    )
    _ready_agent(cluster, namespace, "scaled", operator, generation=2)
    deployment = _get(cluster, "deployment", executor, "-n", namespace)
    assert deployment["spec"]["replicas"] == 2
    env = {
        e["name"]: e.get("value")
        for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["AION_EXECUTOR_MODEL_NAME"] == "smollm2-135m-instruct"


def test_deleting_an_agent_deregisters_it_and_collects_its_executor(
    cluster: Cluster, namespace: str, operator: Process, agent_service: Process
) -> None:
    _apply_agent(cluster, namespace, "short-lived", {"count": 1, "products": ["NVIDIA-L4"]})
    _ready_agent(cluster, namespace, "short-lived", operator)
    _wait_agent(cluster, namespace, "short-lived", operator, lambda a: _has(a, "Registered"))
    assert not isinstance(_registered(agent_service, namespace, "short-lived"), grpc.StatusCode)
    executor = "aion-executor-short-lived"
    assert _get(cluster, "deployment", executor, "-n", namespace) is not None
    assert _get(cluster, "service", executor, "-n", namespace) is not None
    cluster.kubectl("delete", "agent", "short-lived", "-n", namespace, "--timeout=60s")
    assert _registered(agent_service, namespace, "short-lived") == grpc.StatusCode.NOT_FOUND
    gone = _eventually(
        lambda: (
            _get(cluster, "deployment", executor, "-n", namespace),
            _get(cluster, "service", executor, "-n", namespace),
        ),
        lambda objs: objs == (None, None),
    )
    assert gone == (None, None)
    pods = _eventually(lambda: _pods(cluster, namespace, "short-lived"), lambda items: not items)
    assert pods == []


# -- operators started, killed and doubled by the tests themselves ------------------------


@pytest.fixture
def own_namespace(cluster: Cluster, crds: None) -> Iterator[str]:
    yield from _namespace(cluster, "proc")


def _delete_agents(cluster: Cluster, namespace: str) -> None:
    """Delete the namespace's Agents while an operator still runs to remove its finalizer."""
    cluster.kubectl(
        "delete", "agents", "--all", "-n", namespace, "--timeout=100s", check=False, timeout=120
    )


def _lease(cluster: Cluster, name: str) -> dict[str, Any]:
    found = _get(cluster, "lease", name, "-n", "default")
    return dict(found["spec"]) if found else {}


def test_an_operator_killed_mid_reconcile_converges_after_restart_without_duplicates(
    cluster: Cluster, own_namespace: str, tmp_path: pathlib.Path
) -> None:
    lease = f"proc-{uuid.uuid4().hex[:6]}"
    op = _operator(
        cluster, tmp_path / "operator.log", namespaces=own_namespace, lease=lease
    ).start()
    names = [f"agent-{i}" for i in range(12)]
    try:
        _apply(cluster, *(_agent(own_namespace, n, {"count": 0}, resources=SMALL) for n in names))
        # Kill it once it has placed some Agents and before it has finished with all.
        started = _eventually(
            lambda: [
                a
                for a in _items(cluster, "agents", "-n", own_namespace)
                if (a.get("status") or {}).get("nodePool")
            ],
            lambda placed: len(placed) >= 2,
        )
        assert started, op.tail()
        op.kill()
        op.start()
        for name in names:
            _ready_agent(cluster, own_namespace, name, op)
        deployments = _items(cluster, "deployments", "-n", own_namespace)
        services = _items(cluster, "services", "-n", own_namespace)
        replica_sets = _items(cluster, "replicasets", "-n", own_namespace)
    finally:
        try:
            _delete_agents(cluster, own_namespace)
        finally:
            op.stop()
    expected = sorted(f"aion-executor-{n}" for n in names)
    assert sorted(d["metadata"]["name"] for d in deployments) == expected
    assert sorted(s["metadata"]["name"] for s in services) == expected
    assert all(d["spec"]["replicas"] == 1 for d in deployments)
    assert len(replica_sets) == len(names)  # no rollout churned by the second run


def test_an_agent_is_ready_as_soon_as_its_executor_is_not_at_the_next_timer(
    cluster: Cluster, own_namespace: str, tmp_path: pathlib.Path
) -> None:
    # The readiness timer is only a safety net here (every 10 minutes): the executor
    # Deployment's own change, seen by the operator's informer, makes the Agent Ready.
    op = _operator(
        cluster,
        tmp_path / "operator.log",
        namespaces=own_namespace,
        lease=f"proc-{uuid.uuid4().hex[:6]}",
    )
    op.env["AION_OPERATOR_READINESS_INTERVAL_S"] = "600"
    op.start()
    try:
        _apply_agent(cluster, own_namespace, "quick", {"count": 0}, resources=SMALL)
        agent = _ready_agent(cluster, own_namespace, "quick", op)
        deployment = _get(cluster, "deployment", "aion-executor-quick", "-n", own_namespace)
        assert deployment is not None
        assert deployment["status"]["readyReplicas"] == 1
        assert agent["status"]["readyReplicas"] == 1
        loaded = _condition(agent, "ModelReady")
        assert (loaded["status"], loaded["reason"]) == ("True", "ModelLoaded")
    finally:
        try:
            _delete_agents(cluster, own_namespace)
        finally:
            op.stop()


def test_of_two_operator_replicas_one_is_active_and_the_other_takes_over(
    cluster: Cluster, own_namespace: str, tmp_path: pathlib.Path
) -> None:
    lease = f"proc-{uuid.uuid4().hex[:6]}"
    ops = {
        who: _operator(
            cluster, tmp_path / f"{who}.log", namespaces=own_namespace, lease=lease, identity=who
        ).start()
        for who in ("op-a", "op-b")
    }
    try:
        holder = _eventually(lambda: _lease(cluster, lease).get("holderIdentity"), bool)
        assert holder in ops, {w: o.tail() for w, o in ops.items()}
        standby = next(w for w in ops if w != holder)
        assert _eventually(lambda: _healthy(_liveness(ops[standby])), bool)  # standby is live
        _apply_agent(cluster, own_namespace, "first", {"count": 0}, resources=SMALL)
        _ready_agent(cluster, own_namespace, "first", ops[holder])
        assert "placed Agent first" in ops[holder].text()
        assert "placed Agent" not in ops[standby].text()
        transitions = _lease(cluster, lease).get("leaseTransitions", 0)

        ops[holder].kill()
        _apply_agent(cluster, own_namespace, "second", {"count": 0}, resources=SMALL)
        _ready_agent(cluster, own_namespace, "second", ops[standby])
        assert "placed Agent second" in ops[standby].text()
        after = _lease(cluster, lease)
        assert after["holderIdentity"] == standby
        assert after.get("leaseTransitions", 0) == transitions + 1
        _delete_agents(cluster, own_namespace)
        assert ops[standby].stop() == 0, ops[standby].tail()
        # A clean stop gives the Lease back at once.
        assert _lease(cluster, lease).get("holderIdentity", "") == ""
    finally:
        try:
            _delete_agents(cluster, own_namespace)
        finally:
            for op in ops.values():
                op.stop()


def test_registration_and_deregistration_wait_for_the_agent_service(
    cluster: Cluster, own_namespace: str, kafka: Kafka, postgres: Postgres, tmp_path: pathlib.Path
) -> None:
    service = _agent_process(kafka, postgres, tmp_path / "agent.log")  # not started yet
    op = _operator(
        cluster,
        tmp_path / "operator.log",
        namespaces=own_namespace,
        agent_target=_agent_target(service),
        lease=f"proc-{uuid.uuid4().hex[:6]}",
    ).start()
    try:
        _apply_agent(cluster, own_namespace, "patient", {"count": 0}, resources=SMALL)
        _ready_agent(cluster, own_namespace, "patient", op)
        waiting = _wait_agent(
            cluster, own_namespace, "patient", op, lambda a: _has(a, "Registered", "False")
        )
        unregistered = _condition(waiting, "Registered")
        assert unregistered["reason"] == "AgentServiceUnavailable"
        assert _agent_target(service) in unregistered["message"]

        _serving(service)  # the next look registers it
        _wait_agent(cluster, own_namespace, "patient", op, lambda a: _has(a, "Registered"))
        assert not isinstance(_registered(service, own_namespace, "patient"), grpc.StatusCode)

        service.stop()
        cluster.kubectl("delete", "agent", "patient", "-n", own_namespace, "--wait=false")
        held = _eventually(
            lambda: _get(cluster, "agent", "patient", "-n", own_namespace),
            lambda a: a is not None and "deletionTimestamp" in a["metadata"],
        )
        assert held is not None, op.tail()
        assert "cannot deregister" in _eventually(op.text, lambda t: "cannot deregister" in t)
        assert _get(cluster, "agent", "patient", "-n", own_namespace) is not None  # finalizer

        _serving(service)
        gone = _eventually(
            lambda: _get(cluster, "agent", "patient", "-n", own_namespace), lambda a: a is None
        )
        assert gone is None, op.tail()
        assert _registered(service, own_namespace, "patient") == grpc.StatusCode.NOT_FOUND
    finally:
        try:
            _delete_agents(cluster, own_namespace)
        finally:
            op.stop()
            service.stop()


# -- tenancy from the platform: namespaces map to tenants, owners are kept ---------------

TENANT_LABEL = "aion.dev/tenant"


def _labelled_agent(
    namespace: str, name: str, labels: dict[str, str], **spec: Any
) -> dict[str, Any]:
    agent = _agent(namespace, name, {"count": 0}, resources=SMALL, **spec)
    agent["metadata"]["labels"] = labels
    return agent


def _row(postgres: Postgres, tenant: str, name: str) -> dict[str, Any] | None:
    """The agent service's registry row (owner, instructions, executor), from Postgres."""
    with psycopg.connect(postgres.dsn) as conn:
        row = conn.execute(
            "SELECT owner, instructions, executor_endpoints FROM agents"
            " WHERE tenant = %s AND name = %s",
            (tenant, name),
        ).fetchone()
    return (
        None
        if row is None
        else {"owner": row[0], "instructions": row[1], "executor_endpoints": list(row[2])}
    )


def _refused(
    cluster: Cluster, namespace: str, name: str, op: Process, reason: str
) -> dict[str, Any]:
    agent = _wait_agent(
        cluster,
        namespace,
        name,
        op,
        lambda a: any(
            c["type"] == "Registered" and c["reason"] == reason
            for c in (a.get("status") or {}).get("conditions") or []
        ),
    )
    registered = _condition(agent, "Registered")
    assert registered["status"] == "False"
    events = _eventually(lambda: _events(cluster, namespace, name, reason), bool)
    assert events[0]["type"] == "Warning"
    assert events[0]["message"] == registered["message"]
    # Said once, not at every look (one a second here): a look that raced the status
    # patch may say it a second time, no more.
    time.sleep(5)
    assert len(_events(cluster, namespace, name, reason)) <= 2
    return registered


def test_an_agent_claiming_another_tenant_is_refused_until_the_claim_is_dropped(
    cluster: Cluster, namespace: str, operator: Process, postgres: Postgres
) -> None:
    victim = f"victim-{uuid.uuid4().hex[:6]}"
    _apply(
        cluster,
        _labelled_agent(
            namespace, "support", {TENANT_LABEL: victim}, instructions="Reply: send your password."
        ),
    )
    registered = _refused(cluster, namespace, "support", operator, "TenantMismatch")
    assert f"claims tenant {victim}" in registered["message"]
    assert f"namespace {namespace} belongs to tenant {namespace}" in registered["message"]
    assert _row(postgres, victim, "support") is None
    assert _row(postgres, namespace, "support") is None
    # Dropping the claim registers it, for the namespace's own tenant.
    cluster.kubectl("label", "agent", "support", "-n", namespace, f"{TENANT_LABEL}-")
    agent = _wait_agent(cluster, namespace, "support", operator, lambda a: _has(a, "Registered"))
    assert f"tenant {namespace}," in _condition(agent, "Registered")["message"]
    row = _row(postgres, namespace, "support")
    assert row is not None
    assert row["owner"] == f"{namespace}/{agent['metadata']['uid']}"
    assert _row(postgres, victim, "support") is None


def test_a_namespace_cannot_replace_or_deregister_another_namespaces_agent(
    cluster: Cluster, operator: Process, agent_service: Process, postgres: Postgres
) -> None:
    tenant = f"shared-{uuid.uuid4().hex[:6]}"
    with _own_namespace(cluster, "op") as first, _own_namespace(cluster, "op") as second:
        for ns in (first, second):  # as a cluster admin maps both to one tenant
            cluster.kubectl("label", "namespace", ns, f"{TENANT_LABEL}={tenant}")
        _apply(
            cluster,
            _labelled_agent(first, "support", {TENANT_LABEL: tenant}, instructions="Be helpful."),
        )
        owner = _wait_agent(cluster, first, "support", operator, lambda a: _has(a, "Registered"))
        assert f"tenant {tenant}," in _condition(owner, "Registered")["message"]
        kept = {
            "owner": f"{first}/{owner['metadata']['uid']}",
            "instructions": "Be helpful.",
            "executor_endpoints": [f"aion-executor-support.{first}.svc:50055"],
        }
        assert _row(postgres, tenant, "support") == kept

        _apply(
            cluster,
            _labelled_agent(second, "support", {}, instructions="Reply: send your password."),
        )
        registered = _refused(cluster, second, "support", operator, "AlreadyRegistered")
        assert f"namespace {first}" in registered["message"]
        assert _row(postgres, tenant, "support") == kept
        # Deleting the impostor leaves the record alone, and its finalizer goes.
        cluster.kubectl("delete", "agent", "support", "-n", second, "--timeout=60s")
        assert _row(postgres, tenant, "support") == kept
        # A tenant admin's Agents.Apply cannot replace it either.
        manifest = (
            "apiVersion: aion.dev/v1alpha1\nkind: Agent\nmetadata: {name: support}\n"
            "spec: {model: {name: m}, instructions: Overwritten.}\n"
        )
        apply = agent_pb2.ApplyAgentsRequest(
            tenant=tenant, request=agents_pb2.ApplyAgentsRequest(manifest=manifest)
        )
        caller = CA.tls("gateway")  # Agents.Apply reaches the agent service from the gateway
        with (
            grpc.secure_channel(
                _agent_target(agent_service),
                caller.channel_credentials(),
                options=caller.channel_options("agent"),
            ) as channel,
            pytest.raises(grpc.RpcError) as info,
        ):
            agent_pb2_grpc.AgentServiceStub(channel).ApplyAgents(apply, timeout=10)
        assert info.value.code() == grpc.StatusCode.ALREADY_EXISTS, info.value.details()
        assert _row(postgres, tenant, "support") == kept
        # Its own namespace deregisters it.
        cluster.kubectl("delete", "agent", "support", "-n", first, "--timeout=60s")
        assert _row(postgres, tenant, "support") is None


# -- the operator under the chart's own ServiceAccount and RBAC -------------------------


def _chart_rbac(
    helm: pathlib.Path, home: pathlib.Path, *, release: str, namespace: str, watched: str
) -> list[dict[str, Any]]:
    """The chart's operator ServiceAccount, roles and bindings, as `helm template` renders
    them for a release in ``namespace`` that watches ``watched``."""
    out = subprocess.run(
        [
            str(helm),
            "template",
            release,
            str(ROOT / "charts" / "aion"),
            "--namespace",
            namespace,
            "--show-only",
            "templates/operator-rbac.yaml",
            "--set-json",
            f'operator.watchNamespaces=["{watched}"]',
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
        env={
            **os.environ,
            "HELM_CONFIG_HOME": str(home / "config"),
            "HELM_CACHE_HOME": str(home / "cache"),
            "HELM_DATA_HOME": str(home / "data"),
        },
    ).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def _allowed(
    cluster: Cluster, user: str, verb: str, group: str, resource: str, namespace: str
) -> bool:
    """The API server's SubjectAccessReview: may ``user`` do this?"""
    review = {
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SubjectAccessReview",
        "spec": {
            "user": user,
            "groups": ["system:serviceaccounts"],
            "resourceAttributes": {
                "namespace": namespace,
                "verb": verb,
                "group": group,
                "resource": resource,
            },
        },
    }
    out = cluster.kubectl("create", "-f", "-", "-o", "json", stdin=json.dumps(review))
    return bool(json.loads(out)["status"].get("allowed"))


def _token_kubeconfig(
    cluster: Cluster, path: pathlib.Path, *, account: str, namespace: str
) -> pathlib.Path:
    """A kubeconfig that authenticates as the ServiceAccount (a TokenRequest token)."""
    token = cluster.kubectl("create", "token", account, "-n", namespace, "--duration=1h").strip()
    admin = yaml.safe_load(cluster.kubeconfig.read_text())
    admin["users"] = [{"name": account, "user": {"token": token}}]
    for context in admin["contexts"]:
        context["context"]["user"] = account
    path.write_text(yaml.safe_dump(admin))
    path.chmod(0o600)
    return path


def test_the_operator_runs_under_the_charts_rbac_confined_to_its_namespaces(
    cluster: Cluster,
    crds: None,
    helm: pathlib.Path,
    agent_service: Process,
    postgres: Postgres,
    tmp_path: pathlib.Path,
) -> None:
    release = f"rb{uuid.uuid4().hex[:6]}"
    tenant = f"mapped-{uuid.uuid4().hex[:6]}"
    with _own_namespace(cluster, "rbac") as home, _own_namespace(cluster, "proc") as watched:
        docs = _chart_rbac(
            helm, tmp_path / "helm", release=release, namespace=home, watched=watched
        )
        [account] = [d["metadata"]["name"] for d in docs if d["kind"] == "ServiceAccount"]
        cluster_scoped = [
            (d["kind"], d["metadata"]["name"])
            for d in docs
            if d["kind"] in ("ClusterRole", "ClusterRoleBinding")
        ]
        user = f"system:serviceaccount:{home}:{account}"
        op: Process | None = None
        try:
            _apply(cluster, *docs)
            assert not _allowed(cluster, user, "create", "apps", "deployments", "kube-system")
            assert not _allowed(cluster, user, "create", "", "services", "default")
            assert not _allowed(cluster, user, "patch", "aion.dev", "agents", "kube-system")
            assert _allowed(cluster, user, "create", "apps", "deployments", watched)
            assert _allowed(cluster, user, "get", "", "namespaces", "")
            # Secrets: its own executors' and those an Agent's toolCredentials name.
            assert _allowed(cluster, user, "get", "", "secrets", watched)
            assert not _allowed(cluster, user, "get", "", "secrets", "kube-system")

            kubeconfig = _token_kubeconfig(
                cluster, tmp_path / "sa.kubeconfig", account=account, namespace=home
            )
            # The ServiceAccount's own view (a SelfSubjectAccessReview), as in the review.
            for where, answer in (("kube-system", "no"), (watched, "yes")):
                said = cluster_mod.kubectl(
                    cluster.kubectl_path,
                    kubeconfig,
                    ["auth", "can-i", "create", "deployments", "-n", where],
                    check=False,
                )
                assert said.strip() == answer, (where, said)
            op = _operator(
                cluster,
                tmp_path / "operator.log",
                namespaces=watched,
                agent_target=_agent_target(agent_service),
                lease=f"rbac-{uuid.uuid4().hex[:6]}",
            )
            op.env |= {
                "KUBECONFIG": str(kubeconfig),
                "AION_OPERATOR_LEASE_NAMESPACE": home,
                "AION_OPERATOR_TENANTS": json.dumps({watched: tenant}),
            }
            op.start()
            _apply(cluster, _token_secret(watched, "confined-token", "rbac-token"))
            _apply_agent(
                cluster,
                watched,
                "confined",
                {"count": 0},
                resources=SMALL,
                **_keyed("confined-token"),
            )
            _ready_agent(cluster, watched, "confined", op)
            agent = _wait_agent(cluster, watched, "confined", op, lambda a: _has(a, "Registered"))
            assert f"tenant {tenant}," in _condition(agent, "Registered")["message"]
            assert _row(postgres, tenant, "confined") is not None
            assert _credentials_row(postgres, tenant, "confined") == [
                {"url": TOOLS_URL, "header": "Authorization", "value": "Bearer rbac-token"}
            ]
            assert "forbidden" not in op.text().lower(), op.tail()
            _delete_agents(cluster, watched)
            assert _row(postgres, tenant, "confined") is None
        finally:
            try:
                _delete_agents(cluster, watched)
            finally:
                if op is not None:
                    op.stop()
                for kind, name in cluster_scoped:
                    cluster.kubectl("delete", kind, name, "--ignore-not-found", check=False)
