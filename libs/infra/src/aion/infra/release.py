"""The chart installed on the local cluster, as a platform team installs it.

`Release` runs the built helm and kubectl against the local cluster as its admin:
`helm install aion charts/aion -f deploy/local/values-local.yaml -f <images>`,
and the look-ups the cluster end-to-end tests and `make bench-install` share:
the gateway's NodePort address, an Agent's executor pods and what each served,
and what a person would read when something does not come up (`diagnose`).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from aion.infra.cluster import Cluster
from aion.infra.node import HOST_IP
from aion.infra.paths import REPO

CHART = REPO / "charts" / "aion"
LOCAL_VALUES = REPO / "deploy" / "local" / "values-local.yaml"
CPU_AGENT_FILE = REPO / "deploy" / "examples" / "agent-cpu.yaml"
NAME = NAMESPACE = "aion"
API_KEY = "local-dev-key"  # deploy/local/values-local.yaml's development key
REAL_POOL = "workers"  # deploy/local/cluster/pools.yaml's realPools

T = TypeVar("T")


class Timeout(AssertionError):
    """A wait ran out; the message says what was awaited and what was seen."""


def wait_for(
    what: str,
    check: Callable[[], T | None],
    timeout: float,
    explain: Callable[[], str] = lambda: "",
    interval: float = 1.0,
) -> T:
    """``check()`` once it is truthy; raises Timeout after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise Timeout(f"{what}: not within {timeout:.0f} s\n{explain()}")
        time.sleep(interval)


class Release:
    """helm and kubectl for the release ``NAME`` in ``NAMESPACE`` on the local cluster."""

    def __init__(self, cluster: Cluster, helm: Path, home: Path) -> None:
        self.cluster = cluster
        self.helm_bin = helm
        self.env = {
            **os.environ,
            "KUBECONFIG": str(cluster.kubeconfig),
            "HELM_CONFIG_HOME": str(home / "config"),
            "HELM_CACHE_HOME": str(home / "cache"),
            "HELM_DATA_HOME": str(home / "data"),
        }

    def kubectl(self, *args: str, check: bool = True, timeout: float = 120) -> str:
        """kubectl as the cluster's admin; its stdout."""
        return self.cluster.kubectl(*args, check=check, timeout=timeout)

    def json(self, *args: str) -> Any:
        """``kubectl <args> -o json``, parsed."""
        return json.loads(self.kubectl(*args, "-o", "json"))

    def helm(self, *args: str, timeout: float = 1200) -> subprocess.CompletedProcess[str]:
        """helm with a home of its own (no user config or repositories)."""
        return subprocess.run(
            [str(self.helm_bin), *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def install(self, images_values: Path, *, timeout: str = "15m") -> None:
        """``helm install`` with the local values and the images', waiting for Ready."""
        done = self.helm(
            "install",
            NAME,
            str(CHART),
            "-n",
            NAMESPACE,
            "--create-namespace",
            "-f",
            str(LOCAL_VALUES),
            "-f",
            str(images_values),
            "--wait",
            "--timeout",
            timeout,
        )
        if done.returncode != 0:
            raise AssertionError(
                f"helm install failed:\n{done.stdout}\n{done.stderr}\n{self.diagnose()}"
            )

    def uninstall(self) -> subprocess.CompletedProcess[str]:
        """``helm uninstall`` (nothing to do when the release is not there)."""
        return self.helm("uninstall", NAME, "-n", NAMESPACE, "--wait", "--ignore-not-found")

    def apply_agent(
        self, path: Path = CPU_AGENT_FILE, *, namespace: str = "default", timeout: float = 900
    ) -> dict[str, Any]:
        """Applies an Agent file and waits until the Agent is Ready and Registered."""
        self.kubectl("apply", "-n", namespace, "-f", str(path))
        name = self.json("create", "--dry-run=client", "-f", str(path))["metadata"]["name"]

        def ready() -> dict[str, Any] | None:
            agent: dict[str, Any] = self.json("get", "agent", name, "-n", namespace)
            conditions = {
                c["type"]: c["status"] for c in agent.get("status", {}).get("conditions", [])
            }
            if conditions.get("Ready") == "True" and conditions.get("Registered") == "True":
                return agent
            return None

        return wait_for(
            f"Agent {name} Ready and Registered",
            ready,
            timeout,
            lambda: (
                self.kubectl("describe", "agent", name, "-n", namespace, check=False)
                + self.diagnose(namespace)
            ),
        )

    def gateway_target(self, port: str = "grpc") -> str:
        """host:port of the gateway's NodePort ``port`` (grpc, or http for its OpenAI,
        A2A and MCP front door) on the host address (`kubectl get svc` shows it)."""
        svc = self.json("get", "service", f"{NAME}-gateway", "-n", NAMESPACE)
        node_port = next(p["nodePort"] for p in svc["spec"]["ports"] if p["name"] == port)
        return f"{HOST_IP}:{node_port}"

    def executor_pods(self, agent: str, namespace: str = "default") -> list[dict[str, Any]]:
        """The Agent's running executor pods (not those being deleted)."""
        pods = self.json("get", "pods", "-n", namespace, "-l", f"aion.dev/agent={agent}")
        return [
            p
            for p in pods["items"]
            if p["status"].get("phase") == "Running" and not p["metadata"].get("deletionTimestamp")
        ]

    def real_nodes(self) -> set[str]:
        """The names of the real nodes (the `workers` pool)."""
        nodes = self.json("get", "nodes", "-l", "type=real")
        return {n["metadata"]["name"] for n in nodes["items"]}

    def diagnose(self, namespace: str = NAMESPACE) -> str:
        """Pods everywhere, the namespace's events, and each unready pod's description
        and log tail."""
        parts = [
            self.kubectl("get", "pods", "-A", "-o", "wide", check=False),
            self.kubectl("get", "events", "-n", namespace, "--sort-by=.lastTimestamp", check=False)[
                -6000:
            ],
        ]
        for pod in json.loads(
            self.kubectl("get", "pods", "-n", namespace, "-o", "json", check=False)
            or '{"items": []}'
        )["items"]:
            statuses = pod.get("status", {}).get("containerStatuses", [])
            if statuses and all(s.get("ready") for s in statuses):
                continue
            name = pod["metadata"]["name"]
            parts.append(
                self.kubectl("describe", "pod", "-n", namespace, name, check=False)[-3000:]
            )
            parts.append(
                self.kubectl(
                    "logs", "-n", namespace, name, "--tail=40", "--all-containers", check=False
                )
            )
        return "\n".join(parts)
