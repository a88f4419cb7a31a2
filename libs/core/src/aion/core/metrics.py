"""Prometheus metrics: the gRPC server's own, and the HTTP endpoint that serves them."""

from __future__ import annotations

import threading
import types
from typing import Self
from wsgiref.simple_server import WSGIServer

import prometheus_client

RPC_HANDLED = prometheus_client.Counter(
    "grpc_server_handled_total",
    "RPCs completed on the server, by status code.",
    ["grpc_service", "grpc_method", "grpc_code"],
)
RPC_SECONDS = prometheus_client.Histogram(
    "grpc_server_handling_seconds",
    "Time from an RPC's start to its last message.",
    ["grpc_service", "grpc_method"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)
RPC_IN_FLIGHT = prometheus_client.Gauge(
    "grpc_server_in_flight", "RPCs being handled now.", ["grpc_service"]
)


class MetricsServer:
    """Serves ``/metrics`` over HTTP in a daemon thread while the context is open."""

    def __init__(self, *, host: str, port: int | None) -> None:
        self._host = host
        self._requested = port
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int | None:
        """The port bound, or None when the endpoint is disabled."""
        return None if self._server is None else int(self._server.server_port)

    def __enter__(self) -> Self:
        if self._requested is not None:
            self._server, self._thread = prometheus_client.start_http_server(
                self._requested, addr=self._host
            )
        return self

    def close(self) -> None:
        """Stop serving; safe to call twice."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=2)
            self._thread = None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: types.TracebackType | None,
    ) -> None:
        self.close()
