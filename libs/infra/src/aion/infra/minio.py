"""A single-drive MinIO server, built from its Go module.

deploy/local/build.sh minio `go install`s github.com/minio/minio into
`$AION_CACHE/minio-<MINIO_RELEASE>/bin/minio`.

Layout under `<AION_INFRA_HOME>/minio`:
  data/    the drive: buckets, objects and MinIO's own .minio.sys
  certs/   --certs-dir (empty: plain HTTP), kept here rather than ~/.minio

Environment: AION_MINIO_PORT (9000, the S3 API), AION_MINIO_CONSOLE_PORT
(9001, the web console), AION_MINIO_ACCESS_KEY (aion) and
AION_MINIO_SECRET_KEY (aion-dev-secret): the root credentials, which MinIO
reads on every start.
"""

from __future__ import annotations

from os import environ
from pathlib import Path

from aion.infra import podnet
from aion.infra.component import Component, http_get, port_open
from aion.infra.paths import Layout, versions
from aion.infra.process import Daemon

HOST = "127.0.0.1"
DEFAULT_PORT = 9000
DEFAULT_CONSOLE_PORT = 9001
DEFAULT_ACCESS_KEY = "aion"
DEFAULT_SECRET_KEY = "aion-dev-secret"  # a local development server's, not a secret


class MinIO(Component):
    name = "minio"
    build_target = "minio"
    start_timeout = 60.0

    def __init__(self, layout: Layout) -> None:
        super().__init__(layout)
        self.port = int(environ.get("AION_MINIO_PORT") or DEFAULT_PORT)
        self.console_port = int(environ.get("AION_MINIO_CONSOLE_PORT") or DEFAULT_CONSOLE_PORT)
        self.access_key = environ.get("AION_MINIO_ACCESS_KEY") or DEFAULT_ACCESS_KEY
        self.secret_key = environ.get("AION_MINIO_SECRET_KEY") or DEFAULT_SECRET_KEY
        self.release = versions()["MINIO_RELEASE"]
        self.area = layout.data(self.name)
        self.drive = self.area / "data"
        self.certs = self.area / "certs"
        self._daemon: Daemon | None = None

    @property
    def binary(self) -> Path:
        return self.layout.cache / f"minio-{self.release}" / "bin" / "minio"

    @property
    def endpoint(self) -> str:
        """host:port of the S3 API, as the `minio` client takes it (plain HTTP)."""
        return f"{HOST}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.endpoint}"

    # -- Component ----------------------------------------------------------------
    def endpoints(self) -> dict[str, str]:
        ip = podnet.host_ip()
        return {
            **({"AION_MINIO_POD_ENDPOINT": f"{ip}:{self.port}"} if ip else {}),
            "AION_MINIO_ENDPOINT": self.endpoint,
            "AION_MINIO_ACCESS_KEY": self.access_key,
            "AION_MINIO_SECRET_KEY": self.secret_key,
        }

    def make_daemons(self) -> list[Daemon]:
        if self._daemon is None:
            self._daemon = Daemon(
                name=self.name,
                argv=[
                    str(self.binary),
                    "server",
                    str(self.drive),
                    "--address",
                    # One address only: every interface when pods must reach it too.
                    f"{'' if podnet.host_ip() else HOST}:{self.port}",
                    "--console-address",
                    f"{HOST}:{self.console_port}",
                    "--certs-dir",
                    str(self.certs),
                ],
                layout=self.layout,
                env={
                    "MINIO_ROOT_USER": self.access_key,
                    "MINIO_ROOT_PASSWORD": self.secret_key,
                    "MINIO_UPDATE": "off",
                },
                cwd=self.area,
            )
        return [self._daemon]

    def prepare(self) -> None:
        self.drive.mkdir(parents=True, exist_ok=True)
        self.certs.mkdir(parents=True, exist_ok=True)

    def ready(self) -> bool:
        if not port_open(HOST, self.port):
            return False
        # live: the HTTP server answers. cluster: the object layer is up and has
        # write quorum, so S3 requests are served rather than answered 503.
        return (
            http_get(f"{self.url}/minio/health/live")[0] == 200
            and http_get(f"{self.url}/minio/health/cluster")[0] == 200
        )
