"""Start the five aion services as processes, wait until each is SERVING, stop them cleanly.

Two executors run: ``executor`` serves the chat model, ``embedder`` (the same
``python -m aion.executor`` with ``MODEL_TASK=embed``) the knowledge service's
embedding model. The knowledge service keeps documents in the agent
service's Postgres database and MinIO, its events on the same Kafka, and its
Qdrant collection on disk under the log folder.

Used by ``make dev`` (``python -m aion.infra.devstack``) and by the end-to-end
tests. Each service runs ``python -m aion.<name>`` in its own session, logs
to ``<log_dir>/<name>.log``, and is stopped with SIGTERM in reverse start
order (gateway first, executor last) so in-flight calls drain.

The services find Postgres, Kafka and MinIO where ``make infra-up`` (``python
-m aion.infra up infra``) serves them, unless the environment says otherwise;
those addresses come from aion.infra's own components, not from copies.

Internal calls are mTLS only: the suite makes one CA for its run (under the
log folder, ``tls/``) and a certificate per identity (``python -m
aion.core.mkcerts``, run in the interpreter that runs the services), and hands
each process its own through ``AION_TLS_*``. Readiness is read from
each internal service's plaintext health port (the gateway's own port).

Observability, on request: ``otlp_endpoint`` sends every service's spans
there (``AION_<SERVICE>_OTLP_ENDPOINT``; ``make dev`` gives Jaeger's), and
``prometheus`` registers each service's metrics port as a file_sd target of
that server while the suite runs (job and ``service`` label: the service's
name; ``suite``: the suite's tag), removed again by ``stop``.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import os
import random
import signal
import socket
import subprocess
import sys
import time
import types
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Self

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from aion.infra import kafka, minio, postgres
from aion.infra.prometheus import Prometheus

# Start order: what others depend on comes first.
SERVICES = ("executor", "embedder", "knowledge", "router", "agent", "gateway")
DEV_PORTS = {
    "gateway": 50051,
    "router": 50052,
    "agent": 50053,
    "knowledge": 50054,
    "executor": 50055,
    "embedder": 50056,
}
DEV_HEALTH_PORTS = {
    "router": 51052,
    "agent": 51053,
    "knowledge": 51054,
    "executor": 51055,
    "embedder": 51056,
}
DEV_GATEWAY_HTTP_PORT = 8080
DEV_METRICS_PORTS = {
    "gateway": 9101,
    "router": 9102,
    "agent": 9103,
    "knowledge": 9104,
    "executor": 9105,
    "embedder": 9106,
}
# The module a service runs, where it is not its own name.
MODULES = {"embedder": "executor"}
# The identity each service's certificate names (aion.core.pki).
IDENTITIES = {
    "gateway": "gateway",
    "router": "router",
    "agent": "agent",
    "knowledge": "knowledge",
    "executor": "executor",
    "embedder": "executor",
}
# Every identity a certificate is made for (the operator's for `make dev --kubeconfig`).
CERTIFIED = ("gateway", "router", "agent", "knowledge", "executor", "operator")
# The bearer token of the suite's executors' HTTP API (a local suite's, not a secret).
DEV_EXECUTOR_HTTP_TOKEN = "aion-dev-executor-token"


class SuiteError(RuntimeError):
    """A service did not start; the message carries the tail of its log."""


@dataclasses.dataclass
class ServiceProcess:
    """One running service."""

    name: str
    port: int
    metrics_port: int
    log_path: Path
    health_port: int | None = None
    process: subprocess.Popen[bytes] | None = None
    env: dict[str, str] = dataclasses.field(default_factory=dict)

    @property
    def identity(self) -> str:
        """The identity its certificate names."""
        return IDENTITIES[self.name]

    @property
    def health_target(self) -> str:
        """host:port that answers its health (plaintext): the health port, if it has one."""
        return self.target if self.health_port is None else f"127.0.0.1:{self.health_port}"

    @property
    def module(self) -> str:
        """The Python module it runs (``python -m aion.<module>``)."""
        return MODULES.get(self.name, self.name)

    @property
    def target(self) -> str:
        """host:port of its gRPC server."""
        return f"127.0.0.1:{self.port}"

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of its log."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


# The ports free_port handed out lately, oldest first. Probing a port and
# letting it go leaves it free until its service binds it, so without this one
# suite could be given the same port twice (17 of ~9,800: about 1.4% a suite,
# and a CI run starts dozens) and its second service dies with "Address
# already in use".
_RECENT_PORTS: collections.OrderedDict[int, None] = collections.OrderedDict()
_RECENT_LIMIT = 4096


def free_port() -> int:
    """A TCP port nobody listens on right now, below the kernel's ephemeral range,
    and not handed out by this process in its last ``_RECENT_LIMIT`` calls.

    A port the kernel hands out for bind(0) comes from the range it also uses for
    outgoing connections, so by the time a service binds it, a client may hold it
    (seen here: "Address already in use"). Ports below that range are never taken
    that way.
    """
    low, _ = _ephemeral_range()
    # Above the local infrastructure's fixed ports (6443-22379), below the range.
    floor, ceiling = 23_000, max(low - 1, 24_000)
    limit = min(_RECENT_LIMIT, (ceiling - floor) // 2)
    port = None
    for _ in range(200):
        candidate = random.randint(floor, ceiling)
        if candidate in _RECENT_PORTS:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", candidate))
            except OSError:
                continue
        port = candidate
        break
    if port is None:  # a crowded machine: let the kernel choose
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
    _RECENT_PORTS[port] = None
    while len(_RECENT_PORTS) > limit:
        _RECENT_PORTS.popitem(last=False)
    return port


def health_status(target: str, *, timeout: float = 1.0) -> str:
    """The gRPC health status name of the server at ``target`` ("UNREACHABLE" if none)."""
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            resp = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout)
        except grpc.RpcError:
            return "UNREACHABLE"
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status))


class LocalSuite:
    """The five services as child processes of this one."""

    def __init__(
        self,
        *,
        log_dir: Path,
        agents_file: Path | None = None,
        ports: Mapping[str, int] | None = None,
        metrics_ports: Mapping[str, int] | None = None,
        extra_env: Mapping[str, str] = (types.MappingProxyType({})),
        python: str = sys.executable,
        allow_anonymous: bool = True,
        health_ports: Mapping[str, int] | None = None,
        otlp_endpoint: str | None = None,
        prometheus: Prometheus | None = None,
        scrape_tag: str | None = None,
    ) -> None:
        self._log_dir = log_dir
        self._python = python
        self._otlp_endpoint = otlp_endpoint
        self._prometheus = prometheus
        # Names this suite's target files and labels its series: suites side by side
        # (tests) each have their own.
        self.scrape_tag = scrape_tag or f"suite-{os.getpid()}-{random.randrange(16**6):06x}"
        grpc_ports = dict(ports) if ports is not None else {n: free_port() for n in SERVICES}
        http_ports = (
            dict(metrics_ports) if metrics_ports is not None else {n: free_port() for n in SERVICES}
        )
        probe_ports = (
            dict(health_ports)
            if health_ports is not None
            else {n: free_port() for n in SERVICES if n != "gateway"}
        )
        self.services = {
            name: ServiceProcess(
                name,
                grpc_ports[name],
                http_ports[name],
                log_dir / f"{name}.log",
                health_port=probe_ports.get(name),
            )
            for name in SERVICES
        }
        # The run's CA and a certificate per identity (tests call the internal services
        # with these files).
        self.tls_dir = log_dir / "tls"
        # The gateway's HTTP front door (OpenAI-compatible API, A2A, MCP).
        self.gateway_http_port = DEV_GATEWAY_HTTP_PORT if ports is not None else free_port()
        self._env = self._environment(agents_file, allow_anonymous, extra_env)

    def _environment(
        self, agents_file: Path | None, allow_anonymous: bool, extra: Mapping[str, str]
    ) -> dict[str, str]:
        # ``extra`` first too: the settings derived below (the knowledge service's
        # database and topics follow the agent service's) must follow its overrides.
        env = {**os.environ, **extra}
        for svc in self.services.values():
            if svc.module != svc.name:
                continue
            prefix = f"AION_{svc.name.upper()}_"
            env[prefix + "PORT"] = str(svc.port)
            env[prefix + "METRICS_PORT"] = str(svc.metrics_port)
            if svc.health_port is not None:
                env[prefix + "HEALTH_PORT"] = str(svc.health_port)
            if self._otlp_endpoint is not None:
                env[prefix + "OTLP_ENDPOINT"] = self._otlp_endpoint
        s = self.services
        s["embedder"].env.update(
            {
                "AION_EXECUTOR_PORT": str(s["embedder"].port),
                "AION_EXECUTOR_METRICS_PORT": str(s["embedder"].metrics_port),
                "AION_EXECUTOR_MODEL_TASK": "embed",
                "AION_EXECUTOR_HTTP_PORT": "0",
                "AION_EXECUTOR_INSTANCE_ID": "embedder",
            }
        )
        if s["embedder"].health_port is not None:
            s["embedder"].env["AION_EXECUTOR_HEALTH_PORT"] = str(s["embedder"].health_port)
        env.setdefault("AION_EXECUTOR_HTTP_TOKEN", DEV_EXECUTOR_HTTP_TOKEN)
        env["AION_GATEWAY_ROUTER_TARGET"] = s["router"].target
        env["AION_GATEWAY_AGENT_TARGET"] = s["agent"].target
        env["AION_GATEWAY_KNOWLEDGE_TARGET"] = s["knowledge"].target
        env["AION_GATEWAY_ALLOW_ANONYMOUS"] = "true" if allow_anonymous else "false"
        env["AION_GATEWAY_HTTP_PORT"] = str(self.gateway_http_port)
        env["AION_AGENT_EXECUTOR_TARGET"] = s["executor"].target
        env["AION_AGENT_KNOWLEDGE_TARGET"] = s["knowledge"].target
        # The agent service's task store and event backbone; extra_env may point
        # them elsewhere (the e2e tests give each suite its database and topics).
        # By default, where `make infra-up` (python -m aion.infra up infra) serves them.
        env.setdefault(
            "AION_AGENT_POSTGRES_DSN",
            env.get(
                "AION_POSTGRES_DSN",
                f"postgresql://{postgres.SUPERUSER}:{postgres.DEFAULT_PASSWORD}"
                f"@{postgres.HOST}:{postgres.DEFAULT_PORT}/{postgres.DATABASE}",
            ),
        )
        env.setdefault(
            "AION_AGENT_KAFKA_BOOTSTRAP",
            env.get("AION_KAFKA_BOOTSTRAP", f"{kafka.HOST}:{kafka.DEFAULT_PORT}"),
        )
        if agents_file is not None:
            env["AION_AGENT_AGENTS_FILE"] = str(agents_file)
        # The knowledge service: the same database and brokers as the agent service (its
        # tables and topics have names of their own), MinIO, and the embedding executor.
        env.setdefault("AION_KNOWLEDGE_POSTGRES_DSN", env["AION_AGENT_POSTGRES_DSN"])
        env.setdefault("AION_KNOWLEDGE_KAFKA_BOOTSTRAP", env["AION_AGENT_KAFKA_BOOTSTRAP"])
        env.setdefault("AION_KNOWLEDGE_TOPIC_PREFIX", env.get("AION_AGENT_TOPIC_PREFIX", "aion."))
        env.setdefault(
            "AION_KNOWLEDGE_MINIO_ENDPOINT",
            env.get("AION_MINIO_ENDPOINT", f"{minio.HOST}:{minio.DEFAULT_PORT}"),
        )
        env.setdefault(
            "AION_KNOWLEDGE_MINIO_ACCESS_KEY",
            env.get("AION_MINIO_ACCESS_KEY", minio.DEFAULT_ACCESS_KEY),
        )
        env.setdefault(
            "AION_KNOWLEDGE_MINIO_SECRET_KEY",
            env.get("AION_MINIO_SECRET_KEY", minio.DEFAULT_SECRET_KEY),
        )
        env.setdefault("AION_KNOWLEDGE_QDRANT_PATH", str(self._log_dir / "qdrant"))
        env["AION_KNOWLEDGE_EXECUTOR_TARGET"] = s["embedder"].target
        env.setdefault("HF_HUB_OFFLINE", "1")
        env.update(extra)
        return env

    @property
    def gateway(self) -> str:
        """host:port of the gateway, the public API."""
        return self.services["gateway"].target

    @property
    def gateway_http(self) -> str:
        """The base URL of the gateway's HTTP front door (``/v1``, ``/a2a``, ``/mcp``)."""
        port = self._env.get("AION_GATEWAY_HTTP_PORT", str(self.gateway_http_port))
        return f"http://127.0.0.1:{port}"

    def tls_env(self, identity: str) -> dict[str, str]:
        """The ``AION_TLS_*`` variables of a process of ``identity`` (files under ``tls_dir``)."""
        return {
            "AION_TLS_CA_FILE": str(self.tls_dir / "ca.crt"),
            "AION_TLS_CERT_FILE": str(self.tls_dir / f"{identity}.crt"),
            "AION_TLS_KEY_FILE": str(self.tls_dir / f"{identity}.key"),
        }

    def make_certificates(self) -> None:
        """A fresh CA under ``tls_dir`` and a certificate per identity (``start`` does it)."""
        made = subprocess.run(
            [self._python, "-m", "aion.core.mkcerts", str(self.tls_dir), *CERTIFIED],
            capture_output=True,
            text=True,
            check=False,
        )
        if made.returncode != 0:
            raise SuiteError(f"cannot make the suite's certificates: {made.stderr.strip()}")

    def scrape_groups(self) -> dict[str, str]:
        """The Prometheus target group of each service: name -> file_sd group name."""
        return {name: f"{self.scrape_tag}-{name}" for name in self.services}

    def register_targets(self, prometheus: Prometheus) -> None:
        """Have ``prometheus`` scrape every service's metrics port, until ``stop``
        (``start`` does it for the suite's own ``prometheus``)."""
        self._prometheus = prometheus
        for name, group in self.scrape_groups().items():
            svc = self.services[name]
            prometheus.add_targets(
                group,
                [f"127.0.0.1:{svc.metrics_port}"],
                {"job": name, "service": name, "suite": self.scrape_tag},
            )

    def _remove_targets(self) -> None:
        if self._prometheus is None:
            return
        for group in self.scrape_groups().values():
            self._prometheus.remove_targets(group)

    def start(self) -> None:
        """Make the run's certificates, then spawn every service (not waiting for
        readiness) and register its metrics port with ``prometheus``, if given."""
        self._log_dir.mkdir(parents=True, exist_ok=True)
        self.make_certificates()
        if self._prometheus is not None:
            self.register_targets(self._prometheus)
        for svc in self.services.values():
            with svc.log_path.open("wb") as log:
                svc.process = subprocess.Popen(
                    [self._python, "-m", f"aion.{svc.module}"],
                    env={**self._env, **self.tls_env(svc.identity), **svc.env},
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                )

    def wait_ready(
        self, *, timeout: float = 180.0, on_wait: Callable[[str, str, float], None] | None = None
    ) -> None:
        """Block until every service reports SERVING; raise SuiteError with its log if not."""
        deadline = time.monotonic() + timeout
        started = time.monotonic()
        for svc in self.services.values():
            while True:
                if svc.process is not None and svc.process.poll() is not None:
                    raise SuiteError(
                        f"{svc.name} exited with {svc.process.returncode}; "
                        f"its log ({svc.log_path}):\n{svc.log_tail()}"
                    )
                status = health_status(svc.health_target)
                if status == "SERVING":
                    break
                if time.monotonic() > deadline:
                    raise SuiteError(
                        f"{svc.name} not SERVING after {timeout:g}s ({status}); "
                        f"its log ({svc.log_path}):\n{svc.log_tail()}"
                    )
                if on_wait is not None:
                    on_wait(svc.name, status, time.monotonic() - started)
                time.sleep(0.2)

    def stop(self, *, grace: float = 9.0) -> dict[str, int | None]:
        """SIGTERM in reverse start order, SIGKILL whatever outlives ``grace``; exit codes.
        The services' Prometheus targets are removed first."""
        self._remove_targets()
        deadline = time.monotonic() + grace
        procs = [s for s in reversed(self.services.values()) if s.process is not None]
        for svc in procs:
            assert svc.process is not None
            if svc.process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    svc.process.send_signal(signal.SIGTERM)
        codes: dict[str, int | None] = {}
        for svc in procs:
            assert svc.process is not None
            try:
                codes[svc.name] = svc.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                svc.process.kill()
                svc.process.wait()
                codes[svc.name] = None
        return codes

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: types.TracebackType | None,
    ) -> None:
        self.stop()
