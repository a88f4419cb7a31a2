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

One protocol request, one call: A2A and MCP check a request at their door
(credentials, role, the rate limits: 401, 403 or 429 before the protocol's
own machinery reads it), and the servicer call the request then makes would
count it a second time. The door's ``Guard.admit`` counts it once and gives
an ``Admission``, handed to the servicer call in its ``Call`` (never read from
anything the client sends): that call takes the admitted caller instead of
authenticating and counting again, still checks its own role and, for a call
that runs a task, that the tenant's tokens are not in debt. An admission pays
for ``uses`` servicer calls; later ones count as usual.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping, MutableMapping
from typing import Any, Generic, TypeVar, cast

import grpc

_JWT_SHAPE = re.compile(r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*$")

Context = grpc.aio.ServicerContext[Any, Any]
P = TypeVar("P")  # who was admitted (auth.Principal; this module is below auth's users)


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


class Admission(Generic[P]):
    """A request the door authenticated and counted: it pays for the rate limits of its first
    ``uses`` servicer calls."""

    def __init__(self, principal: P, *, uses: int = 1) -> None:
        self._principal = principal
        self._left = uses

    def claim(self) -> P | None:
        """The admitted caller, once per use; None when the uses are spent."""
        if self._left <= 0:
            return None
        self._left -= 1
        return self._principal


_ADMISSION = "aion.admission"  # where a door leaves its Admission in the ASGI scope


def leave_admission(scope: MutableMapping[str, Any], admission: Admission[Any]) -> None:
    """Leave ``admission`` in a request's ASGI scope (the server's, never the client's), for
    the protocol's handlers of that request, wherever they run."""
    scope[_ADMISSION] = admission


def admission_of(scope: Mapping[str, Any] | None) -> Admission[Any] | None:
    """The admission a door left in ``scope``, if any."""
    found = scope.get(_ADMISSION) if scope is not None else None
    return found if isinstance(found, Admission) else None


class Call:
    """The part of a gRPC servicer context the gateway's servicers read (and, for a request
    its door admitted, the ``Admission``)."""

    def __init__(
        self,
        headers: Mapping[str, str],
        *,
        timeout_s: float,
        client: Any = None,
        admitted: Admission[Any] | None = None,
    ) -> None:
        self.admitted = admitted
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
