"""Who may call which internal RPC: the verified caller identity against a per-RPC allowlist.

The caller's identity is read from its client certificate, which the TLS
handshake has already verified against the install CA
(``context.auth_context()``: the SAN ``<identity>.aion.internal``, else the CN).
Each internal service writes its table once, as data: ``{"/pkg.Service/Method":
{"gateway"}}``. A call without an identity is UNAUTHENTICATED; an identity the
table does not name for the method (or a method missing from the table) is
PERMISSION_DENIED, naming the caller and the RPC. Health is open to any
authenticated caller. Tenancy helpers for internal requests live here too.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping
from typing import Any

import grpc

from aion.core import errors, pki, telemetry

Allow = Mapping[str, Collection[str]]
HEALTH_SERVICE = "grpc.health.v1.Health"

_Unary = Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Any]]
_Streaming = Callable[[Any, grpc.aio.ServicerContext[Any, Any]], AsyncIterator[Any]]


def methods(service: str, table: Mapping[str, Collection[str]]) -> dict[str, frozenset[str]]:
    """``{"/service/Method": identities}`` from ``{"Method": identities}`` of one service."""
    return {f"/{service}/{name}": frozenset(who) for name, who in table.items()}


def peer_identity(context: grpc.aio.ServicerContext[Any, Any]) -> str | None:
    """The verified caller's identity; None on a plaintext call or a certificate naming none."""
    auth = context.auth_context()
    sans = auth.get("x509_subject_alternative_name") or []
    for raw in sans:
        identity = pki.identity_of(raw.decode(errors="replace"))
        if identity is not None:
            return identity
    if sans:
        return None
    for raw in auth.get("x509_common_name") or []:
        value = raw.decode(errors="replace")
        if pki.identity_of(pki.dns_name(value)) == value:
            return value
    return None


def _check(
    method: str, allowed: Collection[str] | None, context: grpc.aio.ServicerContext[Any, Any]
) -> None:
    identity = peer_identity(context)
    if identity is None:
        raise errors.Unauthenticated(f"{method}: the caller presented no aion service certificate")
    if allowed is None or identity not in allowed:
        raise errors.PermissionDenied(f"{identity} may not call {method}")


def _guard_unary(method: str, allowed: Collection[str] | None, behavior: _Unary) -> _Unary:
    async def handler(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        _check(method, allowed, context)
        return await behavior(request, context)

    return handler


def _guard_streaming(
    method: str, allowed: Collection[str] | None, behavior: _Streaming
) -> _Streaming:
    async def handler(
        request: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Any]:
        _check(method, allowed, context)
        async for item in behavior(request, context):
            yield item

    return handler


class AllowInterceptor(grpc.aio.ServerInterceptor):
    """Admits each call whose verified caller the table names for its method.

    It runs inside ``ErrorInterceptor``, so its refusals are ordinary statuses
    with their metrics.
    """

    def __init__(self, allow: Allow) -> None:
        self._allow = {method: frozenset(who) for method, who in allow.items()}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method.lstrip("/").startswith(HEALTH_SERVICE + "/"):
            return handler
        allowed = self._allow.get(method)
        # A client-streaming behaviour takes the request iterator where a unary one takes
        # the request: the same guards wrap it, checking the caller before any read.
        if handler.unary_unary is not None:
            return handler._replace(unary_unary=_guard_unary(method, allowed, handler.unary_unary))
        if handler.unary_stream is not None:
            return handler._replace(
                unary_stream=_guard_streaming(method, allowed, handler.unary_stream)
            )
        if handler.stream_unary is not None:
            return handler._replace(
                stream_unary=_guard_unary(method, allowed, handler.stream_unary)
            )
        if handler.stream_stream is not None:
            return handler._replace(
                stream_stream=_guard_streaming(method, allowed, handler.stream_stream)
            )
        # A handler of no kind above: refuse rather than pass unchecked.
        return grpc.stream_stream_rpc_method_handler(_refuse_stream)


async def _refuse_stream(
    requests: Any, context: grpc.aio.ServicerContext[Any, Any]
) -> AsyncIterator[Any]:
    await context.abort(
        grpc.StatusCode.PERMISSION_DENIED, "a method of an unknown kind is not admitted"
    )
    yield None  # pragma: no cover (abort raises)


def require_tenant(tenant: str) -> str:
    """The tenant of an internal request; INVALID_ARGUMENT when it is empty (never a default).
    The request's log lines and span carry it from here on (``telemetry.bind_tenant``)."""
    if not tenant:
        raise errors.InvalidArgument("tenant is required", field="tenant")
    telemetry.bind_tenant(tenant)
    return tenant
