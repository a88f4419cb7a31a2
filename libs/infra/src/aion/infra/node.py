"""Real nodes beside kwok: kubelets that run real containers on this machine.

Each node of `realPools` in deploy/local/cluster/pools.yaml is a kubelet with
its own containerd (Debian's runc, the CNI bridge plugin), its own address on
the loopback interface, its own bridge and /24 of POD_CIDR, its own cgroup root
(`/aion-<node>` in every cgroup v1 hierarchy) and its own folders under
`AION_INFRA_HOME/nodes/<node>`. The nodes share the host's network stack, so
one kube-proxy (iptables mode) serves Services for all of them and the host
routes between their bridges; CoreDNS answers `cluster.local` names on the
host address. Pod traffic stays on this machine: nothing is masqueraded out.

Addresses (all on `lo`, so they are the same on every machine):

- HOST_IP (AION_HOST_IP, default 10.200.0.1): where pods reach the host: the
  API server (the `kubernetes` Service's endpoint), CoreDNS on port 53, and any
  host service listening there (Kafka, Postgres, MinIO, the image registry).
- node i: 10.200.0.(11+i), its kubelet on port 10250; pods on 10.244.i.0/24.

Identities are client certificates from the cluster CA: `system:node:<node>`
in `system:nodes` (bound to ClusterRole system:node), `system:kube-proxy`,
and `system:aion:coredns` (deploy/local/cluster/rbac.yaml). Kubelets
authenticate callers by certificate and authorize them with the API server.

Images: each containerd imports the pause and probe images (OCI archives that
deploy/local/build.sh makes) before its kubelet starts, so no registry is
needed; other images are pulled over plain HTTP from the local registry at
localhost:5000 or HOST_IP:5000 (REGISTRY_HOSTS).

Host state the nodes change, all undone by `down`: addresses on lo, bridges,
iptables chains (KUBE-*, CNI-*), cgroups, mounts, /var/lib/kubelet,
/var/lib/cni, /run/containerd, and the sysctls in SYSCTLS (the kubelet and the
bridge plugin set some; their values before the first start are restored).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from aion.infra import pki
from aion.infra.component import InfraError, wait_until
from aion.infra.paths import REPO, Layout, versions
from aion.infra.process import Daemon

HOST_IP = os.environ.get("AION_HOST_IP") or "10.200.0.1"
POD_CIDR = "10.244.0.0/16"
CLUSTER_DOMAIN = "cluster.local"
REGISTRY_PORT = 5000
REGISTRY_HOSTS = (f"localhost:{REGISTRY_PORT}", f"127.0.0.1:{REGISTRY_PORT}")
RBAC_FILE = REPO / "deploy" / "local" / "cluster" / "rbac.yaml"
PROBE_SOURCE = REPO / "deploy" / "local" / "cluster" / "probe" / "main.go"
KUBELET_PORT = 10250
KUBELET_HEALTHZ_PORT = 10248
KUBE_PROXY_HEALTHZ = "127.0.0.1:10256"
KUBE_PROXY_METRICS = "127.0.0.1:10249"
COREDNS_READY = "127.0.0.1:18181"
# Host settings a kubelet (protectKernelDefaults: false) or the bridge plugin
# changes, or that Services on a bridge need; restored at `down`.
SYSCTLS = {
    "net.ipv4.ip_forward": "1",
    "net.bridge.bridge-nf-call-iptables": "1",
    "vm.overcommit_memory": None,
    "kernel.panic": None,
    "kernel.panic_on_oops": None,
}
CHAIN_PREFIXES = ("KUBE-", "CNI-")
CGROUP_FS = Path("/sys/fs/cgroup")
# Hard-coded places the kubelet, libcni and the runc shim use beside ours.
SHARED_DIRS = (Path("/var/lib/kubelet"), Path("/var/lib/cni"), Path("/run/containerd"))


def _host_prefix() -> str:
    return HOST_IP.rsplit(".", 1)[0]


@dataclass(frozen=True)
class RealNode:
    """One real node: its name, pool, addresses and folders."""

    name: str
    pool: str
    index: int
    root: Path

    @property
    def ip(self) -> str:
        return f"{_host_prefix()}.{11 + self.index}"

    @property
    def subnet(self) -> str:
        return f"10.244.{self.index}.0/24"

    @property
    def bridge(self) -> str:
        return f"aion-br{self.index}"

    @property
    def cgroup(self) -> str:
        return f"aion-{self.name}"

    @property
    def socket(self) -> Path:
        return self.root / "containerd" / "containerd.sock"

    @property
    def kubelet_root(self) -> Path:
        return self.root / "kubelet"


def real_nodes(doc: dict[str, Any], root: Path) -> list[RealNode]:
    """The real nodes a pools.yaml document asks for (pure)."""
    out: list[RealNode] = []
    for pool in doc.get("realPools", []):
        for i in range(int(pool["nodes"])):
            out.append(RealNode(f"{pool['name']}-{i}", pool["name"], len(out), root))
    return [RealNode(n.name, n.pool, n.index, root / n.name) for n in out]


def node_labels(doc: dict[str, Any], node: RealNode) -> dict[str, str]:
    """The labels a real node carries (pure): its pool, and that it is real."""
    pool = next(p for p in doc["realPools"] if p["name"] == node.pool)
    return {
        doc["poolLabel"]: node.pool,
        "type": "real",
        "node.kubernetes.io/instance-type": str(pool.get("instanceType", "local")),
        "topology.kubernetes.io/zone": "local-a",
    }


class RealNodes:
    """The real nodes' daemons, their configuration and their teardown."""

    def __init__(
        self,
        layout: Layout,
        doc: dict[str, Any],
        *,
        pki_dir: Path,
        server: str,
        kubectl: Callable[..., str],
    ) -> None:
        v = versions()
        self.layout = layout
        self.doc = doc
        self.pki = pki_dir
        self.server = server
        self.kubectl = kubectl
        self.root = layout.data("nodes")
        self.nodes = real_nodes(doc, self.root)
        cache = layout.cache
        self.kube_bin = cache / f"kubernetes-{v['KUBERNETES_VERSION']}" / "bin"
        self.containerd_bin = cache / f"containerd-{v['CONTAINERD_VERSION']}" / "bin"
        self.cni_bin = cache / f"cni-plugins-{v['CNI_PLUGINS_VERSION']}" / "bin"
        self.coredns_bin = cache / f"coredns-{v['COREDNS_VERSION']}" / "bin" / "coredns"
        self.pause_image = f"localhost/aion/pause:{v['KUBERNETES_VERSION']}"
        self.images = {
            self.pause_image: cache / f"pause-{v['KUBERNETES_VERSION']}" / "pause.oci.tar",
            probe_image(): cache / f"probe-{probe_tag()}" / "probe.oci.tar",
        }
        self._daemons: dict[str, Daemon] | None = None
        self._imported: set[str] = set()

    # -- daemons ------------------------------------------------------------------
    def daemons(self) -> list[Daemon]:
        if self._daemons is None:
            self._daemons = {d.name: d for d in self._make_daemons()}
        return list(self._daemons.values())

    def _env(self) -> dict[str, str]:
        path = f"{self.containerd_bin}:/usr/local/sbin:/usr/sbin:/sbin:{os.environ['PATH']}"
        return {"PATH": path}

    def _make_daemons(self) -> list[Daemon]:
        L = self.layout
        out: list[Daemon] = []
        for n in self.nodes:
            out.append(
                Daemon(
                    f"containerd-{n.name}",
                    [
                        str(self.containerd_bin / "containerd"),
                        f"--config={n.root / 'containerd.toml'}",
                    ],
                    L,
                    env=self._env(),
                )
            )
            labels = ",".join(
                f"{k}={v}" for k, v in node_labels(self.doc, n).items() if "kubernetes.io" not in k
            )
            out.append(
                Daemon(
                    f"kubelet-{n.name}",
                    [
                        str(self.kube_bin / "kubelet"),
                        f"--config={n.root / 'kubelet.yaml'}",
                        f"--kubeconfig={n.root / 'kubelet.kubeconfig'}",
                        f"--root-dir={n.kubelet_root}",
                        f"--cert-dir={n.root / 'kubelet-pki'}",
                        f"--hostname-override={n.name}",
                        f"--node-ip={n.ip}",
                        f"--node-labels={labels}",
                        "--v=1",
                    ],
                    L,
                    env=self._env(),
                )
            )
        out.append(
            Daemon(
                "kube-proxy",
                [str(self.kube_bin / "kube-proxy"), f"--config={self.root / 'kube-proxy.yaml'}"],
                L,
                env=self._env(),
            )
        )
        out.append(
            Daemon("coredns", [str(self.coredns_bin), "-conf", str(self.root / "Corefile")], L)
        )
        return out

    def owns(self, daemon: Daemon) -> bool:
        return daemon in self.daemons()

    def daemon_ready(self, daemon: Daemon) -> bool:
        name = daemon.name
        if name.startswith("containerd-"):
            node = self._node(name.removeprefix("containerd-"))
            return self._ctr_ok(node) and self._import_images(node)
        if name.startswith("kubelet-"):
            node = self._node(name.removeprefix("kubelet-"))
            return _http(f"http://{node.ip}:{KUBELET_HEALTHZ_PORT}/healthz") == "ok"
        if name == "kube-proxy":
            return _http(f"http://{KUBE_PROXY_HEALTHZ}/healthz") is not None
        if name == "coredns":
            return _http(f"http://{COREDNS_READY}/ready") == "OK"
        return True

    def _node(self, name: str) -> RealNode:
        return next(n for n in self.nodes if n.name == name)

    def ready(self) -> bool:
        """Every real node is Ready in the API."""
        return not self.not_ready()

    def not_ready(self) -> list[str]:
        names = [n.name for n in self.nodes]
        if not names:
            return []
        listed = json.loads(self.kubectl("get", "nodes", *names, "-o", "json", check=False) or "{}")
        ready = {
            item["metadata"]["name"]
            for item in listed.get("items", [])
            if any(
                c["type"] == "Ready" and c["status"] == "True"
                for c in item.get("status", {}).get("conditions", [])
            )
        }
        return [n for n in names if n not in ready]

    # -- one-time set-up ----------------------------------------------------------
    def prepare(self) -> None:
        if not self.nodes:
            return
        if os.geteuid() != 0:
            raise InfraError("cluster", "real nodes need root (kubelet, containerd, bridges)")
        for binary in (
            self.kube_bin / "kubelet",
            self.containerd_bin / "containerd",
            self.cni_bin / "bridge",
            self.coredns_bin,
            *self.images.values(),
        ):
            if not binary.exists():
                raise InfraError("cluster", f"{binary} is missing: run deploy/local/build.sh node")
        self.root.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o700)
        log = self.layout.log("nodes-setup")
        ensure_address(HOST_IP)
        self._save_and_set_sysctls()
        self._certs(log)
        self._write_registry_hosts()
        for n in self.nodes:
            ensure_address(n.ip)
            self._write_node(n)
            _make_cgroups(n.cgroup)
        self._write_kube_proxy()
        self._write_coredns()

    def _certs(self, log: Path) -> None:
        d = self.root / "pki"
        d.mkdir(exist_ok=True)
        idents = [
            (f"node-{n.name}", f"/O=system:nodes/CN=system:node:{n.name}") for n in self.nodes
        ]
        idents += [("kube-proxy", "/CN=system:kube-proxy"), ("coredns", "/CN=system:aion:coredns")]
        for name, subject in idents:
            # Files are copied from the CA's folder: the CA key never leaves it.
            if not (d / f"{name}.crt").exists():
                pki.issue(self.pki, name, subject, pki.CLIENT, log)
                for ext in ("crt", "key"):
                    shutil.move(self.pki / f"{name}.{ext}", d / f"{name}.{ext}")
        for n in self.nodes:
            self._kubeconfig(n.root / "kubelet.kubeconfig", f"node-{n.name}")
        self._kubeconfig(self.root / "kube-proxy.kubeconfig", "kube-proxy")
        self._kubeconfig(self.root / "coredns.kubeconfig", "coredns")

    def _kubeconfig(self, path: Path, ident: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        d = self.root / "pki"

        def b64(p: Path) -> str:
            return base64.b64encode(p.read_bytes()).decode()

        doc = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "aion-local",
                    "cluster": {
                        "server": self.server,
                        "certificate-authority-data": b64(self.pki / "ca.crt"),
                    },
                }
            ],
            "users": [
                {
                    "name": ident,
                    "user": {
                        "client-certificate-data": b64(d / f"{ident}.crt"),
                        "client-key-data": b64(d / f"{ident}.key"),
                    },
                }
            ],
            "contexts": [
                {"name": "aion-local", "context": {"cluster": "aion-local", "user": ident}}
            ],
            "current-context": "aion-local",
        }
        _write(path, yaml.safe_dump(doc, sort_keys=False), mode=0o600)

    def _write_registry_hosts(self) -> None:
        for host in (*REGISTRY_HOSTS, f"{HOST_IP}:{REGISTRY_PORT}"):
            _write(
                self.root / "registry-hosts" / host / "hosts.toml",
                f'server = "http://{host}"\n\n[host."http://{host}"]\n'
                '  capabilities = ["pull", "resolve"]\n',
            )

    def _write_node(self, n: RealNode) -> None:
        runc = shutil.which("runc", path="/usr/sbin:/usr/bin:/usr/local/sbin") or "/usr/sbin/runc"
        _write(n.root / "containerd.toml", CONTAINERD_CONFIG.format(
            root=n.root,
            socket=n.socket,
            pause=self.pause_image,
            hosts=self.root / "registry-hosts",
            runc=runc,
            cni_bin=self.cni_bin,
        ))  # fmt: skip
        conflist = {
            "cniVersion": "1.0.0",
            "name": f"aion-{n.name}",
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": n.bridge,
                    "isGateway": True,
                    "ipMasq": False,  # nothing leaves this machine
                    "hairpinMode": True,
                    "ipam": {
                        "type": "host-local",
                        "dataDir": str(n.root / "cni" / "ipam"),
                        "ranges": [[{"subnet": n.subnet}]],
                        "routes": [{"dst": "0.0.0.0/0"}],
                    },
                },
                {"type": "portmap", "capabilities": {"portMappings": True}},
            ],
        }
        _write(n.root / "cni" / "net.d" / "10-aion.conflist", json.dumps(conflist, indent=1))
        kubelet = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "failCgroupV1": False,  # these machines have cgroup v1 only
            "cgroupDriver": "cgroupfs",
            "cgroupRoot": f"/{n.cgroup}",
            "cgroupsPerQOS": True,
            "enforceNodeAllocatable": ["pods"],
            "failSwapOn": False,
            "containerRuntimeEndpoint": f"unix://{n.socket}",
            "imageServiceEndpoint": f"unix://{n.socket}",
            "address": n.ip,
            "port": KUBELET_PORT,
            "readOnlyPort": 0,
            "healthzBindAddress": n.ip,
            "healthzPort": KUBELET_HEALTHZ_PORT,
            "authentication": {
                "anonymous": {"enabled": False},
                "webhook": {"enabled": True},
                "x509": {"clientCAFile": str(self.pki / "ca.crt")},
            },
            "authorization": {"mode": "Webhook"},
            "clusterDomain": CLUSTER_DOMAIN,
            "clusterDNS": [HOST_IP],
            "resolvConf": "/etc/resolv.conf",
            "podLogsDir": str(n.root / "pod-logs"),
            "volumePluginDir": str(n.root / "volume-plugins"),
            "protectKernelDefaults": False,
            "makeIPTablesUtilChains": False,
            # Image GC off: imported images (pause, probe) cannot be pulled again.
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            # Imported images count as preloaded only until the kubelet pulls the same
            # image id under another name (the registry test pushes the probe): its pull
            # records (KEP-2535) then make it re-verify IfNotPresent pods of the imported
            # name by pulling it, which cannot work. There are no pull secrets here.
            "imagePullCredentialsVerificationPolicy": "NeverVerify",
            # Absolute floors: the nodes share one disk with everything else on
            # this machine, and under disk pressure the kubelet taints its node.
            "evictionHard": {
                "memory.available": "100Mi",
                "nodefs.available": "1Gi",
                "imagefs.available": "1Gi",
                "nodefs.inodesFree": "1%",
            },
            "maxPods": 50,
            "serializeImagePulls": False,
            "shutdownGracePeriod": "0s",
        }
        _write(n.root / "kubelet.yaml", yaml.safe_dump(kubelet, sort_keys=False))

    def _write_kube_proxy(self) -> None:
        config = {
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
            "kind": "KubeProxyConfiguration",
            "mode": "iptables",
            "clientConnection": {"kubeconfig": str(self.root / "kube-proxy.kubeconfig")},
            "clusterCIDR": POD_CIDR,
            "hostnameOverride": self.nodes[0].name,
            "healthzBindAddress": KUBE_PROXY_HEALTHZ,
            "metricsBindAddress": KUBE_PROXY_METRICS,
            "nodePortAddresses": [f"{_host_prefix()}.0/24"],
            "iptables": {"localhostNodePorts": False, "masqueradeAll": False},
            # Zeros leave the host's conntrack settings alone.
            "conntrack": {
                "maxPerCore": 0,
                "min": 0,
                "tcpEstablishedTimeout": "0s",
                "tcpCloseWaitTimeout": "0s",
            },
        }
        _write(self.root / "kube-proxy.yaml", yaml.safe_dump(config, sort_keys=False))

    def _write_coredns(self) -> None:
        _write(
            self.root / "Corefile",
            COREFILE.format(
                host=HOST_IP,
                ready=COREDNS_READY,
                domain=CLUSTER_DOMAIN,
                kubeconfig=self.root / "coredns.kubeconfig",
            ),
        )

    def _save_and_set_sysctls(self) -> None:
        saved = self.root / "sysctls.json"
        if not saved.exists():
            before = {k: _sysctl(k) for k in SYSCTLS}
            _write(saved, json.dumps({k: v for k, v in before.items() if v is not None}))
        for key, value in SYSCTLS.items():
            if value is not None:
                _set_sysctl(key, value)

    # -- images ---------------------------------------------------------------------
    def _ctr(self, node: RealNode, *args: str, check: bool = True) -> str:
        proc = subprocess.run(
            [str(self.containerd_bin / "ctr"), f"--address={node.socket}", "-n", "k8s.io", *args],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if check and proc.returncode != 0:
            raise InfraError(
                "cluster", f"ctr {' '.join(args)} on {node.name}: {proc.stderr.strip()}"
            )
        return proc.stdout

    def ctr(self, node: str, *args: str) -> str:
        """Run containerd's `ctr` in a node's `k8s.io` namespace; returns stdout."""
        return self._ctr(self._node(node), *args)

    def _ctr_ok(self, node: RealNode) -> bool:
        if not node.socket.exists():
            return False
        try:
            self._ctr(node, "version")
        except (InfraError, subprocess.TimeoutExpired):
            return False
        return True

    def _import_images(self, node: RealNode) -> bool:
        if node.name in self._imported:
            return True
        have = set(self._ctr(node, "images", "ls", "-q").split())
        for name, archive in self.images.items():
            if name not in have:
                self._ctr(node, "images", "import", str(archive))
                # Pinned: the kubelet never removes it, not even under disk
                # pressure (it cannot be pulled again).
                self._ctr(node, "images", "label", name, "io.cri-containerd.pinned=pinned")
        missing = set(self.images) - set(self._ctr(node, "images", "ls", "-q").split())
        if missing:
            raise InfraError("cluster", f"{node.name}: images not imported: {sorted(missing)}")
        self._imported.add(node.name)
        return True

    # -- after start ------------------------------------------------------------------
    def apply_rbac(self) -> None:
        """The bindings the nodes', kube-proxy's and CoreDNS's identities need."""
        self.kubectl("apply", "--server-side", "--field-manager=aion-infra", "-f", str(RBAC_FILE))

    def after_start(self, timeout: float) -> None:
        if not wait_until(self.ready, timeout, interval=0.5):
            bad = self.not_ready()
            raise InfraError(
                "cluster", f"real nodes not Ready: {bad}", self.layout.log(f"kubelet-{bad[0]}")
            )
        # The kubelet sets its --node-labels only when it registers the node, and
        # may not set kubernetes.io ones: keep them all as pools.yaml says.
        for n in self.nodes:
            labels = [f"{k}={v}" for k, v in node_labels(self.doc, n).items()]
            self.kubectl("label", "node", n.name, "--overwrite", *labels)

    # -- teardown ---------------------------------------------------------------------
    def down(self) -> None:
        """Stop the nodes and undo what they changed on the host (idempotent)."""
        daemons = {d.name: d for d in self.daemons()}
        # Stopped side by side: each waits a moment for its exit to be reaped.
        _stop_all(
            [
                daemons[n]
                for n in ("coredns", "kube-proxy", *(f"kubelet-{n.name}" for n in self.nodes))
            ]
        )
        for n in self.nodes:
            _kill_cgroup(n.cgroup)
        _stop_all([daemons[f"containerd-{n.name}"] for n in self.nodes])
        for n in self.nodes:
            _kill_shims(n.socket)
        _unmount_under([self.root, *SHARED_DIRS])
        for n in self.nodes:
            _run_quiet(["ip", "link", "delete", n.bridge])
            _remove_cgroups(n.cgroup)
            remove_address(n.ip)
        if shutil.which("iptables"):
            proxy = self.kube_bin / "kube-proxy"
            if proxy.exists():
                _run_quiet([str(proxy), "--cleanup"], env=self._env())
            remove_chains(CHAIN_PREFIXES)
        self._restore_sysctls()
        for d in (self.root, *SHARED_DIRS):
            shutil.rmtree(d, ignore_errors=True)

    def _restore_sysctls(self) -> None:
        saved = self.root / "sysctls.json"
        if saved.exists():
            for key, value in json.loads(saved.read_text()).items():
                _set_sysctl(key, value)
            saved.unlink()


def probe_tag() -> str:
    """The probe image's tag: the hash of its source, as build.sh computes it."""
    import hashlib

    return hashlib.sha256(PROBE_SOURCE.read_bytes()).hexdigest()[:12]


def probe_image() -> str:
    """The test image every real node holds: `probe serve` / `probe get URL`."""
    return f"localhost/aion/probe:{probe_tag()}"


CONTAINERD_CONFIG = """\
version = 4
root = '{root}/containerd/root'
state = '{root}/containerd/state'
imports = []
disabled_plugins = ['io.containerd.nri.v1.nri', 'io.containerd.internal.v1.opt',
                    'io.containerd.image-verifier.v1.bindir']

[plugins]
  [plugins.'io.containerd.server.v1.grpc']
    address = '{socket}'
  [plugins.'io.containerd.server.v1.ttrpc']
    address = '{socket}.ttrpc'
  [plugins.'io.containerd.cri.v1.images']
    snapshotter = 'overlayfs'
    # Pulled layers are kept unpacked only: each node holds its own copy of
    # every image, and the executor's is GBs.
    discard_unpacked_layers = true
    [plugins.'io.containerd.cri.v1.images'.pinned_images]
      sandbox = '{pause}'
    [plugins.'io.containerd.cri.v1.images'.registry]
      config_path = '{hosts}'
  [plugins.'io.containerd.cri.v1.runtime']
    netns_mounts_under_state_dir = true
    # These VMs drop CAP_SYS_RESOURCE: runc cannot lower oom_score_adj.
    restrict_oom_score_adj = true
    cdi_spec_dirs = []
    [plugins.'io.containerd.cri.v1.runtime'.containerd]
      default_runtime_name = 'runc'
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
        runtime_type = 'io.containerd.runc.v2'
        [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
          BinaryName = '{runc}'
          Root = '{root}/runc'
          SystemdCgroup = false
    [plugins.'io.containerd.cri.v1.runtime'.cni]
      bin_dirs = ['{cni_bin}']
      conf_dir = '{root}/cni/net.d'
      max_conf_num = 1
  [plugins.'io.containerd.grpc.v1.cri']
    disable_tcp_service = true
    stream_server_address = '127.0.0.1'
    stream_server_port = '0'
"""

# Cluster names from the API, the host by name, and nothing else: a name
# outside them is NXDOMAIN at once, since no query may leave this machine.
COREFILE = """\
{domain}:53 {{
    bind {host}
    errors
    ready {ready}
    kubernetes {domain} {{
        kubeconfig {kubeconfig} aion-local
        pods insecure
    }}
    cache 30
}}
aion.internal:53 {{
    bind {host}
    hosts {{
        {host} host.aion.internal
    }}
}}
.:53 {{
    bind {host}
    template ANY ANY {{
        rcode NXDOMAIN
    }}
}}
"""


# -- host helpers -------------------------------------------------------------------
def _write(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.chmod(mode)
    tmp.replace(path)


def _run_quiet(
    argv: list[str], env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=60,
        check=False,
    )


def ensure_address(ip: str) -> None:
    """Put `ip`/32 on the loopback interface unless it is there."""
    shown = _run_quiet(["ip", "-o", "-4", "addr", "show", "dev", "lo"]).stdout
    if f" {ip}/32 " not in shown:
        proc = _run_quiet(["ip", "addr", "add", f"{ip}/32", "dev", "lo"])
        if proc.returncode != 0 and "File exists" not in proc.stderr:
            raise InfraError("cluster", f"cannot add {ip} to lo: {proc.stderr.strip()}")


def remove_address(ip: str) -> None:
    _run_quiet(["ip", "addr", "del", f"{ip}/32", "dev", "lo"])


def _sysctl_path(key: str) -> Path:
    return Path("/proc/sys") / key.replace(".", "/")


def _sysctl(key: str) -> str | None:
    try:
        return _sysctl_path(key).read_text().strip()
    except OSError:
        return None


def _set_sysctl(key: str, value: str) -> None:
    with contextlib.suppress(OSError):
        _sysctl_path(key).write_text(value)


def _hierarchies() -> list[Path]:
    """The cgroup v1 hierarchies (and the unified one runc also writes in hybrid mode)."""
    if not CGROUP_FS.is_dir():
        return []
    return sorted(d for d in CGROUP_FS.iterdir() if (d / "cgroup.procs").exists())


def _make_cgroups(name: str) -> None:
    for h in _hierarchies():
        path = h / name
        path.mkdir(exist_ok=True)
        if h.name == "cpuset":
            # A new cpuset holds no CPUs or memory nodes until given its parent's.
            for f in ("cpuset.cpus", "cpuset.mems"):
                if not (path / f).read_text().strip():
                    (path / f).write_text((h / f).read_text())


def _cgroup_tree(root: Path) -> list[Path]:
    """`root` and every cgroup below it, deepest first."""
    if not root.is_dir():
        return []
    return sorted((p for p in [root, *root.rglob("*")] if p.is_dir()), key=lambda p: -len(p.parts))


def _stop_all(daemons: list[Daemon]) -> None:
    with ThreadPoolExecutor(max_workers=len(daemons) or 1) as pool:
        list(pool.map(lambda d: d.stop(), daemons))


def _kill_cgroup(name: str, timeout: float = 20.0) -> None:
    """SIGKILL every process in the node's cgroups (its pods) until none is left."""

    def pids() -> set[int]:
        out: set[int] = set()
        for h in _hierarchies():
            for cg in _cgroup_tree(h / name):
                with contextlib.suppress(OSError):
                    out |= {int(p) for p in (cg / "cgroup.procs").read_text().split()}
        return out

    deadline = time.monotonic() + timeout
    while (left := pids()) and time.monotonic() < deadline:
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)


def _remove_cgroups(name: str) -> None:
    for h in _hierarchies():
        for cg in _cgroup_tree(h / name):
            with contextlib.suppress(OSError):
                cg.rmdir()


def _kill_shims(socket: Path) -> None:
    """SIGKILL the runc shims a node's containerd started (they outlive it)."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if (
            argv
            and Path(argv[0].decode(errors="replace")).name == "containerd-shim-runc-v2"
            and str(socket).encode() in argv
        ):
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(proc.name), signal.SIGKILL)


def _unmount_under(roots: list[Path]) -> None:
    """Unmount every mount below `roots` (pod volumes, rootfs, netns), deepest first."""
    prefixes = [str(r).rstrip("/") + "/" for r in roots]
    for _ in range(3):  # a lazy unmount can reveal a mount beneath
        points: list[str] = []
        with contextlib.suppress(OSError):
            for line in Path("/proc/self/mountinfo").read_text().splitlines():
                point = line.split()[4].encode().decode("unicode_escape")
                if any((point + "/").startswith(p) for p in prefixes):
                    points.append(point)
        if not points:
            return
        for point in sorted(set(points), key=lambda p: -p.count("/")):
            if _run_quiet(["umount", point]).returncode != 0:
                _run_quiet(["umount", "-l", point])


def remove_chains(prefixes: tuple[str, ...]) -> None:
    """Delete the iptables chains named with `prefixes`, and the rules jumping to them."""
    for tool in ("iptables", "ip6tables"):
        for table in ("filter", "nat", "mangle", "raw"):
            rules = _run_quiet([tool, "-w", "-t", table, "-S"]).stdout.splitlines()
            chains = [
                r.split()[1]
                for r in rules
                if r.startswith("-N ") and r.split()[1].startswith(prefixes)
            ]
            if not chains:
                continue
            for rule in rules:
                parts = shlex.split(rule)
                if parts[:1] == ["-A"] and not parts[1].startswith(prefixes) and "-j" in parts:
                    target = parts[parts.index("-j") + 1]
                    if target.startswith(prefixes):
                        _run_quiet([tool, "-w", "-t", table, "-D", *parts[1:]])
            for chain in chains:
                _run_quiet([tool, "-w", "-t", table, "-F", chain])
            for chain in chains:
                _run_quiet([tool, "-w", "-t", table, "-X", chain])


def _http(url: str) -> str | None:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            body: bytes = resp.read()
            return body.decode(errors="replace").strip()
    except (urllib.error.URLError, OSError, ValueError):
        return None
