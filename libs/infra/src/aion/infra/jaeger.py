"""Jaeger v2, the local trace store, built from its Go module.

deploy/local/build.sh jaeger builds github.com/jaegertracing/jaeger's
cmd/jaeger (Jaeger v2: an OpenTelemetry Collector distribution) into
`$AION_CACHE/jaeger-<JAEGER_VERSION>/bin/jaeger`.

It receives spans over OTLP (gRPC and HTTP), keeps them in Badger on disk (so
traces survive a restart; 48 h), and serves them from its query API and UI
port: `/api/traces/<trace id>` (Jaeger's JSON), `/api/v3/traces/<trace id>`
(OTLP JSON), `/api/services`. The UI's release assets are not in the Go
module, so the UI port serves Jaeger's placeholder page instead of the UI;
the APIs are complete.

Layout under `<AION_INFRA_HOME>/jaeger`:
  config.yaml  the collector configuration, written on every start
  badger/      the span store (keys and values)

Environment: AION_JAEGER_OTLP_PORT (4317, OTLP gRPC), AION_JAEGER_OTLP_HTTP_PORT
(4318, OTLP HTTP), AION_JAEGER_UI_PORT (16686, the query API and UI),
AION_JAEGER_QUERY_GRPC_PORT (16685, the query API over gRPC).
"""

from __future__ import annotations

import json
from os import environ
from pathlib import Path
from typing import Any

from aion.infra import podnet
from aion.infra.component import Component, http_get, port_open
from aion.infra.paths import Layout, versions
from aion.infra.process import Daemon

HOST = "127.0.0.1"
DEFAULT_OTLP_PORT = 4317
DEFAULT_OTLP_HTTP_PORT = 4318
DEFAULT_UI_PORT = 16686
DEFAULT_QUERY_GRPC_PORT = 16685
SPAN_TTL = "48h"


def _port(variable: str, default: int) -> int:
    return int(environ.get(variable) or default)


class Jaeger(Component):
    name = "jaeger"
    build_target = "jaeger"
    start_timeout = 60.0

    def __init__(self, layout: Layout) -> None:
        super().__init__(layout)
        self.otlp_port = _port("AION_JAEGER_OTLP_PORT", DEFAULT_OTLP_PORT)
        self.otlp_http_port = _port("AION_JAEGER_OTLP_HTTP_PORT", DEFAULT_OTLP_HTTP_PORT)
        self.ui_port = _port("AION_JAEGER_UI_PORT", DEFAULT_UI_PORT)
        self.query_grpc_port = _port("AION_JAEGER_QUERY_GRPC_PORT", DEFAULT_QUERY_GRPC_PORT)
        self.version = versions()["JAEGER_VERSION"]
        self.area = layout.data(self.name)
        self.config_file = self.area / "config.yaml"
        self.store = self.area / "badger"

    @property
    def binary(self) -> Path:
        return self.layout.cache / f"jaeger-{self.version}" / "bin" / "jaeger"

    @property
    def otlp_endpoint(self) -> str:
        """host:port of the OTLP gRPC receiver (what AION_*_OTLP_ENDPOINT takes)."""
        return f"{HOST}:{self.otlp_port}"

    @property
    def otlp_http_url(self) -> str:
        return f"http://{HOST}:{self.otlp_http_port}"

    @property
    def url(self) -> str:
        """The query API's and UI's base URL."""
        return f"http://{HOST}:{self.ui_port}"

    def trace_url(self, trace_id: str) -> str:
        """Where the UI (and the JSON API under /api/traces/) shows one trace."""
        return f"{self.url}/trace/{trace_id}"

    def config(self) -> dict[str, Any]:
        """The collector configuration: OTLP in, Badger storage, the query extension."""
        # The receivers listen on every interface when pods must reach them too.
        receive_on = "0.0.0.0" if podnet.host_ip() else HOST
        return {
            "service": {
                "extensions": ["jaeger_storage", "jaeger_query"],
                "pipelines": {
                    "traces": {
                        "receivers": ["otlp"],
                        "processors": ["batch"],
                        "exporters": ["jaeger_storage_exporter"],
                    }
                },
                "telemetry": {
                    "resource": {"service.name": "jaeger"},
                    # Its own metrics would take the collector's port 8888 on every
                    # interface; nothing here reads them.
                    "metrics": {"level": "none"},
                    "traces": {"level": "none"},
                    "logs": {"level": "info"},
                },
            },
            "extensions": {
                "jaeger_query": {
                    "storage": {"traces": "local"},
                    # On by default: the query service's own spans would go to
                    # localhost:4317 (the default Jaeger, or nobody: then each stop
                    # waits 10 s on the export).
                    "enable_tracing": False,
                    "http": {"endpoint": f"{HOST}:{self.ui_port}"},
                    "grpc": {"endpoint": f"{HOST}:{self.query_grpc_port}"},
                },
                "jaeger_storage": {
                    "backends": {
                        "local": {
                            "badger": {
                                "directories": {
                                    "keys": str(self.store / "keys"),
                                    "values": str(self.store / "values"),
                                },
                                "ephemeral": False,
                                "ttl": {"spans": SPAN_TTL},
                            }
                        }
                    }
                },
            },
            "receivers": {
                "otlp": {
                    "protocols": {
                        "grpc": {"endpoint": f"{receive_on}:{self.otlp_port}"},
                        "http": {"endpoint": f"{receive_on}:{self.otlp_http_port}"},
                    }
                }
            },
            # A short timeout: a span shows in the query API within about a second.
            "processors": {"batch": {"timeout": "200ms"}},
            "exporters": {"jaeger_storage_exporter": {"trace_storage": "local"}},
        }

    # -- Component ----------------------------------------------------------------
    def endpoints(self) -> dict[str, str]:
        ip = podnet.host_ip()
        return {
            **({"AION_JAEGER_POD_OTLP_ENDPOINT": f"{ip}:{self.otlp_port}"} if ip else {}),
            "AION_JAEGER_OTLP_ENDPOINT": self.otlp_endpoint,
            "AION_JAEGER_URL": self.url,
        }

    def make_daemons(self) -> list[Daemon]:
        return [
            Daemon(
                name=self.name,
                argv=[str(self.binary), "--config", str(self.config_file)],
                layout=self.layout,
                cwd=self.area,
            )
        ]

    def prepare(self) -> None:
        for d in (self.store / "keys", self.store / "values"):
            d.mkdir(parents=True, exist_ok=True)
        # JSON is YAML: the configuration follows this process's ports each start.
        self.config_file.write_text(json.dumps(self.config(), indent=2) + "\n")

    def ready(self) -> bool:
        return (
            port_open(HOST, self.otlp_port)
            and port_open(HOST, self.otlp_http_port)
            and http_get(f"{self.url}/api/services")[0] == 200
        )
