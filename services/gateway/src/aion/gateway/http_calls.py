"""HTTP requests as calls of the gateway's own servicers, so both surfaces share one code path.

An HTTP handler builds a ``Call`` from the request's headers and hands it to
``TasksServicer`` or ``AgentsServicer`` where they expect a gRPC context: the
servicers read only its metadata and its deadline. Authentication, roles,
rate limits, privacy forwarding and idempotency are therefore the gRPC API's
own, not a second implementation.

Credentials: ``x-api-key: <key>`` as on gRPC; ``Authorization: Bearer <jwt>``
as on gRPC; and, because OpenAI clients send their API key as a bearer token,
``Authorization: Bearer <api key>`` too. A bearer token is taken for a JWT when
it has a JWT's compact shape (three base64url segments), else for an API key.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from typing import Any, cast

import grpc

_JWT_SHAPE = re.compile(r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*$")

Context = grpc.aio.ServicerContext[Any, Any]


def metadata(headers: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    """The gRPC metadata that carries the same credentials as ``headers``."""
    api_key = headers.get("x-api-key")
    if api_key is not None:
        return (("x-api-key", api_key),)
    auth = headers.get("authorization")
    if auth is None:
        return ()
    scheme, _, token = auth.partition(" ")
    token = token.strip()
    if scheme.lower() == "bearer" and token and not _JWT_SHAPE.match(token):
        return (("x-api-key", token),)
    return (("authorization", auth),)


class Call:
    """The part of a gRPC servicer context the gateway's servicers read."""

    def __init__(self, headers: Mapping[str, str], *, timeout_s: float, client: Any = None) -> None:
        self._metadata = metadata(headers)
        # Starlette's request.client (host, port), for the failed-authentication limit.
        self._peer = f"http:{client.host}" if client is not None else "http:unknown"
        self._deadline = time.monotonic() + timeout_s

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        """The caller's credentials, as gRPC metadata."""
        return self._metadata

    def peer(self) -> str:
        """The caller's address, as gRPC names a peer."""
        return self._peer

    def time_remaining(self) -> float:
        """Seconds left of the call's deadline."""
        return max(0.0, self._deadline - time.monotonic())

    def context(self) -> Context:
        """This call where a servicer expects its context."""
        return cast(Context, self)
