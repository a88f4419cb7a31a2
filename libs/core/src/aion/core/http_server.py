"""uvicorn serving an ASGI app inside the process's own event loop, beside its gRPC server.

The socket is bound on entry (so port 0 resolves at once and a taken port
fails the start); ``serve`` runs until ``shutdown``. Signals stay with the
process's lifecycle: uvicorn's own handlers are not installed. The gateway (its
HTTP front door) and the executor (its OpenAI-compatible API) use it.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import types
from collections.abc import Iterator
from typing import Any, Self

import uvicorn

log = logging.getLogger(__name__)


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # SIGTERM belongs to aion.core.lifecycle, which drains gRPC and HTTP together.
        yield


class HttpServer:
    """One ASGI app on ``host:port``; an async context manager with an idempotent close."""

    def __init__(self, app: Any, *, name: str, host: str, port: int) -> None:
        self.name = name
        self._host = host
        self._port = port
        self._server = _Server(
            uvicorn.Config(
                app,
                host=host,
                port=port,
                log_config=None,
                access_log=False,
                lifespan="off",
                timeout_graceful_shutdown=5,
            )
        )
        self._socket: socket.socket | None = None

    @property
    def port(self) -> int:
        """The bound port (known once entered)."""
        if self._socket is None:
            raise RuntimeError("the server is not started")
        return int(self._socket.getsockname()[1])

    @property
    def url(self) -> str:
        """The base URL clients use."""
        return f"http://{self._host}:{self.port}"

    async def __aenter__(self) -> Self:
        family = socket.AF_INET6 if ":" in self._host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self._host, self._port))
        except OSError as exc:
            sock.close()
            raise OSError(
                f"{self.name}: cannot listen on {self._host}:{self._port}: {exc}"
            ) from exc
        sock.listen(1024)
        sock.setblocking(False)
        self._socket = sock
        log.info("%s listening", self.name, extra={"address": f"{self._host}:{self.port}"})
        return self

    async def serve(self) -> None:
        """Serve until ``shutdown``."""
        assert self._socket is not None
        await self._server.serve(sockets=[self._socket])

    def shutdown(self) -> None:
        """Ask ``serve`` to stop accepting and finish open responses."""
        self._server.should_exit = True

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: types.TracebackType | None,
    ) -> None:
        self.shutdown()
        if self._socket is not None:
            self._socket.close()
