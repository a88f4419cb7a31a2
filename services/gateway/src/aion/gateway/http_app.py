"""The gateway's HTTP front door: one Starlette app, errors in OpenAI's shape.

Every error is JSON, ``{"error": {"message", "type", "param", "code"}}``, with
the HTTP status of its aion error: 400 bad input (naming the field), 401
credentials, 403 role, 404 unknown agent or path, 405 method, 413 body too
large, 429 rate limit (with ``Retry-After``), 503 a peer down, 504 a deadline.
Anything unexpected is logged and answered 500 without its details.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

import pydantic
from starlette import applications, exceptions, requests, responses, routing

from aion.core import errors

log = logging.getLogger(__name__)

B = TypeVar("B", bound=pydantic.BaseModel)
Handler = Callable[[requests.Request], Awaitable[responses.Response]]

_STATUS: dict[type[errors.AionError], tuple[int, str]] = {
    errors.InvalidArgument: (400, "invalid_request_error"),
    errors.FailedPrecondition: (400, "invalid_request_error"),
    errors.Unauthenticated: (401, "authentication_error"),
    errors.PermissionDenied: (403, "permission_error"),
    errors.NotFound: (404, "not_found_error"),
    errors.AlreadyExists: (409, "conflict_error"),
    errors.Cancelled: (409, "conflict_error"),
    errors.ResourceExhausted: (429, "rate_limit_error"),
    errors.Unavailable: (503, "service_unavailable"),
    errors.DeadlineExceeded: (504, "timeout"),
}
_HTTP_TYPES = {404: "not_found_error", 405: "invalid_request_error", 413: "invalid_request_error"}


def error_body(err: errors.AionError) -> dict[str, Any]:
    """The OpenAI-shaped error object for ``err``."""
    _, kind = _STATUS.get(type(err), (500, "server_error"))
    return {
        "error": {
            "message": err.message,
            "type": kind,
            "param": err.field,
            "code": errors.code_name(err.code).lower(),
        }
    }


def error_response(
    err: errors.AionError, *, extra: Mapping[str, Any] | None = None
) -> responses.JSONResponse:
    """The HTTP response for ``err`` (``extra`` adds top-level members, such as ``aion``)."""
    status, _ = _STATUS.get(type(err), (500, "server_error"))
    headers = {}
    if err.retry_after_s is not None:
        headers["Retry-After"] = str(max(1, math.ceil(err.retry_after_s)))
    return responses.JSONResponse(
        {**error_body(err), **(extra or {})}, status_code=status, headers=headers
    )


def guarded(
    handler: Handler, *, params: Mapping[str, str] | None = None, not_found: str | None = None
) -> Handler:
    """``handler`` with aion errors answered as JSON; ``params`` renames the servicers'
    field names to the HTTP body's, ``not_found`` names the param a NotFound is about."""

    async def wrapped(request: requests.Request) -> responses.Response:
        try:
            return await handler(request)
        except errors.AionError as err:
            if err.field is not None and params:
                err.field = params.get(err.field, err.field)
            elif err.field is None and isinstance(err, errors.NotFound) and not_found:
                err.field = not_found
            return error_response(err)
        except exceptions.HTTPException:
            raise
        except Exception:
            log.exception("unexpected error in %s %s", request.method, request.url.path)
            return error_response(errors.Internal("internal error; the gateway's log has it"))

    return wrapped


async def read_body(request: requests.Request, *, max_bytes: int) -> bytes:
    """The body, refused with 413 past ``max_bytes`` (kept for later ``request.body()``)."""
    size = request.headers.get("content-length")
    if size is not None and size.isdigit() and int(size) > max_bytes:
        raise exceptions.HTTPException(413, f"the body is over {max_bytes} bytes")
    raw = bytearray()
    async for piece in request.stream():
        raw += piece
        if len(raw) > max_bytes:
            raise exceptions.HTTPException(413, f"the body is over {max_bytes} bytes")
    request._body = bytes(raw)  # starlette's cache: handlers that read the body again get it
    return request._body


async def parse_body(
    request: requests.Request,
    model: type[B],
    *,
    max_bytes: int,
    field_of: Callable[[pydantic.ValidationError], tuple[str, str]],
) -> B:
    """The JSON body as ``model``, or InvalidArgument naming what to fix."""
    raw = await read_body(request, max_bytes=max_bytes)
    try:
        data = json.loads(raw)
        json.dumps(data, ensure_ascii=False).encode()  # lone surrogates cannot reach protobuf
    except (ValueError, RecursionError, UnicodeError) as exc:
        raise errors.InvalidArgument(f"the body is not valid JSON: {exc}", field="body") from exc
    if not isinstance(data, dict):
        raise errors.InvalidArgument("the body must be a JSON object", field="body")
    try:
        return model.model_validate(data)
    except pydantic.ValidationError as exc:
        field, why = field_of(exc)
        raise errors.InvalidArgument(f"{field}: {why}", field=field) from exc


async def _http_error(request: requests.Request, exc: Exception) -> responses.Response:
    assert isinstance(exc, exceptions.HTTPException)
    return responses.JSONResponse(
        {
            "error": {
                "message": exc.detail or "",
                "type": _HTTP_TYPES.get(exc.status_code, "invalid_request_error"),
                "param": None,
                "code": None,
            }
        },
        status_code=exc.status_code,
        headers=exc.headers,
    )


def build(routes: list[routing.BaseRoute]) -> applications.Starlette:
    """The app serving ``routes``, with JSON errors for unknown paths and methods."""
    return applications.Starlette(
        routes=routes, exception_handlers={exceptions.HTTPException: _http_error}
    )
