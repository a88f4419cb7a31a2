"""The OpenAI-compatible HTTP API: chat and text completions (streamed as SSE), embeddings, models.

A Starlette app over the same ``Inference`` as the gRPC service, so the
OpenAI client libraries and curl work unchanged against an executor. Errors
use OpenAI's shape (``{"error": {"message", "type", "param", "code"}}``):
bad input is 400 naming the field, a full queue 429 and a model still
loading 503, both with ``Retry-After``. A stream's first chunk is awaited
before the response starts, so errors found before any text get their own
status; a client that disconnects cancels its stream and frees its slot.

Every route but ``/healthz`` requires ``Authorization: Bearer <token>``
(``AION_EXECUTOR_HTTP_TOKEN``); a missing or wrong token is 401, and with no
token configured every such request is refused (fail closed).
"""

from __future__ import annotations

import base64
import contextlib
import hmac
import json
import math
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Any, TypeVar

import pydantic
from starlette import applications, middleware, requests, responses, routing, types

from aion.core import errors
from aion.executor import backend, inference, validation
from aion.executor.http import schema

_STATUS = {
    errors.InvalidArgument: (400, "invalid_request_error"),
    errors.FailedPrecondition: (400, "invalid_request_error"),
    errors.NotFound: (404, "not_found_error"),
    errors.ResourceExhausted: (429, "rate_limit_error"),
    errors.Unavailable: (503, "service_unavailable"),
    errors.DeadlineExceeded: (504, "timeout"),
}
B = TypeVar("B", bound=pydantic.BaseModel)


class BodyTooLarge(errors.InvalidArgument):
    """The request body is over the executor's limit (HTTP 413)."""


_STATUS[BodyTooLarge] = (413, "invalid_request_error")
_SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def error_response(err: errors.AionError) -> responses.JSONResponse:
    """The OpenAI-shaped error for an AionError."""
    status, kind = _STATUS.get(type(err), (500, "server_error"))
    headers = {}
    if err.retry_after_s is not None:
        headers["Retry-After"] = str(max(1, math.ceil(err.retry_after_s)))
    return responses.JSONResponse(
        {
            "error": {
                "message": err.message,
                "type": kind,
                "param": err.field,
                "code": errors.code_name(err.code).lower(),
            }
        },
        status_code=status,
        headers=headers,
    )


Handler = Callable[[requests.Request], Any]


def _errors_as_json(handler: Handler) -> Handler:
    async def wrapped(request: requests.Request) -> responses.Response:
        try:
            return await handler(request)  # type: ignore[no-any-return]
        except errors.AionError as err:
            return error_response(err)

    return wrapped


async def _read(request: requests.Request, limit: int) -> bytes:
    """The body, refused (413) once it is over ``limit`` bytes, before it is all read."""
    too_large = BodyTooLarge(
        f"the request body is over {limit} bytes, the limit; send a shorter prompt", field="body"
    )
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


async def _body(request: requests.Request, model: type[B], limit: int) -> B:
    data = await _read(request, limit)
    try:
        raw = json.loads(data)
    except ValueError as exc:
        raise errors.InvalidArgument(f"the body is not JSON: {exc}", field="body") from exc
    try:
        return model.model_validate(raw)
    except pydantic.ValidationError as exc:
        field, why = schema.field_of(exc)
        raise errors.InvalidArgument(f"{field}: {why}", field=field) from exc


def _sse(data: object) -> bytes:
    return b"data: " + json.dumps(data, separators=(",", ":")).encode() + b"\n\n"


def _usage(usage: backend.Usage | None) -> dict[str, int]:
    prompt = usage.prompt_tokens if usage else 0
    completion = usage.completion_tokens if usage else 0
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


OPEN_PATHS = frozenset({"/healthz"})


class BearerToken:
    """ASGI middleware: every request but ``OPEN_PATHS`` carries the bearer token, or gets 401."""

    def __init__(self, app: types.ASGIApp, *, token: str | None) -> None:
        self._app = app
        self._expected = f"Bearer {token}".encode() if token else None

    def _authorized(self, scope: types.Scope) -> bool:
        if self._expected is None:
            return False
        given = dict(scope.get("headers") or []).get(b"authorization", b"")
        return hmac.compare_digest(given, self._expected)

    async def __call__(self, scope: types.Scope, receive: types.Receive, send: types.Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS or self._authorized(scope):
            await self._app(scope, receive, send)
            return
        why = (
            "this executor's HTTP API is closed: AION_EXECUTOR_HTTP_TOKEN is not set"
            if self._expected is None
            else "missing or wrong bearer token (Authorization: Bearer <token>)"
        )
        reply = responses.JSONResponse(
            {
                "error": {
                    "message": why,
                    "type": "authentication_error",
                    "param": None,
                    "code": "unauthenticated",
                }
            },
            status_code=401,
            headers={"WWW-Authenticate": "Bearer"},
        )
        await reply(scope, receive, send)


class OpenAIApi:
    """The routes, bound to one executor's ``Inference``, behind the bearer token."""

    def __init__(self, service: inference.Inference, *, token: str | None) -> None:
        self._service = service
        self._limit = service.limits.max_body_bytes
        self.app = applications.Starlette(
            middleware=[middleware.Middleware(BearerToken, token=token)],
            routes=[
                routing.Route("/v1/chat/completions", _errors_as_json(self.chat), methods=["POST"]),
                routing.Route(
                    "/v1/completions", _errors_as_json(self.completions), methods=["POST"]
                ),
                routing.Route("/v1/embeddings", _errors_as_json(self.embeddings), methods=["POST"]),
                routing.Route("/v1/models", self.models, methods=["GET"]),
                routing.Route(
                    "/v1/models/{model:path}", _errors_as_json(self.model), methods=["GET"]
                ),
                routing.Route("/healthz", self.health, methods=["GET"]),
            ],
        )

    async def chat(self, request: requests.Request) -> responses.Response:
        """``POST /v1/chat/completions``."""
        body = await _body(request, schema.ChatCompletionRequest, self._limit)
        body.check_n()
        req = validation.generate(
            model=body.model,
            messages=[(m.role, m.text()) for m in body.messages],
            prompt=None,
            max_tokens=body.limit(),
            temperature=body.temperature,
            top_p=body.top_p,
            stop=body.stops(),
            seed=body.seed,
            limits=self._service.limits,
        )
        meta = {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "created": int(time.time()),
            "model": self._service.model_name,
        }
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return await self._stream(req, lambda c: self._chat_events(meta, c, include_usage))
        text, finish, usage = await self._collect(req)
        return responses.JSONResponse(
            {
                **meta,
                "object": "chat.completion",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text},
                        "logprobs": None,
                        "finish_reason": finish.value,
                    }
                ],
                "usage": _usage(usage),
            }
        )

    async def completions(self, request: requests.Request) -> responses.Response:
        """``POST /v1/completions``."""
        body = await _body(request, schema.CompletionRequest, self._limit)
        body.check_n()
        req = validation.generate(
            model=body.model,
            messages=[],
            prompt=body.text(),
            max_tokens=body.max_tokens,
            temperature=body.temperature,
            top_p=body.top_p,
            stop=body.stops(),
            seed=body.seed,
            limits=self._service.limits,
        )
        meta = {
            "id": f"cmpl-{uuid.uuid4().hex}",
            "created": int(time.time()),
            "model": self._service.model_name,
        }
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return await self._stream(
                req, lambda c: self._completion_events(meta, c, include_usage)
            )
        text, finish, usage = await self._collect(req)
        return responses.JSONResponse(
            {
                **meta,
                "object": "text_completion",
                "choices": [
                    {"index": 0, "text": text, "logprobs": None, "finish_reason": finish.value}
                ],
                "usage": _usage(usage),
            }
        )

    async def embeddings(self, request: requests.Request) -> responses.Response:
        """``POST /v1/embeddings``."""
        body = await _body(request, schema.EmbeddingRequest, self._limit)
        req = validation.embed(model=body.model, texts=body.texts(), limits=self._service.limits)
        result = await self._service.embed(req)
        if body.dimensions is not None and body.dimensions != result.vectors.shape[1]:
            raise errors.InvalidArgument(
                f"dimensions is {body.dimensions}; this model's vectors have "
                f"{result.vectors.shape[1]}",
                field="dimensions",
            )
        data = []
        for i, row in enumerate(result.vectors):
            vector: object = (
                base64.b64encode(row.astype("<f4").tobytes()).decode()
                if body.encoding_format == "base64"
                else row.tolist()
            )
            data.append({"object": "embedding", "index": i, "embedding": vector})
        return responses.JSONResponse(
            {
                "object": "list",
                "data": data,
                "model": self._service.model_name,
                "usage": {
                    "prompt_tokens": result.prompt_tokens,
                    "total_tokens": result.prompt_tokens,
                },
            }
        )

    async def models(self, request: requests.Request) -> responses.Response:
        """``GET /v1/models``: the one model served."""
        return responses.JSONResponse({"object": "list", "data": [self._model_card()]})

    async def model(self, request: requests.Request) -> responses.Response:
        """``GET /v1/models/{model}``."""
        name = request.path_params["model"]
        if name != self._service.model_name:
            raise errors.NotFound(
                f"model {name!r} is not served here; this executor serves "
                f"{self._service.model_name!r}",
                field="model",
            )
        return responses.JSONResponse(self._model_card())

    async def health(self, request: requests.Request) -> responses.Response:
        """``GET /healthz``: 200 once the model is loaded, else 503."""
        ready = self._service.ready
        return responses.JSONResponse({"ready": ready}, status_code=200 if ready else 503)

    def _model_card(self) -> dict[str, object]:
        return {
            "id": self._service.model_name,
            "object": "model",
            "created": 0,
            "owned_by": "aion",
            "task": self._service.task,
        }

    async def _collect(
        self,
        req: validation.GenerateRequest,
    ) -> tuple[str, backend.FinishReason, backend.Usage | None]:
        parts: list[str] = []
        async with contextlib.aclosing(self._service.generate(req)) as chunks:
            async for chunk in chunks:
                parts.append(chunk.text)
                if chunk.finish is not None:
                    return "".join(parts), chunk.finish, chunk.usage
        raise errors.Internal("the stream ended without a last chunk")

    async def _stream(
        self,
        req: validation.GenerateRequest,
        events: Callable[[AsyncIterator[backend.Chunk]], AsyncIterator[bytes]],
    ) -> responses.Response:
        chunks = self._service.generate(req)
        try:
            first = await anext(chunks)
        except BaseException:
            await chunks.aclose()
            raise
        return responses.StreamingResponse(
            events(_prepend(first, chunks)), media_type="text/event-stream", headers=_SSE_HEADERS
        )

    async def _chat_events(
        self, meta: dict[str, Any], chunks: AsyncIterator[backend.Chunk], include_usage: bool
    ) -> AsyncIterator[bytes]:
        def event(delta: dict[str, str], finish: str | None) -> bytes:
            return _sse(
                {
                    **meta,
                    "object": "chat.completion.chunk",
                    "choices": [
                        {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
                    ],
                }
            )

        yield event({"role": "assistant", "content": ""}, None)
        async for data in self._events(
            chunks,
            meta,
            "chat.completion.chunk",
            include_usage,
            lambda c: event({"content": c.text}, None) if c.text else b"",
            lambda c: event({}, c.finish.value if c.finish else None),
        ):
            yield data

    async def _completion_events(
        self, meta: dict[str, Any], chunks: AsyncIterator[backend.Chunk], include_usage: bool
    ) -> AsyncIterator[bytes]:
        def event(text: str, finish: str | None) -> bytes:
            return _sse(
                {
                    **meta,
                    "object": "text_completion",
                    "choices": [
                        {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
                    ],
                }
            )

        async for data in self._events(
            chunks,
            meta,
            "text_completion",
            include_usage,
            lambda c: event(c.text, None) if c.text else b"",
            lambda c: event("", c.finish.value if c.finish else None),
        ):
            yield data

    async def _events(
        self,
        chunks: AsyncIterator[backend.Chunk],
        meta: dict[str, Any],
        kind: str,
        include_usage: bool,
        piece: Callable[[backend.Chunk], bytes],
        last: Callable[[backend.Chunk], bytes],
    ) -> AsyncIterator[bytes]:
        try:
            async for chunk in chunks:
                if data := piece(chunk):
                    yield data
                if chunk.finish is not None:
                    yield last(chunk)
                    if include_usage:
                        yield _sse(
                            {**meta, "object": kind, "choices": [], "usage": _usage(chunk.usage)}
                        )
        except errors.AionError as err:
            # The status line is sent already: the error travels as the last event.
            yield _sse(
                {
                    "error": {
                        "message": err.message,
                        "param": err.field,
                        "code": errors.code_name(err.code).lower(),
                    }
                }
            )
        yield b"data: [DONE]\n\n"


async def _prepend(
    first: backend.Chunk, rest: AsyncGenerator[backend.Chunk, None]
) -> AsyncIterator[backend.Chunk]:
    async with contextlib.aclosing(rest):
        yield first
        if first.finish is not None:
            return
        async for chunk in rest:
            yield chunk
