"""A single-node Apache Kafka in KRaft mode: one JVM is broker and controller.

The jars come from Maven Central (deploy/local/build.sh kafka copies the runtime
dependencies of `org.apache.kafka:kafka_<scala>` plus Log4j 2 into
`$AION_CACHE/kafka-<version>/libs`); the broker runs them with `java` from PATH
(or $JAVA_HOME/bin/java), Java 17 or later.

Layout under `<AION_INFRA_HOME>/kafka`:
  server.properties   written by `prepare()` on every start (ports may change)
  logdata/            log.dirs: the topics' partitions and the KRaft metadata
                      log, formatted once by kafka.tools.StorageTool

The controller quorum is static (`controller.quorum.voters`), so nothing in the
formatted storage names a port: AION_KAFKA_PORT (9092) and
AION_KAFKA_CONTROLLER_PORT (9093) may change between starts.
"""

from __future__ import annotations

import base64
import os
import shutil
import socket
import struct
import uuid
from pathlib import Path

from aion.infra import podnet
from aion.infra.component import Component, InfraError, port_open
from aion.infra.paths import REPO, Layout, versions
from aion.infra.process import Daemon, run

HOST = "127.0.0.1"
DEFAULT_PORT = 9092
DEFAULT_POD_PORT = 9094
DEFAULT_CONTROLLER_PORT = 9093
NODE_ID = 1
LOG4J_CONFIG = REPO / "deploy" / "local" / "kafka" / "log4j2.properties"

# The JVM options of Kafka's kafka-server-start.sh, with a smaller heap.
JVM_OPTS = [
    "-Xms256m",
    "-Xmx512m",
    "-XX:+UseG1GC",
    "-XX:MaxGCPauseMillis=20",
    "-XX:InitiatingHeapOccupancyPercent=35",
    "-XX:+ExplicitGCInvokesConcurrent",
    "-XX:+ExitOnOutOfMemoryError",
    "-Djava.awt.headless=true",
]


def java() -> str:
    """The java launcher: $JAVA_HOME/bin/java when set, else `java` from PATH."""
    home = os.environ.get("JAVA_HOME")
    if home and (Path(home) / "bin" / "java").exists():
        return str(Path(home) / "bin" / "java")
    # A bare "java" still names the daemon's program, so `down` and `status`
    # work without one; `prepare` refuses to start.
    return shutil.which("java") or "java"


def new_cluster_id() -> str:
    """A cluster id as Kafka writes them: 16 random bytes, URL-safe base64 unpadded."""
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not text.startswith("-"):  # Kafka's Uuid.randomUuid() avoids these too
            return text


def server_properties(
    *, port: int, controller_port: int, log_dirs: Path, pods: str | None = None
) -> str:
    """The broker+controller configuration of one local node (pure). ``pods``
    (host:port) adds a listener for the pods of the local cluster's real nodes."""
    listeners = [f"PLAINTEXT://{HOST}:{port}", f"CONTROLLER://{HOST}:{controller_port}"]
    advertised = [f"PLAINTEXT://{HOST}:{port}"]
    if pods:
        listeners.append(f"PODS://{pods}")
        advertised.append(f"PODS://{pods}")
    props = {
        "process.roles": "broker,controller",
        "node.id": str(NODE_ID),
        "controller.quorum.voters": f"{NODE_ID}@{HOST}:{controller_port}",
        "listeners": ",".join(listeners),
        "advertised.listeners": ",".join(advertised),
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": (
            "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,PODS:PLAINTEXT"
        ),
        "log.dirs": str(log_dirs),
        "num.partitions": "1",
        "auto.create.topics.enable": "true",
        # One node: every internal topic has one replica.
        "offsets.topic.replication.factor": "1",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        # A consumer group's first member is assigned at once, not after 3 s.
        "group.initial.rebalance.delay.ms": "0",
        # Fewer partitions for the internal topics than the default 50: the first
        # consumer group or transaction then waits for one partition, not fifty.
        "offsets.topic.num.partitions": "1",
        "transaction.state.log.num.partitions": "1",
        "share.coordinator.state.topic.num.partitions": "1",
    }
    lines = ["# Written by aion.infra.kafka on each start; edits are overwritten."]
    lines += [f"{key}={value}" for key, value in props.items()]
    return "\n".join(lines) + "\n"


def _string(data: bytes, at: int) -> tuple[str | None, int]:
    (size,) = struct.unpack_from(">h", data, at)
    at += 2
    if size < 0:
        return None, at
    return data[at : at + size].decode(), at + size


Broker = tuple[int, str, int]  # node id, host, port


def metadata_brokers(host: str, port: int, timeout: float = 2.0) -> tuple[list[Broker], int]:
    """Ask a broker for cluster metadata (Metadata v1, no topics).

    Returns (brokers as (node id, host, port), controller id). The broker
    answers only once it processes requests, and lists only the brokers that
    registered with the controller and are unfenced, i.e. can take writes.
    Raises OSError or ValueError when there is no proper answer.
    """
    client_id = b"aion-infra-probe"
    correlation_id = 0x41494F4E
    # Request header v1 (api key 3 = Metadata, version 1, correlation id,
    # client id), then the body: an empty topic array (v1+: no topics).
    body = struct.pack(">hhih", 3, 1, correlation_id, len(client_id)) + client_id
    body += struct.pack(">i", 0)
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(struct.pack(">i", len(body)) + body)
        (size,) = struct.unpack(">i", _recv(sock, 4))
        data = _recv(sock, size)
    (got_id, count) = struct.unpack_from(">ii", data, 0)
    if got_id != correlation_id:
        raise ValueError(f"correlation id {got_id} != {correlation_id}")
    at = 8
    brokers: list[Broker] = []
    for _ in range(count):
        (node_id,) = struct.unpack_from(">i", data, at)
        broker_host, at = _string(data, at + 4)
        (broker_port,) = struct.unpack_from(">i", data, at)
        _rack, at = _string(data, at + 4)
        brokers.append((node_id, broker_host or "", broker_port))
    (controller_id,) = struct.unpack_from(">i", data, at)
    return brokers, controller_id


def _recv(sock: socket.socket, size: int) -> bytes:
    buf = bytearray()
    while len(buf) < size:
        chunk = sock.recv(size - len(buf))
        if not chunk:
            raise ConnectionError("the broker closed the connection")
        buf += chunk
    return bytes(buf)


class Kafka(Component):
    name = "kafka"
    build_target = "kafka"
    start_timeout = 120.0  # a cold JVM on two busy cores

    def __init__(self, layout: Layout) -> None:
        super().__init__(layout)
        self.port = int(os.environ.get("AION_KAFKA_PORT") or DEFAULT_PORT)
        self.controller_port = int(
            os.environ.get("AION_KAFKA_CONTROLLER_PORT") or DEFAULT_CONTROLLER_PORT
        )
        # The listener for pods: on by default for the default broker only, so
        # that a test's own broker on free ports takes no fixed port.
        pod_port = os.environ.get("AION_KAFKA_POD_PORT") or (
            str(DEFAULT_POD_PORT) if self.port == DEFAULT_PORT else ""
        )
        self.pod_port = int(pod_port) if pod_port else None
        self.version = versions()["KAFKA_VERSION"]
        self.area = layout.data(self.name)
        self.config = self.area / "server.properties"
        self.log_dirs = self.area / "logdata"
        self._daemon: Daemon | None = None

    @property
    def libs(self) -> Path:
        return self.layout.cache / f"kafka-{self.version}" / "libs"

    @property
    def classpath(self) -> str:
        # The JVM expands a trailing `*` to every jar in the folder.
        return str(self.libs / "*")

    @property
    def bootstrap(self) -> str:
        return f"{HOST}:{self.port}"

    # -- Component ----------------------------------------------------------------
    @property
    def pod_bootstrap(self) -> str | None:
        """host:port for pods on the real nodes, when that listener is on."""
        ip = podnet.host_ip() if self.pod_port else None
        return f"{ip}:{self.pod_port}" if ip else None

    def endpoints(self) -> dict[str, str]:
        pods = self.pod_bootstrap
        return {
            "AION_KAFKA_BOOTSTRAP": self.bootstrap,
            **({"AION_KAFKA_POD_BOOTSTRAP": pods} if pods else {}),
        }

    def make_daemons(self) -> list[Daemon]:
        if self._daemon is None:
            self._daemon = Daemon(
                name=self.name,
                argv=[
                    java(),
                    *JVM_OPTS,
                    f"-Dlog4j2.configurationFile={LOG4J_CONFIG}",
                    "-cp",
                    self.classpath,
                    "kafka.Kafka",
                    str(self.config),
                ],
                layout=self.layout,
                cwd=self.area,
            )
        return [self._daemon]

    def prepare(self) -> None:
        if shutil.which(java()) is None:
            raise InfraError(
                self.name, "no `java` on PATH or in $JAVA_HOME/bin (Kafka needs Java 17 or later)"
            )
        self.area.mkdir(parents=True, exist_ok=True)
        self.config.write_text(
            server_properties(
                port=self.port,
                controller_port=self.controller_port,
                log_dirs=self.log_dirs,
                pods=self.pod_bootstrap,
            )
        )
        if (self.log_dirs / "meta.properties").exists():
            return  # formatted before: keep the topics and the cluster id
        log = self.layout.log(self.name)
        argv = [
            java(),
            f"-Dlog4j2.configurationFile={LOG4J_CONFIG}",
            "-cp",
            self.classpath,
            "kafka.tools.StorageTool",
            "format",
            "--config",
            str(self.config),
            "--cluster-id",
            new_cluster_id(),
        ]
        try:
            run(argv, log=log, cwd=self.area, timeout=300)
        except Exception as exc:
            raise InfraError(self.name, f"formatting {self.log_dirs} failed: {exc}", log) from None

    def down(self) -> None:
        # SIGTERM is a controlled shutdown: the broker closes its logs cleanly.
        self.daemons()[0].stop(timeout=30)

    def ready(self) -> bool:
        if not port_open(HOST, self.port):
            return False
        try:
            brokers, controller_id = metadata_brokers(HOST, self.port)
        except (OSError, ValueError, struct.error):
            return False
        return controller_id == NODE_ID and (NODE_ID, HOST, self.port) in brokers
