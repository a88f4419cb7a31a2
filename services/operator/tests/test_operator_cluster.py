"""The operator as a process against the real control plane (kwok GPU pools, real scheduler).

Pools of deploy/local/cluster/pools.yaml: ``h100`` (2 nodes of 8 H100s) and ``l4``
(4 nodes of 1 L4), named by ``cloud.google.com/gke-nodepool``; GpuPools price h100
at $4.50 and l4 at $0.70 per GPU-hour, so an Agent accepting any GPU goes to l4.
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pytest
import yaml

from aion.infra.cluster import Cluster
from aion.infra.component import poll

pytestmark = pytest.mark.cluster

ROOT = pathlib.Path(__file__).resolve().parents[3]
CRDS = ROOT / "charts" / "aion" / "crds"
POOL_LABEL = "cloud.google.com/gke-nodepool"
TIMEOUT_S = 60.0
T = TypeVar("T")


def _eventually(fetch: Callable[[], T], done: Callable[[T], bool]) -> T:
    return poll(fetch, done, TIMEOUT_S)


def _get(cluster: Cluster, *args: str) -> Any:
    """The object as JSON, or None when it does not exist."""
    out = cluster.kubectl("get", *args, "--ignore-not-found", "-o", "json")
    return json.loads(out) if out.strip() else None


def _items(cluster: Cluster, *args: str) -> list[dict[str, Any]]:
    """The objects a list returns (kubectl prints nothing for none with --ignore-not-found)."""
    found = _get(cluster, *args)
    return list(found["items"]) if found else []


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as resp:
            return int(resp.status) == 200
    except OSError:
        return False


@pytest.fixture(scope="module")
def operator(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """CRDs installed, GpuPools priced, and ``python -m aion.operator`` running; yields its log."""
    cluster.kubectl("apply", "-f", str(CRDS))
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                    "crd/agents.aion.dev", "crd/gpupools.aion.dev")
    pools = [{"apiVersion": "aion.dev/v1alpha1", "kind": "GpuPool", "metadata": {"name": name},
              "spec": {"priceUsdPerGpuHour": price}}
             for name, price in (("h100", 4.5), ("l4", 0.7))]
    cluster.kubectl("apply", "-f", "-", stdin=yaml.safe_dump_all(pools))
    log = tmp_path_factory.mktemp("operator") / "operator.log"
    port = _free_port()
    env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig),
           "AION_OPERATOR_EXECUTOR_IMAGE": "aion-executor:test",
           "AION_OPERATOR_LIVENESS_PORT": str(port),
           "AION_OPERATOR_READINESS_INTERVAL_S": "1", "AION_OPERATOR_RETRY_S": "2"}
    env.pop("AION_OPERATOR_NAMESPACES", None)
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "aion.operator"], env=env,
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        healthy = _eventually(lambda: _healthy(f"http://127.0.0.1:{port}/healthz"), bool)
        assert healthy, log.read_text()[-4000:]
        assert proc.poll() is None, log.read_text()[-4000:]
        yield str(log)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise
        cluster.kubectl("delete", "gpupools", "h100", "l4", "--ignore-not-found")
    assert code == 0, log.read_text()[-4000:]


@pytest.fixture
def namespace(cluster: Cluster, operator: str) -> Iterator[str]:
    name = f"op-{uuid.uuid4().hex[:8]}"
    cluster.create_namespace(name)
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false")


def _apply_agent(cluster: Cluster, namespace: str, name: str, gpu: dict[str, Any]) -> None:
    agent = {"apiVersion": "aion.dev/v1alpha1", "kind": "Agent",
             "metadata": {"name": name, "namespace": namespace},
             "spec": {"model": {"name": "smollm2-135m-instruct"}, "gpu": gpu,
                      "resources": {"cpu": "1", "memory": "2Gi"}}}
    cluster.kubectl("apply", "-f", "-", stdin=json.dumps(agent))


def _condition(agent: dict[str, Any], kind: str) -> dict[str, Any]:
    found = [c for c in (agent.get("status") or {}).get("conditions") or []
             if c["type"] == kind]
    assert len(found) == 1, agent.get("status")
    return dict(found[0])


def _ready_agent(cluster: Cluster, namespace: str, name: str, log: str) -> dict[str, Any]:
    agent = _eventually(lambda: _get(cluster, "agent", name, "-n", namespace),
                  lambda a: a is not None and (a.get("status") or {}).get("phase") == "Ready")
    assert agent is not None
    assert agent["status"].get("phase") == "Ready", (
        agent.get("status"), pathlib.Path(log).read_text()[-4000:])
    return dict(agent)


def _events(cluster: Cluster, namespace: str, name: str, reason: str) -> list[dict[str, Any]]:
    return _items(cluster, "events", "-n", namespace, "--field-selector",
                  f"involvedObject.kind=Agent,involvedObject.name={name},reason={reason}")


def _assert_runs_on_l4(cluster: Cluster, namespace: str, name: str,
                       agent: dict[str, Any]) -> None:
    status = agent["status"]
    assert status["nodePool"] == "l4"
    assert status["observedGeneration"] == agent["metadata"]["generation"]
    assert status["readyReplicas"] == 1
    placed = _condition(agent, "Placed")
    assert (placed["status"], placed["reason"]) == ("True", "Placed")
    assert "l4" in placed["message"]
    ready = _condition(agent, "Ready")
    assert (ready["status"], ready["reason"]) == ("True", "ReplicasReady")
    assert ready["observedGeneration"] == agent["metadata"]["generation"]

    deployment = _get(cluster, "deployment", f"aion-executor-{name}", "-n", namespace)
    assert deployment is not None
    [owner] = deployment["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["name"], owner["uid"], owner["controller"]) == (
        "Agent", name, agent["metadata"]["uid"], True)
    pod = deployment["spec"]["template"]["spec"]
    terms = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"]
    assert terms[0]["matchExpressions"][0] == {"key": POOL_LABEL, "operator": "In",
                                               "values": ["l4"]}
    assert {"key": "nvidia.com/gpu", "operator": "Exists",
            "effect": "NoSchedule"} in pod["tolerations"]
    assert deployment["status"]["readyReplicas"] == 1
    managed = _get(cluster, "deployment", f"aion-executor-{name}", "-n", namespace,
                   "--show-managed-fields")
    managers = {m["manager"] for m in managed["metadata"]["managedFields"]
                if m["operation"] == "Apply"}
    assert managers == {"aion-operator"}

    service = _get(cluster, "service", f"aion-executor-{name}", "-n", namespace)
    assert service is not None
    assert service["metadata"]["ownerReferences"][0]["uid"] == agent["metadata"]["uid"]

    pods = _items(cluster, "pods", "-n", namespace, "-l", f"aion.dev/agent={name}")
    assert len(pods) == 1
    assert pods[0]["status"]["phase"] == "Running"
    assert pods[0]["spec"]["nodeName"].startswith("l4-")
    events = _events(cluster, namespace, name, "Placed")
    assert events
    assert events[0]["type"] == "Normal"


def test_agent_accepting_only_l4_runs_on_l4_and_is_ready(
        cluster: Cluster, namespace: str, operator: str) -> None:
    _apply_agent(cluster, namespace, "only-l4", {"count": 1, "products": ["NVIDIA-L4"]})
    agent = _ready_agent(cluster, namespace, "only-l4", operator)
    _assert_runs_on_l4(cluster, namespace, "only-l4", agent)


def test_agent_accepting_any_gpu_goes_to_the_cheapest_pool(
        cluster: Cluster, namespace: str, operator: str) -> None:
    _apply_agent(cluster, namespace, "any-gpu", {"count": 1})
    agent = _ready_agent(cluster, namespace, "any-gpu", operator)
    _assert_runs_on_l4(cluster, namespace, "any-gpu", agent)
    assert "$0.70" in _condition(agent, "Placed")["message"]


def test_unknown_gpu_product_is_not_placed_and_says_why(
        cluster: Cluster, namespace: str, operator: str) -> None:
    _apply_agent(cluster, namespace, "b200", {"count": 1, "products": ["NVIDIA-B200"]})
    agent = _eventually(lambda: _get(cluster, "agent", "b200", "-n", namespace),
                  lambda a: a is not None and bool((a.get("status") or {}).get("conditions")))
    assert agent is not None
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


def test_deleting_an_agent_garbage_collects_its_executor(
        cluster: Cluster, namespace: str, operator: str) -> None:
    _apply_agent(cluster, namespace, "short-lived", {"count": 1, "products": ["NVIDIA-L4"]})
    _ready_agent(cluster, namespace, "short-lived", operator)
    executor = "aion-executor-short-lived"
    assert _get(cluster, "deployment", executor, "-n", namespace) is not None
    assert _get(cluster, "service", executor, "-n", namespace) is not None
    cluster.kubectl("delete", "agent", "short-lived", "-n", namespace, "--timeout=60s")
    gone = _eventually(lambda: (_get(cluster, "deployment", executor, "-n", namespace),
                          _get(cluster, "service", executor, "-n", namespace)),
                 lambda objs: objs == (None, None))
    assert gone == (None, None)
    pods = _eventually(lambda: _items(cluster, "pods", "-n", namespace, "-l",
                                "aion.dev/agent=short-lived"), lambda items: not items)
    assert pods == []
