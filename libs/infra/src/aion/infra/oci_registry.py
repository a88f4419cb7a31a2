"""A local OCI image registry: distribution's registry, built from its Go module.

deploy/local/images/build-tools.sh registry `go install`s
github.com/distribution/distribution/v3/cmd/registry into
`$AION_CACHE/registry-<DISTRIBUTION_VERSION>/bin/registry`. `make images`
pushes aion's images here and the local cluster's container runtime pulls
them from here. Plain HTTP: it serves this machine only.

Layout under `<AION_INFRA_HOME>/registry`:
  config.yml   written on every start from the settings below
  data/        the filesystem storage driver's root (blobs, manifests, tags)

Environment: AION_REGISTRY_ADDR (127.0.0.1:5000), the address it listens on
(0.0.0.0:5000, or a host address pods can reach, when something off the
loopback must pull); AION_REGISTRY_HOST, the host[:port] image references
name (default: localhost:<port> for a loopback or wildcard address, else the
listen address).

(The module is not called registry.py: aion.infra.registry is the table of
components by name.)
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from os import environ
from pathlib import Path
from typing import Any

from aion.infra.component import Component, InfraError, port_open
from aion.infra.paths import REPO, Layout, versions
from aion.infra.process import Daemon

DEFAULT_ADDR = "127.0.0.1:5000"
TOOLS_SCRIPT = REPO / "deploy" / "local" / "images" / "build-tools.sh"

# What a manifest request accepts: single-platform images in both formats, and indexes.
MANIFEST_TYPES = ", ".join(
    [
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
    ]
)

# No proxy for a registry on this machine, whatever http_proxy says.
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def run_tools(*targets: str) -> None:
    """deploy/local/images/build-tools.sh TARGET... (cached: a no-op once built)."""
    import subprocess

    proc = subprocess.run(["bash", str(TOOLS_SCRIPT), *targets], check=False)
    if proc.returncode != 0:
        what = " ".join(targets)
        raise InfraError("registry", f"build failed (deploy/local/images/build-tools.sh {what})")


@dataclass(frozen=True)
class RegistryClient:
    """The parts of the OCI distribution API aion uses, over plain HTTP."""

    base: str  # http://host:port

    def _request(
        self, path: str, method: str = "GET", accept: str | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        req = urllib.request.Request(f"{self.base}{path}", method=method)
        if accept:
            req.add_header("Accept", accept)
        try:
            with _opener.open(req, timeout=10) as resp:
                return resp.status, dict(resp.headers.items()), resp.read()
        except urllib.error.HTTPError as exc:
            body = exc.read()
            headers = dict(exc.headers.items())
            exc.close()
            return exc.code, headers, body

    def alive(self) -> bool:
        try:
            status, headers, _ = self._request("/v2/")
        except (urllib.error.URLError, OSError):
            return False
        return status == 200 and "registry/2.0" in headers.get(
            "Docker-Distribution-Api-Version", headers.get("Docker-Distribution-API-Version", "")
        )

    def tags(self, name: str) -> list[str]:
        """The tags of repository `name` (empty when it has none or does not exist)."""
        status, _, body = self._request(f"/v2/{name}/tags/list")
        if status == 404:
            return []
        if status != 200:
            raise RuntimeError(f"registry: tags of {name}: HTTP {status}: {body[:200]!r}")
        return list(json.loads(body).get("tags") or [])

    def has(self, name: str, tag: str) -> bool:
        status, _, _ = self._request(f"/v2/{name}/manifests/{tag}", "HEAD", MANIFEST_TYPES)
        return status == 200

    def manifest(self, name: str, ref: str) -> dict[str, Any]:
        status, _, body = self._request(f"/v2/{name}/manifests/{ref}", accept=MANIFEST_TYPES)
        if status != 200:
            raise RuntimeError(f"registry: manifest {name}:{ref}: HTTP {status}: {body[:200]!r}")
        out: dict[str, Any] = json.loads(body)
        return out

    def digest(self, name: str, tag: str) -> str | None:
        """The manifest digest a tag points at (None when there is no such tag)."""
        status, headers, _ = self._request(f"/v2/{name}/manifests/{tag}", "HEAD", MANIFEST_TYPES)
        if status != 200:
            return None
        return headers.get("Docker-Content-Digest")

    def delete(self, name: str, digest: str) -> None:
        """Delete a manifest (and so every tag on it); its blobs go at the next
        garbage collection."""
        status, _, body = self._request(f"/v2/{name}/manifests/{digest}", "DELETE")
        if status not in (202, 404):
            raise RuntimeError(f"registry: delete {name}@{digest}: HTTP {status}: {body[:200]!r}")

    def retag(self, name: str, tag: str, new_tag: str) -> None:
        """Give an image in the registry another tag (its manifest, put again)."""
        status, headers, body = self._request(f"/v2/{name}/manifests/{tag}", accept=MANIFEST_TYPES)
        if status != 200:
            raise RuntimeError(f"registry: manifest {name}:{tag}: HTTP {status}: {body[:200]!r}")
        req = urllib.request.Request(
            f"{self.base}/v2/{name}/manifests/{new_tag}", data=body, method="PUT"
        )
        req.add_header("Content-Type", headers.get("Content-Type", MANIFEST_TYPES.split(",")[0]))
        try:
            with _opener.open(req, timeout=10) as resp:
                resp.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read()[:200]
            exc.close()
            raise RuntimeError(
                f"registry: tag {name}:{new_tag}: HTTP {exc.code}: {detail!r}"
            ) from None

    def blob(self, name: str, digest: str) -> bytes:
        status, _, body = self._request(f"/v2/{name}/blobs/{digest}")
        if status != 200:
            raise RuntimeError(f"registry: blob {name}@{digest}: HTTP {status}")
        return body

    def config(self, name: str, ref: str) -> dict[str, Any]:
        """The image configuration (user, entrypoint, env, layers' diff ids)."""
        digest = self.manifest(name, ref)["config"]["digest"]
        out: dict[str, Any] = json.loads(self.blob(name, digest))
        return out


class ImageRegistry(Component):
    name = "registry"
    start_timeout = 30.0

    def __init__(self, layout: Layout) -> None:
        super().__init__(layout)
        self.addr = environ.get("AION_REGISTRY_ADDR") or DEFAULT_ADDR
        listen_host, _, port = self.addr.rpartition(":")
        self.port = int(port)
        self.listen_host = listen_host or "0.0.0.0"
        # Probe where it listens; a wildcard address is reached on the loopback.
        wildcard = self.listen_host in ("0.0.0.0", "::", "[::]")
        self.probe_host = "127.0.0.1" if wildcard else self.listen_host.strip("[]")
        loopback = wildcard or self.probe_host.startswith("127.") or self.probe_host == "localhost"
        default_host = f"localhost:{self.port}" if loopback else f"{self.listen_host}:{self.port}"
        self.host = environ.get("AION_REGISTRY_HOST") or default_host
        self.version = versions()["DISTRIBUTION_VERSION"]
        self.area = layout.data(self.name)
        self.storage = self.area / "data"
        self.config_file = self.area / "config.yml"
        self._daemon: Daemon | None = None

    @property
    def binary(self) -> Path:
        return self.layout.cache / f"registry-{self.version}" / "bin" / "registry"

    @property
    def url(self) -> str:
        return f"http://{self.probe_host}:{self.port}"

    @property
    def client(self) -> RegistryClient:
        return RegistryClient(self.url)

    def reference(self, name: str, tag: str) -> str:
        """An image reference in this registry, e.g. localhost:5000/aion/gateway:<tag>."""
        return f"{self.host}/{name}:{tag}"

    # -- Component ----------------------------------------------------------------
    def build(self) -> None:
        run_tools("registry")

    def endpoints(self) -> dict[str, str]:
        return {"AION_REGISTRY_HOST": self.host, "AION_REGISTRY_ADDR": self.addr}

    def make_daemons(self) -> list[Daemon]:
        if self._daemon is None:
            self._daemon = Daemon(
                name=self.name,
                argv=[str(self.binary), "serve", str(self.config_file)],
                layout=self.layout,
                env={"OTEL_TRACES_EXPORTER": "none"},
                cwd=self.area,
            )
        return [self._daemon]

    def prepare(self) -> None:
        self.storage.mkdir(parents=True, exist_ok=True)
        config = {
            "version": 0.1,
            "log": {"level": "warn", "accesslog": {"disabled": True}},
            "storage": {
                "filesystem": {"rootdirectory": str(self.storage)},
                "delete": {"enabled": True},
                "maintenance": {"uploadpurging": {"enabled": False}},
            },
            # One registry process: the upload-state secret need not be shared.
            "http": {"addr": self.addr, "secret": "aion-local-registry"},
        }
        # JSON is YAML: no YAML writer needed for the registry's configuration.
        self.config_file.write_text(json.dumps(config, indent=2) + "\n")

    def ready(self) -> bool:
        return port_open(self.probe_host, self.port) and self.client.alive()

    def collect_garbage(self) -> str:
        """Free the blobs no manifest uses: the registry stops for it (seconds),
        as distribution requires, and starts again; returns the collector's summary."""
        import subprocess

        was_running = self.running()
        self.down()
        self.prepare()
        proc = subprocess.run(
            [str(self.binary), "garbage-collect", "--delete-untagged", str(self.config_file)],
            capture_output=True,
            text=True,
            check=False,
        )
        if was_running:
            self.up()
            self.detach()
        if proc.returncode != 0:
            raise InfraError(self.name, f"garbage-collect failed: {proc.stderr.strip()[-500:]}")
        return proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
