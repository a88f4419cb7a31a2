"""``make bench-operator``: N Agents applied at once until all are Ready, against a plain client.

On the local control plane (started or reused; kwok nodes, the real scheduler):

1. raw: one lightkube client creates N executor Deployments and Services (the
   operator's own rendering, on the bench pool) all at once; the clock stops
   when every Deployment has its replica ready (``seconds_floor``; the create
   calls alone take ``seconds_raw_requests``). Its namespace is then deleted,
   and the bench waits until it is gone, so the operator does not share the API
   server with that clean-up;
2. operator: ``python -m aion.operator`` runs (Lease, defaults of the chart) as
   a ServiceAccount of its own; the same client creates N Agents all at once;
   the clock stops when every Agent's status says Ready (``seconds_all_ready``;
   every executor Deployment had its replica ready at ``seconds_executors_ready``,
   so the difference is how late the operator noticed).

``ratio_to_floor`` is the second over the first: what placing, rendering,
applying and following cost over creating the objects directly. The operator's
peak RSS (VmHWM, ``peak_rss_mb``) and the CPU seconds it spent on the N Agents
(``cpu_s``) come from /proc; ``api_requests`` is what the API server dispatched
for the operator's account meanwhile (``apiserver_flowcontrol_dispatched_requests_total``
of a FlowSchema that matches that account alone: ``apiserver_request_total``
does not say who asked). ``load_1m_*`` is the machine's load when each phase
starts; ``operator_errors`` counts the ERROR lines of the operator's log until all
are Ready (its
log level: ``BENCH_OPERATOR_LOG_LEVEL``, default WARNING; the log stays in a
``bench-operator-*`` temporary directory). The bench adds ceil(N/100)+1 kwok
nodes of its own pool (110 pods each) and removes them, and its namespaces, at
the end. Prints one JSON object.

    AGENTS=1000 make bench-operator
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import pathlib
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import httpx2
import lightkube
import yaml
from lightkube import codecs
from lightkube.generic_resource import create_namespaced_resource
from lightkube.models import meta_v1
from lightkube.resources import apps_v1, coordination_v1, core_v1

from aion.core import agentspec
from aion.infra.cluster import Cluster, render_nodes
from aion.infra.devstack import suite
from aion.infra.paths import Layout
from aion.infra.registry import make
from aion.operator import render

POOL = "bench"
POOL_LABEL = "cloud.google.com/gke-nodepool"
ROOT = pathlib.Path(__file__).resolve().parents[3]
CRDS = ROOT / "charts" / "aion" / "crds"
Agent = create_namespaced_resource("aion.dev", "v1alpha1", "Agent", "agents")
SPEC = {
    "model": {"name": "smollm2-135m-instruct"},
    "gpu": {"count": 0},
    "resources": {"cpu": "10m", "memory": "16Mi"},
    "placement": {"allowedPools": [POOL]},
}
TIMEOUT_S = float(os.environ.get("BENCH_TIMEOUT_S", "900"))
NOT_FOUND = 404
TOO_MANY = 429
UNAVAILABLE = 500
DISPATCHED = "apiserver_flowcontrol_dispatched_requests_total{"


def _nodes(agents: int) -> list[dict[str, Any]]:
    return render_nodes(
        {
            "poolLabel": POOL_LABEL,
            "pools": [
                {
                    "name": POOL,
                    "nodes": math.ceil(agents / 100) + 1,
                    "instanceType": "bench",
                    "cpu": "64",
                    "memory": "256Gi",
                }
            ],
        }
    )


async def _until(check: Callable[[], Awaitable[bool]], what: str) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while not await _checked(check):
        if time.monotonic() > deadline:
            raise SystemExit(f"bench-operator: {what} not done after {TIMEOUT_S:.0f}s")
        await asyncio.sleep(0.25)


async def _checked(check: Callable[[], Awaitable[bool]]) -> bool:
    # A shared, loaded API server answers 429 or 503, or slowly, now and then: ask again.
    try:
        return await check()
    except httpx2.TransportError:
        return False
    except lightkube.ApiError as exc:
        code = exc.status.code or 0
        if code == TOO_MANY or code >= UNAVAILABLE:
            return False
        raise


async def _namespace(client: lightkube.AsyncClient, prefix: str) -> str:
    name = f"{prefix}-{uuid.uuid4().hex[:6]}"
    await client.create(core_v1.Namespace(metadata=meta_v1.ObjectMeta(name=name)))

    async def has_account() -> bool:
        return any([a async for a in client.list(core_v1.ServiceAccount, namespace=name)])

    await _until(has_account, f"the default ServiceAccount of {name}")
    return name


async def _raw(client: lightkube.AsyncClient, agents: int) -> tuple[float, float]:
    namespace = await _namespace(client, "bench-raw")
    parsed = agentspec.parse(SPEC)
    objects = []
    for i in range(agents):
        name = f"agent-{i}"
        owner = render.Owner(name=name, uid=str(uuid.uuid4()))
        deployment = render.executor_deployment(
            name,
            namespace,
            parsed,
            pool_label=POOL_LABEL,
            pool=POOL,
            image="aion-executor:bench",
            owner=owner,
        )
        service = render.executor_service(name, namespace, owner=owner)
        for obj in (deployment, service):
            obj["metadata"].pop("ownerReferences")  # no Agent owns them here
            objects.append(codecs.from_dict(obj))
    started = time.monotonic()
    await asyncio.gather(*(client.create(o) for o in objects))
    requests = time.monotonic() - started

    async def all_ready() -> bool:
        return await _ready_deployments(client, namespace) == agents

    await _until(all_ready, "the raw Deployments")
    elapsed = time.monotonic() - started
    await _delete_namespace(client, namespace)
    return elapsed, requests


async def _ready_deployments(client: lightkube.AsyncClient, namespace: str) -> int:
    """How many Deployments in ``namespace`` have a replica ready."""
    return len(
        [
            d
            async for d in client.list(apps_v1.Deployment, namespace=namespace)
            if d.status is not None and (d.status.readyReplicas or 0) >= 1
        ]
    )


async def _delete_namespace(client: lightkube.AsyncClient, name: str) -> None:
    """Delete ``name`` and wait until it is gone, so its clean-up shares nothing later."""
    await client.delete(core_v1.Namespace, name)

    async def gone() -> bool:
        try:
            await client.get(core_v1.Namespace, name)
        except lightkube.ApiError as exc:
            if exc.status.code == NOT_FOUND:
                return True
            raise
        return False

    await _until(gone, f"deleting {name}")


def _spawn(env: dict[str, str], log: pathlib.Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "aion.operator"], env=env, stdout=out, stderr=subprocess.STDOUT
        )


def _identity(cluster: Cluster, namespace: str, directory: pathlib.Path) -> pathlib.Path:
    """A kubeconfig for the operator as a ServiceAccount of its own (cluster-admin).

    A FlowSchema matches that account alone, so the API server counts the
    operator's requests apart from the bench's and from other clients'. It sends
    them to the ``exempt`` priority level, as the admin's are, so nothing is
    throttled that the raw client was not.
    """
    account = {"name": "operator", "namespace": namespace}
    manifests = [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": account},
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": namespace},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": "cluster-admin",
            },
            "subjects": [{"kind": "ServiceAccount", **account}],
        },
        {
            "apiVersion": "flowcontrol.apiserver.k8s.io/v1",
            "kind": "FlowSchema",
            "metadata": {"name": namespace},
            "spec": {
                "matchingPrecedence": 50,
                "priorityLevelConfiguration": {"name": "exempt"},
                "rules": [
                    {
                        "subjects": [{"kind": "ServiceAccount", "serviceAccount": account}],
                        "resourceRules": [
                            {
                                "verbs": ["*"],
                                "apiGroups": ["*"],
                                "resources": ["*"],
                                "clusterScope": True,
                                "namespaces": ["*"],
                            }
                        ],
                        "nonResourceRules": [{"verbs": ["*"], "nonResourceURLs": ["*"]}],
                    }
                ],
            },
        },
    ]
    cluster.kubectl("apply", "-f", "-", stdin=yaml.safe_dump_all(manifests))
    token = cluster.kubectl("create", "token", "operator", "-n", namespace, "--duration=2h")
    config = yaml.safe_load(cluster.kubeconfig.read_text())
    for user in config["users"]:
        user["user"] = {"token": token.strip()}
    path = directory / "kubeconfig"
    path.write_text(yaml.safe_dump(config))
    return path


def _api_requests(cluster: Cluster, schema: str) -> int:
    """Requests the API server has dispatched for the FlowSchema ``schema`` so far."""
    metrics = cluster.kubectl("get", "--raw", "/metrics")
    return sum(
        int(float(line.rsplit(" ", 1)[1]))
        for line in metrics.splitlines()
        if line.startswith(DISPATCHED) and f'flow_schema="{schema}"' in line
    )


def _proc_stats(pid: int) -> tuple[float, float]:
    """CPU seconds (user+system) and peak RSS in MiB of ``pid``."""
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) / ticks
    hwm = next(
        line
        for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines()
        if line.startswith("VmHWM:")
    )
    return cpu, int(hwm.split()[1]) / 1024


async def _operator(
    client: lightkube.AsyncClient, cluster: Cluster, agents: int
) -> dict[str, float]:
    namespace = await _namespace(client, "bench-op")
    directory = pathlib.Path(tempfile.mkdtemp(prefix="bench-operator-"))
    log = directory / "operator.log"
    load = os.getloadavg()[0]
    env = {
        **os.environ,
        "KUBECONFIG": str(_identity(cluster, namespace, directory)),
        "AION_OPERATOR_EXECUTOR_IMAGE": "aion-executor:bench",
        "AION_OPERATOR_NAMESPACES": namespace,
        "AION_OPERATOR_LOG_LEVEL": os.environ.get("BENCH_OPERATOR_LOG_LEVEL", "WARNING"),
        "AION_OPERATOR_LEASE_NAME": namespace,
        "AION_OPERATOR_LEASE_NAMESPACE": "default",
        "AION_OPERATOR_LIVENESS_PORT": str(suite.free_port()),
        "AION_OPERATOR_METRICS_PORT": str(suite.free_port()),
    }
    proc = _spawn(env, log)
    try:

        async def leading() -> bool:
            if proc.poll() is not None:
                raise SystemExit(
                    f"bench-operator: the operator exited; {log}:\n" + log.read_text()[-3000:]
                )
            try:
                lease = await client.get(coordination_v1.Lease, namespace, namespace="default")
            except lightkube.ApiError:
                return False
            return bool(lease.spec and lease.spec.holderIdentity)

        await _until(leading, "the operator's Lease")
        cpu_before, _ = _proc_stats(proc.pid)
        requests_before = _api_requests(cluster, namespace)
        objects = [
            codecs.from_dict(
                {
                    "apiVersion": "aion.dev/v1alpha1",
                    "kind": "Agent",
                    "metadata": {"name": f"agent-{i}", "namespace": namespace},
                    "spec": SPEC,
                }
            )
            for i in range(agents)
        ]
        started = time.monotonic()
        await asyncio.gather(*(client.create(o) for o in objects))

        executors_ready: float | None = None

        async def all_ready() -> bool:
            nonlocal executors_ready
            if executors_ready is None and await _ready_deployments(client, namespace) == agents:
                executors_ready = time.monotonic() - started
            ready = [
                a
                async for a in client.list(Agent, namespace=namespace)
                if (a.get("status") or {}).get("phase") == "Ready"
            ]
            return len(ready) == agents

        await _until(all_ready, "the Agents")
        elapsed = time.monotonic() - started
        errors = _errors(log)  # not counting its stop (kopf's watches may log one then)
        cpu_after, peak_mb = _proc_stats(proc.pid)
        requests = _api_requests(cluster, namespace) - requests_before
        # Delete them while the operator runs (with an agent service, each carries a finalizer).
        await asyncio.gather(
            *(client.delete(Agent, f"agent-{i}", namespace=namespace) for i in range(agents))
        )

        async def gone() -> bool:
            return not [a async for a in client.list(Agent, namespace=namespace)]

        await _until(gone, "deleting the Agents")
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        cluster.kubectl(
            "delete", f"clusterrolebinding/{namespace}", f"flowschema/{namespace}", check=False
        )
    await _delete_namespace(client, namespace)
    return {
        "errors": errors,
        "seconds_all_ready": elapsed,
        "seconds_executors_ready": executors_ready or elapsed,
        "peak_rss_mb": peak_mb,
        "cpu_s": cpu_after - cpu_before,
        "api_requests": requests,
        "load_1m": load,
    }


def _errors(log: pathlib.Path) -> int:
    """How many ERROR lines the operator logged (a failed handler is retried later, and
    its Agent's time counts the wait)."""
    with log.open("rb") as lines:
        return sum(1 for line in lines if b'"level": "ERROR"' in line)


async def _run(cluster: Cluster, agents: int) -> dict[str, Any]:
    cluster.kubectl("apply", "-f", str(CRDS))
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd/agents.aion.dev")
    nodes = _nodes(agents)
    cluster.kubectl("apply", "-f", "-", stdin=yaml.safe_dump_all(nodes))
    config = lightkube.KubeConfig.from_file(str(cluster.kubeconfig))
    # 1,000 creates at once wait for the pool's connections longer than its default 10 s.
    client = lightkube.AsyncClient(
        config=config, field_manager="bench", timeout=httpx2.Timeout(10.0, pool=None)
    )
    try:
        raw_load = os.getloadavg()[0]
        raw_s, raw_requests_s = await _raw(client, agents)
        op = await _operator(client, cluster, agents)
    finally:
        await client.close()
        cluster.kubectl(
            "delete", "nodes", *(n["metadata"]["name"] for n in nodes), "--wait=false", check=False
        )
    per_100 = 100 / agents
    return {
        "agents": agents,
        "seconds_all_ready": round(op["seconds_all_ready"], 2),
        "seconds_executors_ready": round(op["seconds_executors_ready"], 2),
        "seconds_floor": round(raw_s, 2),
        "seconds_raw_requests": round(raw_requests_s, 2),
        "ratio_to_floor": round(op["seconds_all_ready"] / raw_s, 3),
        "peak_rss_mb": round(op["peak_rss_mb"], 1),
        "peak_rss_mb_per_100_agents": round(op["peak_rss_mb"] * per_100, 1),
        "cpu_s": round(op["cpu_s"], 2),
        "cpu_s_per_100_agents": round(op["cpu_s"] * per_100, 2),
        "api_requests": int(op["api_requests"]),
        "api_requests_per_agent": round(op["api_requests"] / agents, 2),
        "load_1m_raw": round(raw_load, 2),
        "load_1m_operator": round(op["load_1m"], 2),
        "operator_errors": int(op["errors"]),
        "bench_nodes": len(nodes),
    }


def main() -> None:
    agents = int(os.environ.get("AGENTS", "200"))
    if not 1 <= agents <= 5000:
        raise SystemExit("bench-operator: AGENTS must be between 1 and 5000")
    cluster = make("cluster", Layout.from_env())
    assert isinstance(cluster, Cluster)
    cluster.up()
    print(json.dumps(asyncio.run(_run(cluster, agents))))


if __name__ == "__main__":
    main()
