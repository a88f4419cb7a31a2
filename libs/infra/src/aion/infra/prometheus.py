"""A Prometheus server, the local metrics store, built from its Go module.

deploy/local/build.sh prometheus `go install`s github.com/prometheus/prometheus's
cmd/prometheus and cmd/promtool into `$AION_CACHE/prometheus-<PROMETHEUS_VERSION>/bin`
(with only the file and HTTP service discoveries).

It scrapes every 5 s whatever the JSON files in its targets folder name
(file_sd: `make dev` and the tests add their services with `add_targets`),
evaluates the chart's rule files, `charts/aion/files/prometheus/*.yaml`, every
5 s, and serves the HTTP API (`/api/v1/query`, `/api/v1/targets`, `/-/ready`).
The web UI's assets are built with npm outside the Go module and are not in
the binary: the UI pages answer with an error, the API is complete.

Layout under `<AION_INFRA_HOME>/prometheus`:
  prometheus.yml  the configuration, written on every start
  targets/        file_sd target files, one `<name>.json` per group of targets
  data/           the TSDB (kept across restarts; 2 days)

Environment: AION_PROMETHEUS_PORT (9095).
"""

from __future__ import annotations

import json
import os
import urllib.parse
from collections.abc import Mapping, Sequence
from os import environ
from pathlib import Path
from typing import Any

from aion.infra.component import Component, InfraError, http_get, port_open
from aion.infra.paths import REPO, Layout, versions
from aion.infra.process import Daemon

HOST = "127.0.0.1"
DEFAULT_PORT = 9095
INTERVAL = "5s"
RETENTION = "2d"
RULES_DIR = REPO / "charts" / "aion" / "files" / "prometheus"


class Prometheus(Component):
    name = "prometheus"
    build_target = "prometheus"
    start_timeout = 60.0

    def __init__(self, layout: Layout) -> None:
        super().__init__(layout)
        self.port = int(environ.get("AION_PROMETHEUS_PORT") or DEFAULT_PORT)
        self.version = versions()["PROMETHEUS_VERSION"]
        self.area = layout.data(self.name)
        self.config_file = self.area / "prometheus.yml"
        self.targets_dir = self.area / "targets"
        self.tsdb = self.area / "data"

    @property
    def bin_dir(self) -> Path:
        return self.layout.cache / f"prometheus-{self.version}" / "bin"

    @property
    def binary(self) -> Path:
        return self.bin_dir / "prometheus"

    @property
    def promtool(self) -> Path:
        return self.bin_dir / "promtool"

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    # -- targets --------------------------------------------------------------------
    def add_targets(
        self, name: str, targets: Sequence[str], labels: Mapping[str, str] | None = None
    ) -> Path:
        """Scrape `targets` (host:port, `/metrics`) as the job `name`, with `labels`
        on every series; replaces an earlier group of that name. Prometheus reads the
        file within seconds (a file watch); returns the file."""
        if not name or "/" in name:
            raise ValueError(f"a target group needs a plain file name, not {name!r}")
        self.targets_dir.mkdir(parents=True, exist_ok=True)
        group = {"targets": list(targets), "labels": {"job": name, **(labels or {})}}
        path = self.targets_dir / f"{name}.json"
        scratch = path.with_suffix(".json.tmp")  # not *.json: never read half-written
        scratch.write_text(json.dumps([group], indent=2) + "\n")
        os.replace(scratch, path)
        return path

    def remove_targets(self, name: str) -> None:
        """Stop scraping the group `name` (its series go stale)."""
        (self.targets_dir / f"{name}.json").unlink(missing_ok=True)

    def target_groups(self) -> list[str]:
        """The names of the groups in the targets folder."""
        return sorted(p.stem for p in self.targets_dir.glob("*.json"))

    # -- the HTTP API -----------------------------------------------------------------
    def api(self, path: str, **params: str) -> Any:
        """GET /api/v1/<path>: its `data` member; raises RuntimeError with the error."""
        query = urllib.parse.urlencode(params)
        status, body = http_get(f"{self.url}/api/v1/{path}" + (f"?{query}" if query else ""))
        try:
            reply = json.loads(body) if body else {}
        except ValueError:
            reply = {}
        if status != 200 or reply.get("status") != "success":
            raise RuntimeError(f"prometheus {path} {params}: HTTP {status}: {body[:500]!r}")
        return reply["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query's vector: [{"metric": {labels}, "value": [time, "value"]}]."""
        data = self.api("query", query=expr)
        result: list[dict[str, Any]] = data["result"]
        return result

    def config(self) -> dict[str, Any]:
        return {
            "global": {"scrape_interval": INTERVAL, "evaluation_interval": INTERVAL},
            # A glob: none matches before the chart has rule files.
            "rule_files": [str(RULES_DIR / "*.yaml")],
            "scrape_configs": [
                {
                    "job_name": "aion",
                    "file_sd_configs": [
                        {"files": [str(self.targets_dir / "*.json")], "refresh_interval": INTERVAL}
                    ],
                },
                {
                    "job_name": "prometheus",
                    "static_configs": [{"targets": [f"{HOST}:{self.port}"]}],
                },
            ],
        }

    # -- Component ----------------------------------------------------------------
    def endpoints(self) -> dict[str, str]:
        return {"AION_PROMETHEUS_URL": self.url}

    def path_dirs(self) -> list[Path]:
        return [self.bin_dir]  # promtool

    def make_daemons(self) -> list[Daemon]:
        return [
            Daemon(
                name=self.name,
                argv=[
                    str(self.binary),
                    f"--config.file={self.config_file}",
                    f"--storage.tsdb.path={self.tsdb}",
                    f"--storage.tsdb.retention.time={RETENTION}",
                    f"--web.listen-address={HOST}:{self.port}",
                    # POST /-/reload rereads the configuration and the rule files.
                    "--web.enable-lifecycle",
                ],
                layout=self.layout,
                cwd=self.area,
            )
        ]

    def prepare(self) -> None:
        self.targets_dir.mkdir(parents=True, exist_ok=True)
        self.tsdb.mkdir(parents=True, exist_ok=True)
        # JSON is YAML: the configuration follows this checkout and its port.
        self.config_file.write_text(json.dumps(self.config(), indent=2) + "\n")

    def after_start(self) -> None:
        """Reread the configuration and the rule files, so a reused server evaluates
        the rules as they are now (and a file that does not parse fails here)."""
        self.prepare()
        self.reload()

    def reload(self) -> None:
        """POST /-/reload; raises InfraError with the log when Prometheus refuses
        (a rule file that does not parse)."""
        status, body = http_get(f"{self.url}/-/reload", timeout=30, method="POST")
        if status != 200:
            raise InfraError(
                self.name,
                f"reload refused (HTTP {status}): {body.decode(errors='replace')}",
                self.layout.log(self.name),
            )

    def ready(self) -> bool:
        return port_open(HOST, self.port) and http_get(f"{self.url}/-/ready")[0] == 200
