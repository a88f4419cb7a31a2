"""``make dev``: start the suite with the demo agent and keep it up until Ctrl-C.

``python -m aion.infra.devstack [--agents FILE] [--log-dir DIR] [--kubeconfig FILE]``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import TypeVar

from aion.infra.component import Component
from aion.infra.devstack import suite
from aion.infra.jaeger import Jaeger
from aion.infra.paths import Layout
from aion.infra.prometheus import Prometheus


class Progress:
    """Says what each service is doing while the suite starts, and the executor's own news."""

    def __init__(self, executor_log: Path) -> None:
        self._tty = sys.stdout.isatty()
        self._last: tuple[str, str] | None = None
        self._log = executor_log
        self._read = 0

    def executor_news(self) -> None:
        """Print what the executor logged about its model since the last call."""
        try:
            with self._log.open() as f:
                f.seek(self._read)
                lines = f.readlines()
                self._read = f.tell()
        except OSError:
            return
        for line in lines:
            try:
                message = json.loads(line).get("message", "")
            except ValueError:
                continue
            if "model" in message:
                print(
                    f"\r\033[K  executor: {message}" if self._tty else f"  executor: {message}",
                    flush=True,
                )

    def __call__(self, name: str, status: str, elapsed: float) -> None:
        """Called by LocalSuite.wait_ready while ``name`` is not SERVING yet."""
        self.executor_news()
        what = {"UNREACHABLE": "starting", "NOT_SERVING": "loading"}.get(status, status.lower())
        if name == "executor" and status == "NOT_SERVING":
            what = "loading the model"
        if self._tty:
            print(f"\r\033[K  {name}: {what} {elapsed:5.1f}s", end="", flush=True)
        elif self._last != (name, what):
            print(f"  {name}: {what}", flush=True)
        self._last = (name, what)


OPERATOR_LIVENESS_PORT = 8086
# Next to the services' (suite.DEV_METRICS_PORTS: 9101-9106).
OPERATOR_METRICS_PORT = 9107


def start_operator(
    kubeconfig: Path,
    *,
    agent_target: str,
    log: Path,
    tls_env: dict[str, str],
    otlp_endpoint: str | None = None,
) -> subprocess.Popen[bytes]:
    """``python -m aion.operator`` on ``kubeconfig``'s cluster, registering with the suite
    (over mTLS, as the ``operator`` identity of ``tls_env``); its spans go to
    ``otlp_endpoint`` when given."""
    env = {
        **({"AION_OPERATOR_OTLP_ENDPOINT": otlp_endpoint} if otlp_endpoint else {}),
        **os.environ,
        **tls_env,
        "KUBECONFIG": str(kubeconfig),
        "AION_OPERATOR_EXECUTOR_IMAGE": os.environ.get(
            "AION_OPERATOR_EXECUTOR_IMAGE", "aion-executor:dev"
        ),
        "AION_OPERATOR_AGENT_TARGET": agent_target,
        "AION_OPERATOR_LIVENESS_PORT": str(OPERATOR_LIVENESS_PORT),
        "AION_OPERATOR_METRICS_PORT": str(OPERATOR_METRICS_PORT),
        "AION_OPERATOR_LEASE_NAMESPACE": "default",
    }
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "aion.operator"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )


def operator_healthy(timeout_s: float = 30.0) -> bool:
    """Whether the operator answers /healthz within ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{OPERATOR_LIVENESS_PORT}/healthz", timeout=1
            ) as resp:
                if resp.status == 200:
                    return True
        except OSError:
            pass
        time.sleep(0.3)
    return False


C = TypeVar("C", bound=Component)


def serving(component: C, otherwise: str) -> C | None:
    """The component when it runs and answers; None, with a note saying so, when not."""
    if component.running() and component.ready():
        return component
    print(f"note: {component.name} is not running (make infra-up): {otherwise}")
    return None


def main() -> int:
    """Run until SIGINT or SIGTERM; exit non-zero if the suite cannot start."""
    parser = argparse.ArgumentParser(
        prog="python -m aion.infra.devstack", description="Run the aion suite locally."
    )
    parser.add_argument("--agents", type=Path, default=Path("deploy/examples/demo-agent.yaml"))
    parser.add_argument("--log-dir", type=Path, default=Path(".aion/dev/logs"))
    parser.add_argument(
        "--kubeconfig",
        type=Path,
        default=None,
        help="also run the operator against this cluster (make cluster-up's)",
    )
    args = parser.parse_args()
    # `make infra-up` starts both; without them traces stay in-process and nothing scrapes.
    layout = Layout.from_env()
    jaeger = serving(Jaeger(layout), "traces stay in each process")
    prometheus = serving(Prometheus(layout), "nothing scrapes the services")
    local = suite.LocalSuite(
        log_dir=args.log_dir,
        agents_file=args.agents.resolve(),
        ports=suite.DEV_PORTS,
        metrics_ports=suite.DEV_METRICS_PORTS,
        health_ports=suite.DEV_HEALTH_PORTS,
        otlp_endpoint=jaeger.otlp_endpoint if jaeger is not None else None,
        prometheus=prometheus,
        scrape_tag="dev",
    )
    stop = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    started = time.monotonic()
    print(f"starting aion (logs in {args.log_dir}/)")
    local.start()
    try:
        progress = Progress(local.services["executor"].log_path)
        local.wait_ready(on_wait=progress)
        progress.executor_news()
    except suite.SuiteError as exc:
        print(f"\nerror: {exc}", file=sys.stderr)
        local.stop()
        return 1
    operator = None
    if args.kubeconfig is not None:
        operator_log = args.log_dir / "operator.log"
        operator = start_operator(
            args.kubeconfig,
            agent_target=local.services["agent"].target,
            log=operator_log,
            tls_env=local.tls_env("operator"),
            otlp_endpoint=jaeger.otlp_endpoint if jaeger is not None else None,
        )
        if not operator_healthy():
            print(
                f"error: the operator did not start; its log ({operator_log}):\n"
                + operator_log.read_text(errors="replace")[-3000:],
                file=sys.stderr,
            )
            operator.terminate()
            local.stop()
            return 1
        if prometheus is not None:
            prometheus.add_targets(
                "dev-operator",
                [f"127.0.0.1:{OPERATOR_METRICS_PORT}"],
                {"job": "operator", "service": "operator", "suite": "dev"},
            )
    print(
        ("\r\033[K" if sys.stdout.isatty() else "")
        + f"aion is up in {time.monotonic() - started:.1f}s:"
    )
    for svc in local.services.values():
        print(
            f"  {svc.name:<10} grpc {svc.target:<17} metrics "
            f"http://127.0.0.1:{svc.metrics_port}/metrics  log {svc.log_path}"
        )
    print(
        f"  {'http':<10} {local.gateway_http}/v1 (OpenAI), /a2a/<agent>, /mcp, "
        "/openapi.json on the gateway"
    )
    print(f"  {'mtls':<10} internal calls use the CA and certificates in {local.tls_dir}/")
    if jaeger is not None:
        print(
            f"  {'jaeger':<10} {jaeger.url} traces: /api/traces/<trace id> (the UI page is "
            f"a placeholder); spans in over OTLP at {jaeger.otlp_endpoint}"
        )
    if prometheus is not None:
        print(
            f"  {'prometheus':<10} {prometheus.url} /api/v1/query?query=...; scrapes every "
            f"service (job = its name) every 5 s"
        )
    if operator is not None:
        print(
            f"  {'operator':<10} cluster {args.kubeconfig}  liveness "
            f"http://127.0.0.1:{OPERATOR_LIVENESS_PORT}/healthz  log "
            f"{args.log_dir / 'operator.log'}"
        )
        print(
            "\nthe operator reconciles the cluster's Agents: kubectl apply -f "
            "deploy/examples/agent.yaml; kubectl get agents"
        )
    print(
        '\ntry:  uv run aionctl stream --agent demo "What is Kubernetes?"\n'
        "Ctrl-C stops everything.",
        flush=True,
    )
    while not stop:
        for svc in local.services.values():
            if svc.process is not None and svc.process.poll() is not None:
                print(
                    f"error: {svc.name} exited ({svc.process.returncode}):\n{svc.log_tail()}",
                    file=sys.stderr,
                )
                stop = True
        if operator is not None and operator.poll() is not None:
            print(
                f"error: the operator exited ({operator.returncode}); see "
                f"{args.log_dir / 'operator.log'}",
                file=sys.stderr,
            )
            stop = True
        time.sleep(0.5)
    print("\nstopping...", flush=True)
    t0 = time.monotonic()
    if operator is not None and operator.poll() is None:
        operator.terminate()
        try:
            operator.wait(timeout=15)
        except subprocess.TimeoutExpired:
            operator.kill()
    if prometheus is not None:
        prometheus.remove_targets("dev-operator")
    codes = local.stop()
    print(
        f"stopped in {time.monotonic() - t0:.1f}s " + " ".join(f"{n}={c}" for n, c in codes.items())
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
