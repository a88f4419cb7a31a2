"""The local cluster's real nodes: kubelets with containerd running real containers.

Pods run the probe image (deploy/local/cluster/probe) that every real node
imports at start: `probe serve` answers HTTP with its pod name, `probe get`
fetches URLs, `probe api` calls the API server with the pod's ServiceAccount.
A failure shows the pod's description and the tail of its kubelet's log.
"""

from __future__ import annotations

import http.server
import json
import os
import socket
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from aion.infra.cluster import POOLS_FILE, Cluster
from aion.infra.component import InfraError, poll
from aion.infra.node import HOST_IP, POD_CIDR, probe_image, real_nodes
from aion.infra.oci_registry import ImageRegistry
from aion.infra.paths import Layout
from aion.infra.process import tail

pytestmark = pytest.mark.cluster

DOC = yaml.safe_load(POOLS_FILE.read_text())
POOL_LABEL = DOC["poolLabel"]
NODES = [(n.name, n.pool, n.ip) for n in real_nodes(DOC, POOLS_FILE.parent)]
TIMEOUT = 90.0


def _json(cluster: Cluster, *args: str) -> Any:
    return json.loads(cluster.kubectl(*args, "-o", "json"))


@pytest.fixture
def namespace(cluster: Cluster) -> Iterator[str]:
    name = f"real-{uuid.uuid4().hex[:8]}"
    cluster.create_namespace(name)
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false")


@pytest.fixture(scope="module")
def registry() -> Iterator[ImageRegistry]:
    """The local OCI registry the nodes pull from (started or reused)."""
    reg = ImageRegistry(Layout.from_env())
    was_running = reg.running() and reg.ready()
    try:
        reg.up()
    except InfraError as exc:
        if not was_running:
            reg.down()
        pytest.fail(str(exc), pytrace=False)
    yield reg
    if was_running or os.environ.get("AION_INFRA_KEEP") == "1":
        reg.detach()
    else:
        reg.down()


def _diagnose(cluster: Cluster, namespace: str, pod: str) -> str:
    described = cluster.kubectl("describe", "pod", pod, "-n", namespace, check=False)
    node = cluster.kubectl(
        "get", "pod", pod, "-n", namespace, "-o", "jsonpath={.spec.nodeName}", check=False
    )
    logs = [cluster.layout.log(f"kubelet-{node or NODES[0][0]}")]
    logs.append(cluster.layout.log(f"containerd-{node or NODES[0][0]}"))
    tails = "\n".join(f"---- {p} ----\n{tail(p, 25)}" for p in logs)
    return f"{described}\n{tails}"


def _pod(name: str, node: str, args: list[str], *, restart: str = "Always") -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "probe" if args[0] == "serve" else name}},
        "spec": {
            "nodeSelector": {"kubernetes.io/hostname": node},
            "restartPolicy": restart,
            "terminationGracePeriodSeconds": 2,
            "containers": [
                {
                    "name": "probe",
                    "image": probe_image(),
                    "imagePullPolicy": "IfNotPresent",
                    "args": args,
                    "resources": {
                        "requests": {"cpu": "10m", "memory": "16Mi"},
                        "limits": {"memory": "64Mi"},
                    },
                }
            ],
        },
    }


def _apply(cluster: Cluster, namespace: str, *objects: dict[str, Any]) -> None:
    doc = {"apiVersion": "v1", "kind": "List", "items": list(objects)}
    cluster.kubectl("apply", "-n", namespace, "-f", "-", stdin=json.dumps(doc))


def _running(cluster: Cluster, namespace: str, pod: str) -> dict[str, Any]:
    got: dict[str, Any] = poll(
        lambda: _json(cluster, "get", "pod", pod, "-n", namespace),
        lambda p: p["status"].get("phase") == "Running" and bool(p["status"].get("podIP")),
        timeout=TIMEOUT,
    )
    assert got["status"].get("phase") == "Running", _diagnose(cluster, namespace, pod)
    return got


def _finished(cluster: Cluster, namespace: str, pod: str) -> str:
    """Wait for a run-once pod to end; returns its log, asserting it succeeded."""
    got = poll(
        lambda: _json(cluster, "get", "pod", pod, "-n", namespace),
        lambda p: p["status"].get("phase") in ("Succeeded", "Failed"),
        timeout=TIMEOUT,
    )
    logs = cluster.kubectl("logs", pod, "-n", namespace, check=False)
    assert got["status"].get("phase") == "Succeeded", (
        f"{pod}: {got['status'].get('phase')}\nlogs:\n{logs}\n{_diagnose(cluster, namespace, pod)}"
    )
    return logs


def test_real_nodes_are_ready_in_their_pool_without_gpus(cluster: Cluster) -> None:
    assert len(NODES) >= 2, "pools.yaml must define at least two real nodes"
    for name, pool, ip in NODES:
        node = _json(cluster, "get", "node", name)
        labels = node["metadata"]["labels"]
        assert labels[POOL_LABEL] == pool
        assert labels["type"] == "real"
        assert "kwok.x-k8s.io/node" not in node["metadata"].get("annotations", {})
        ready = [c for c in node["status"]["conditions"] if c["type"] == "Ready"]
        assert ready, node["status"]
        assert ready[0]["status"] == "True", (
            f"{name}: {ready}\n{tail(cluster.layout.log(f'kubelet-{name}'))}"
        )
        assert not node["spec"].get("taints"), node["spec"]
        assert "nvidia.com/gpu" not in node["status"]["allocatable"]
        assert {"type": "InternalIP", "address": ip} in node["status"]["addresses"]
        # A real kubelet, the same build as the control plane.
        version = cluster.kubectl("version", "-o", "json")
        assert (
            node["status"]["nodeInfo"]["kubeletVersion"]
            == json.loads(version)["serverVersion"]["gitVersion"]
        )
        assert node["status"]["nodeInfo"]["containerRuntimeVersion"].startswith("containerd://")


def test_pods_on_both_nodes_reach_each_other_a_service_dns_the_api_and_the_host(
    cluster: Cluster, namespace: str
) -> None:
    (first, _, _), (second, _, _) = NODES[:2]
    servers = {first: "server-a", second: "server-b"}
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "probe"},
        "spec": {"selector": {"app": "probe"}, "ports": [{"port": 80, "targetPort": 8080}]},
    }
    _apply(
        cluster, namespace, service, *(_pod(pod, node, ["serve"]) for node, pod in servers.items())
    )
    ips = {}
    for node, pod in servers.items():
        got = _running(cluster, namespace, pod)
        assert got["spec"]["nodeName"] == node
        ips[pod] = got["status"]["podIP"]
    subnets = {ip.rsplit(".", 1)[0] for ip in ips.values()}
    assert len(subnets) == 2, f"each node has its own pod subnet: {ips}"
    assert all(ip.startswith(POD_CIDR.split(".0.0/")[0] + ".") for ip in ips.values()), ips
    cluster_ip = _json(cluster, "get", "service", "probe", "-n", namespace)["spec"]["clusterIP"]

    # A host HTTP server on the host address, as Kafka, Postgres and MinIO will be.
    handler = type(
        "Hello",
        (http.server.BaseHTTPRequestHandler,),
        {
            "do_GET": lambda self: (
                self.send_response(200),
                self.end_headers(),
                self.wfile.write(b"hello from the host\n"),
            ),
            "log_message": lambda self, *a: None,
        },
    )
    host = http.server.ThreadingHTTPServer((HOST_IP, 0), handler)
    host_port = host.server_address[1]
    threading.Thread(target=host.serve_forever, daemon=True).start()
    try:
        # From each node, the server on the other node, by pod address.
        across = {
            "client-a": (first, ips["server-b"], "server-b"),
            "client-b": (second, ips["server-a"], "server-a"),
        }
        _apply(
            cluster,
            namespace,
            *(
                _pod(c, node, ["get", f"http://{ip}:8080/"], restart="Never")
                for c, (node, ip, _) in across.items()
            ),
            _pod(
                "client-svc",
                first,
                ["get", *[f"http://{cluster_ip}/"] * 3, f"http://probe.{namespace}.svc/"],
                restart="Never",
            ),
            _pod("client-api", second, ["api"], restart="Never"),
            _pod(
                "client-host",
                second,
                [
                    "get",
                    f"http://{HOST_IP}:{host_port}/",
                    f"http://host.aion.internal:{host_port}/",
                ],
                restart="Never",
            ),
        )
        for client, (_, _, server) in across.items():
            assert f"hello from {server}" in _finished(cluster, namespace, client)
        svc = _finished(cluster, namespace, "client-svc")
        assert svc.count("hello from server-") == 4, svc
        api = _finished(cluster, namespace, "client-api")
        assert '"gitVersion"' in api, api
        # By address, and by the name CoreDNS gives the host.
        assert _finished(cluster, namespace, "client-host").count("hello from the host") == 2
    finally:
        host.shutdown()
        host.server_close()

    # kubectl logs reaches the kubelet: the servers logged the clients' requests.
    for pod in servers.values():
        logs = cluster.kubectl("logs", pod, "-n", namespace)
        assert "probe serving on :8080" in logs, logs
        assert "request from" in logs, logs


def test_kubelets_refuse_anonymous_callers(cluster: Cluster) -> None:
    # The kubelet API authenticates callers by certificate or token.
    name, _, ip = NODES[0]
    with socket.create_connection((ip, 10250), timeout=2):
        pass  # it listens on its node address
    import ssl
    import urllib.error
    import urllib.request

    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(f"https://{ip}:10250/pods", context=ctx, timeout=5)
    info.value.close()
    assert info.value.code == 401, f"{name}: {info.value.code}"


def test_a_node_pulls_an_image_from_the_local_registry_over_plain_http(
    cluster: Cluster, registry: ImageRegistry, namespace: str
) -> None:
    node = NODES[-1][0]
    local = probe_image()
    pushed = f"localhost:{registry.port}/aion/probe:{local.rsplit(':', 1)[1]}"
    # Push the probe image from the node's own store. The pod pulls it Always, so
    # the runtime resolves it in the registry whatever the node holds. (No name is
    # removed from the node: containerd's CRI forgets every name of an image when
    # one of them is removed with ctr.)
    cluster.nodes.ctr(node, "images", "tag", "--force", local, pushed)
    cluster.nodes.ctr(node, "images", "push", "--plain-http", pushed)
    pod = _pod("pulled", node, ["serve"])
    pod["spec"]["containers"][0] |= {"image": pushed, "imagePullPolicy": "Always"}
    _apply(cluster, namespace, pod)
    _running(cluster, namespace, "pulled")
    events = _json(
        cluster,
        "get",
        "events",
        "-n",
        namespace,
        "--field-selector",
        "involvedObject.name=pulled,reason=Pulled",
    )["items"]
    assert any(pushed in e["message"] for e in events), events
    assert pushed in cluster.nodes.ctr(node, "images", "ls", "-q").split()
