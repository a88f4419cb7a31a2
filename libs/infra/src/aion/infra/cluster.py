"""A Kubernetes control plane on one machine, with kwok GPU pools and real nodes.

etcd, kube-apiserver, kube-controller-manager and kube-scheduler are the real
programs, built from their Go modules (deploy/local/build.sh). kwok plays the
kubelets of the `pools` of deploy/local/cluster/pools.yaml: it keeps those
nodes Ready and moves the pods the real scheduler binds to them to Running.
The `realPools` are real kubelets with containerd that run real containers
(aion.infra.node).

Security is the real kind, kept small: a local CA signs the API server's
serving certificate; clients authenticate with static bearer tokens (a token
file) or client certificates (nodes, kube-proxy, CoreDNS), and the API server
authorizes with RBAC, so the controller manager and scheduler act as their own
system users and an operator's ClusterRole means what it says.

The API server listens on all addresses (port AION_KUBE_API_PORT, default
6443): host clients use 127.0.0.1, pods reach it through the `kubernetes`
Service, whose endpoint is the host address on lo (aion.infra.node.HOST_IP).
etcd, the controller manager, the scheduler and kwok listen on 127.0.0.1 only.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import ssl
import subprocess
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from aion.infra import pki
from aion.infra.component import Component, InfraError, wait_until
from aion.infra.node import HOST_IP, RealNodes
from aion.infra.paths import REPO, Layout, versions
from aion.infra.process import Daemon, run

POOLS_FILE = REPO / "deploy" / "local" / "cluster" / "pools.yaml"
SERVICE_CIDR = "10.96.0.0/16"
KWOK_NODE_ANNOTATION = "kwok.x-k8s.io/node"

# The identities the token file defines: (user, groups).
IDENTITIES: dict[str, tuple[str, str]] = {
    "admin": ("aion-admin", "system:masters"),
    "controller-manager": ("system:kube-controller-manager", ""),
    "scheduler": ("system:kube-scheduler", ""),
    # kwok patches node and pod status the way kubelets do.
    "kwok": ("kwok-controller", "system:masters"),
}


def _port(var: str, default: int) -> int:
    return int(os.environ.get(var) or default)


def render_nodes(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Node objects for the pools in a pools.yaml document (pure)."""
    pool_label = doc["poolLabel"]
    taint = doc.get("gpuTaint")
    nodes: list[dict[str, Any]] = []
    for pool in doc["pools"]:
        gpu = pool.get("gpu")
        for i in range(int(pool["nodes"])):
            name = f"{pool['name']}-{i}"
            labels = {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "node.kubernetes.io/instance-type": pool["instanceType"],
                "topology.kubernetes.io/zone": "local-a",
                "type": "kwok",
                pool_label: pool["name"],
            }
            capacity = {"cpu": str(pool["cpu"]), "memory": str(pool["memory"]), "pods": "110"}
            spec: dict[str, Any] = {}
            if gpu:
                labels |= {
                    "nvidia.com/gpu.present": "true",
                    "nvidia.com/gpu.product": gpu["product"],
                    "nvidia.com/gpu.count": str(gpu["count"]),
                    "nvidia.com/gpu.memory": str(gpu["memoryMiB"]),
                    "nvidia.com/gpu.family": gpu.get("family", ""),
                }
                capacity["nvidia.com/gpu"] = str(gpu["count"])
                if taint:
                    spec["taints"] = [dict(taint)]
            nodes.append(
                {
                    "apiVersion": "v1",
                    "kind": "Node",
                    "metadata": {
                        "name": name,
                        "labels": labels,
                        "annotations": {
                            KWOK_NODE_ANNOTATION: "fake",
                            "node.alpha.kubernetes.io/ttl": "0",
                        },
                    },
                    "spec": spec,
                    "status": {
                        "capacity": capacity,
                        "allocatable": dict(capacity),
                        "nodeInfo": {
                            "architecture": "amd64",
                            "operatingSystem": "linux",
                            "kubeletVersion": "fake",
                            "kubeProxyVersion": "fake",
                        },
                    },
                }
            )
    return nodes


class Cluster(Component):
    name = "cluster"
    build_target = "kube etcd kwok node"
    start_timeout = 180.0

    def __init__(self, layout: Layout) -> None:
        super().__init__(layout)
        v = versions()
        self.root = layout.data("cluster")
        self.pki = self.root / "pki"
        self.kube_bin = layout.cache / f"kubernetes-{v['KUBERNETES_VERSION']}" / "bin"
        self.etcd_bin = layout.cache / f"etcd-{v['ETCD_VERSION']}" / "bin" / "etcd"
        self.kwok_bin = layout.cache / f"kwok-{v['KWOK_VERSION']}" / "bin" / "kwok"
        self.etcd_port = _port("AION_ETCD_PORT", 12379)
        self.api_port = _port("AION_KUBE_API_PORT", 6443)
        self.kcm_port = _port("AION_KUBE_CONTROLLER_MANAGER_PORT", 10257)
        self.scheduler_port = _port("AION_KUBE_SCHEDULER_PORT", 10259)
        self.kwok_port = _port("AION_KWOK_PORT", 10247)
        self.pools = yaml.safe_load(POOLS_FILE.read_text())
        self.nodes = RealNodes(
            layout, self.pools, pki_dir=self.pki, server=self.server, kubectl=self.kubectl
        )
        self._rbac_applied = False

    # -- addresses ----------------------------------------------------------------
    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.api_port}"

    @property
    def kubeconfig(self) -> Path:
        """The admin kubeconfig (cluster-admin through system:masters)."""
        return self.root / "admin.kubeconfig"

    @property
    def kubectl_path(self) -> Path:
        return self.kube_bin / "kubectl"

    def path_dirs(self) -> list[Path]:
        helm = self.layout.cache / f"helm-{versions()['HELM_VERSION']}" / "bin"
        return [self.kube_bin, *([helm] if helm.exists() else [])]

    def endpoints(self) -> dict[str, str]:
        # AION_HOST_IP: where pods on the real nodes reach services on this machine.
        return {
            "KUBECONFIG": str(self.kubeconfig),
            "AION_KUBE_API": self.server,
            "AION_HOST_IP": HOST_IP,
        }

    # -- daemons ------------------------------------------------------------------
    def make_daemons(self) -> list[Daemon]:
        L = self.layout
        pki = self.pki
        etcd = Daemon(
            "etcd",
            [
                str(self.etcd_bin),
                "--name=aion-local",
                f"--data-dir={self.root / 'etcd'}",
                f"--listen-client-urls=http://127.0.0.1:{self.etcd_port}",
                f"--advertise-client-urls=http://127.0.0.1:{self.etcd_port}",
                f"--listen-peer-urls=http://127.0.0.1:{self.etcd_port + 1}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{self.etcd_port + 1}",
                f"--initial-cluster=aion-local=http://127.0.0.1:{self.etcd_port + 1}",
                "--quota-backend-bytes=4294967296",
                "--unsafe-no-fsync=false",
            ],
            L,
        )
        apiserver = Daemon(
            "kube-apiserver",
            [
                str(self.kube_bin / "kube-apiserver"),
                f"--etcd-servers=http://127.0.0.1:{self.etcd_port}",
                "--bind-address=0.0.0.0",
                f"--advertise-address={HOST_IP}",
                f"--secure-port={self.api_port}",
                f"--tls-cert-file={pki / 'apiserver.crt'}",
                f"--tls-private-key-file={pki / 'apiserver.key'}",
                f"--client-ca-file={pki / 'ca.crt'}",
                f"--token-auth-file={self.root / 'tokens.csv'}",
                "--authorization-mode=RBAC",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={pki / 'sa.pub'}",
                f"--service-account-signing-key-file={pki / 'sa.key'}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--allow-privileged=true",
                "--profiling=false",
                # Logs, exec and port-forward reach kubelets by node address, as
                # a cluster-admin client (O=system:masters) the kubelets verify.
                "--kubelet-preferred-address-types=InternalIP,Hostname",
                f"--kubelet-client-certificate={pki / 'apiserver-kubelet-client.crt'}",
                f"--kubelet-client-key={pki / 'apiserver-kubelet-client.key'}",
            ],
            L,
        )

        def component_flags(kubeconfig: str, port: int) -> list[str]:
            # The controller manager and the scheduler: one identity, loopback only.
            return [
                f"--kubeconfig={kubeconfig}",
                f"--authentication-kubeconfig={kubeconfig}",
                f"--authorization-kubeconfig={kubeconfig}",
                f"--secure-port={port}",
                "--bind-address=127.0.0.1",
                "--leader-elect=false",
                "--profiling=false",
            ]

        controller_manager = Daemon(
            "kube-controller-manager",
            [
                str(self.kube_bin / "kube-controller-manager"),
                *component_flags(str(self.root / "controller-manager.kubeconfig"), self.kcm_port),
                f"--service-account-private-key-file={pki / 'sa.key'}",
                f"--root-ca-file={pki / 'ca.crt'}",
                "--use-service-account-credentials=true",  # each controller its own identity
                "--allocate-node-cidrs=false",
            ],
            L,
        )
        scheduler = Daemon(
            "kube-scheduler",
            [
                str(self.kube_bin / "kube-scheduler"),
                *component_flags(str(self.root / "scheduler.kubeconfig"), self.scheduler_port),
            ],
            L,
        )
        kwok = Daemon(
            "kwok",
            [
                str(self.kwok_bin),
                f"--kubeconfig={self.root / 'kwok.kubeconfig'}",
                "--manage-all-nodes=false",
                f"--manage-nodes-with-annotation-selector={KWOK_NODE_ANNOTATION}=fake",
                "--manage-nodes-with-label-selector=",
                "--manage-single-node=",
                "--cidr=10.0.0.0/16",
                "--node-ip=10.0.0.1",
                "--node-lease-duration-seconds=40",
                f"--server-address=127.0.0.1:{self.kwok_port}",
                f"--config={self.kwok_bin.parent.parent / 'stages.yaml'}",
            ],
            L,
        )
        return [etcd, apiserver, controller_manager, scheduler, kwok, *self.nodes.daemons()]

    # -- probes -------------------------------------------------------------------
    def daemon_ready(self, daemon: Daemon) -> bool:
        if daemon.name == "etcd":
            body = _get(f"http://127.0.0.1:{self.etcd_port}/health")
            return body is not None and '"health":"true"' in body.replace(" ", "")
        if daemon.name == "kube-apiserver":
            if self._api_get("/readyz") != "ok":
                return False
            if not self._rbac_applied:
                # Before any kubelet starts: the bindings its identity needs.
                self.nodes.apply_rbac()
                self._rbac_applied = True
            return True
        if daemon.name == "kube-controller-manager":
            return _get(f"https://127.0.0.1:{self.kcm_port}/healthz", insecure=True) == "ok"
        if daemon.name == "kube-scheduler":
            return _get(f"https://127.0.0.1:{self.scheduler_port}/healthz", insecure=True) == "ok"
        if daemon.name == "kwok":
            return _get(f"http://127.0.0.1:{self.kwok_port}/healthz") == "ok"
        if self.nodes.owns(daemon):
            return self.nodes.daemon_ready(daemon)
        return True

    def ready(self) -> bool:
        return self._api_get("/readyz") == "ok"

    def _api_get(self, path: str) -> str | None:
        token_file = self.root / "tokens.csv"
        if not token_file.exists():
            return None
        ctx = ssl.create_default_context(cafile=str(self.pki / "ca.crt"))
        return _get(self.server + path, ctx=ctx, token=self._tokens()["admin"])

    # -- one-time set-up ------------------------------------------------------------
    def prepare(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o700)
        self._make_pki()
        tokens = self._tokens()
        for ident, kc in (
            ("admin", "admin"),
            ("controller-manager", "controller-manager"),
            ("scheduler", "scheduler"),
            ("kwok", "kwok"),
        ):
            self._write_kubeconfig(self.root / f"{kc}.kubeconfig", tokens[ident], ident)
        self._restart_stale_daemons()
        self.nodes.prepare()

    def _restart_stale_daemons(self) -> None:
        # A daemon left running by an older version of this module (other flags)
        # is stopped, so the start that follows runs it as this version says.
        for d in self.daemons():
            pid = d.pid()
            if pid is None:
                continue
            try:
                running = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:-1]
            except OSError:
                continue
            if [a.decode(errors="replace") for a in running] != list(d.argv):
                d.stop()

    def _tokens(self) -> dict[str, str]:
        """Bearer tokens per identity, made once and kept in tokens.csv."""
        path = self.root / "tokens.csv"
        if path.exists():
            out = {}
            for line in path.read_text().splitlines():
                token, _user, ident, *_ = line.split(",")
                out[ident] = token
            if set(out) == set(IDENTITIES):
                return out
        out = {ident: secrets.token_hex(24) for ident in IDENTITIES}
        rows = []
        for ident, (user, groups) in IDENTITIES.items():
            # token,user,uid,"group1,group2": the uid column carries our identity key.
            rows.append(
                f'{out[ident]},{user},{ident},"{groups}"'
                if groups
                else f"{out[ident]},{user},{ident}"
            )
        tmp = path.with_suffix(".tmp")
        tmp.write_text("\n".join(rows) + "\n")
        tmp.chmod(0o600)
        tmp.replace(path)
        return out

    def _make_pki(self) -> None:
        p = self.pki
        log = self.layout.log("cluster-setup")
        pki.ensure_ca(p, log)
        # A certificate from before the real nodes lacks the host address: issue
        # it again (same CA, so clients keep trusting it).
        if not pki.has_san(p / "apiserver.crt", f"IP Address:{HOST_IP}"):
            sans = [
                "IP:127.0.0.1",
                f"IP:{HOST_IP}",
                "IP:10.96.0.1",
                "DNS:localhost",
                "DNS:kubernetes",
                "DNS:kubernetes.default",
                "DNS:kubernetes.default.svc",
                "DNS:kubernetes.default.svc.cluster.local",
            ]
            pki.issue(p, "apiserver", "/CN=kube-apiserver", pki.server_ext(sans), log)
        if not (p / "apiserver-kubelet-client.crt").exists():
            subject = "/O=system:masters/CN=kube-apiserver-kubelet-client"
            pki.issue(p, "apiserver-kubelet-client", subject, pki.CLIENT, log)
        if not (p / "sa.pub").exists():
            run(["openssl", "genrsa", "-out", str(p / "sa.key"), "2048"], log=log)
            pub = ["openssl", "rsa", "-in", str(p / "sa.key"), "-pubout"]
            run([*pub, "-out", str(p / "sa.pub.tmp")], log=log)
            (p / "sa.pub.tmp").replace(p / "sa.pub")

    def _write_kubeconfig(self, path: Path, token: str, user: str) -> None:
        ca = base64.b64encode((self.pki / "ca.crt").read_bytes()).decode()
        doc = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "aion-local",
                    "cluster": {"server": self.server, "certificate-authority-data": ca},
                }
            ],
            "users": [{"name": user, "user": {"token": token}}],
            "contexts": [
                {"name": "aion-local", "context": {"cluster": "aion-local", "user": user}}
            ],
            "current-context": "aion-local",
        }
        tmp = path.with_suffix(".tmp")
        tmp.write_text(yaml.safe_dump(doc, sort_keys=False))
        tmp.chmod(0o600)
        tmp.replace(path)

    # -- after start: the node pools ------------------------------------------------
    def after_start(self) -> None:
        nodes = render_nodes(yaml.safe_load(POOLS_FILE.read_text()))
        self.kubectl(
            "apply",
            "--server-side",
            "--field-manager=aion-infra",
            "-f",
            "-",
            stdin=yaml.safe_dump_all(nodes),
        )
        names = {n["metadata"]["name"] for n in nodes}

        def all_ready() -> bool:
            listed = json.loads(self.kubectl("get", "nodes", "-o", "json"))
            ready = {
                item["metadata"]["name"]
                for item in listed["items"]
                if any(
                    c["type"] == "Ready" and c["status"] == "True"
                    for c in item.get("status", {}).get("conditions", [])
                )
                # The node lifecycle controller lifts its not-ready taints a moment later.
                and not any(
                    t["key"].startswith("node.kubernetes.io/")
                    for t in item.get("spec", {}).get("taints", [])
                )
            }
            return names <= ready

        if not wait_until(all_ready, self.start_timeout, interval=0.5):
            raise InfraError(
                self.name, "kwok did not make the nodes Ready", self.layout.log("kwok")
            )

        self._wait_default_service_account("default")
        self.nodes.after_start(self.start_timeout)

    def down(self) -> None:
        # The real nodes first: their pods, runtimes and host state, while the
        # API server still answers; then the control plane.
        self.nodes.down()
        super().down()

    def create_namespace(self, name: str) -> None:
        """Create a namespace and wait until pods can be created in it."""
        self.kubectl("create", "namespace", name)
        self._wait_default_service_account(name)

    def _wait_default_service_account(self, namespace: str) -> None:
        # Pods need the namespace's default ServiceAccount, which the controller
        # manager creates a moment after the namespace; wait so callers do not race it.
        def exists() -> bool:
            out = self.kubectl(
                "get",
                "serviceaccount",
                "default",
                "-n",
                namespace,
                "--ignore-not-found",
                "-o",
                "name",
            )
            return out.strip() != ""

        if not wait_until(exists, self.start_timeout, interval=0.5):
            raise InfraError(
                self.name,
                f"no default ServiceAccount in {namespace}",
                self.layout.log("kube-controller-manager"),
            )

    def kubectl(
        self, *args: str, stdin: str | None = None, check: bool = True, timeout: float = 60
    ) -> str:
        """Run the built kubectl against this cluster as admin; returns stdout."""
        return kubectl(
            self.kubectl_path, self.kubeconfig, args, stdin=stdin, check=check, timeout=timeout
        )


def kubectl(
    binary: Path,
    kubeconfig: Path,
    args: Sequence[str],
    *,
    stdin: str | None = None,
    check: bool = True,
    timeout: float = 60,
) -> str:
    proc = subprocess.run(
        [str(binary), f"--kubeconfig={kubeconfig}", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if check and proc.returncode != 0:
        raise subprocess.CalledProcessError(proc.returncode, proc.args, proc.stdout, proc.stderr)
    return proc.stdout


def _get(
    url: str,
    *,
    ctx: ssl.SSLContext | None = None,
    insecure: bool = False,
    token: str | None = None,
    timeout: float = 2.0,
) -> str | None:
    """The body of a GET, or None when it fails for any reason (a probe)."""
    if insecure:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    req = urllib.request.Request(url)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=ctx) as resp:
            body: bytes = resp.read()
            return body.decode(errors="replace").strip()
    except (urllib.error.URLError, OSError, ValueError):
        return None
