"""The OpenAI-compatible API: chat completions (streamed as SSE or not), embeddings and models.

For chat completions ``model`` names one of the caller's agents (``/v1/models``
lists them); a completion is one aion task,
its id the task id, its canonical result in an ``aion`` object (on the
response, on the last chunk of a stream, and on errors of a task that ran).
The calls go through the gRPC API's own servicers (see ``http_calls``), so
API keys, JWTs, roles, tenants, rate limits and ``Idempotency-Key`` behave as
on gRPC. A stream's first event is awaited before the response starts, so
an unknown agent or a bad option gets its own 4xx; a task that then fails
ends the stream with an ``error`` event. A task that ends ERROR, TIMEOUT or
CANCELED without streaming is answered with the status of its error code.

For embeddings ``model`` names the platform's embedding model, the one its
knowledge bases are indexed with (``all-minilm-l6-v2`` unless the install
chose another; matched without regard to case), never an agent: it is not in
``/v1/models``, which lists what ``/v1/chat/completions`` takes. The texts go
through ``Knowledge.Embed`` (role ``user``; their tokens count against the
tenant's tokens per minute); ``encoding_format: base64`` gives each vector as
little-endian float32 bytes, which the openai client asks for by default.
"""

from __future__ import annotations

import base64
import contextlib
import json
import struct
import time
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import grpc
from starlette import requests, responses, routing

from aion.api.v1 import agents_pb2, common_pb2, tasks_pb2
from aion.core import errors
from aion.gateway import http_app, http_calls, openai_schema, results, servicers

_SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
MAX_IDEMPOTENCY_KEY = 256
_CODE_OF_STATUS = {
    common_pb2.TASK_STATUS_TIMEOUT: "DEADLINE_EXCEEDED",
    common_pb2.TASK_STATUS_CANCELED: "CANCELLED",
}


def _sse(data: object) -> bytes:
    return b"data: " + json.dumps(data, separators=(",", ":")).encode() + b"\n\n"


def _usage(result: common_pb2.TaskResult) -> dict[str, int]:
    prompt, completion = result.usage.prompt_tokens, result.usage.completion_tokens
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _failure(result: common_pb2.TaskResult) -> errors.AionError:
    """The error a task that did not end OK stands for."""
    code = result.error.code or _CODE_OF_STATUS.get(result.status, "INTERNAL")
    cls = (
        errors.for_code(grpc.StatusCode[code])
        if code in grpc.StatusCode.__members__
        else errors.AionError
    )
    return cls(result.error.message or f"the task ended {results.status_name(result.status)}")


def _model_card(agent: agents_pb2.Agent) -> dict[str, Any]:
    return {
        "id": agent.name,
        "object": "model",
        "created": 0,
        "owned_by": "aion",
        "aion": {
            "description": agent.description,
            "model": agent.model,
            "model_task": agent.model_task,
            "ready": agent.ready,
            "knowledge_bases": list(agent.knowledge_bases),
            "max_tokens": agent.max_tokens,
        },
    }


def _vector(values: Any, encoding: str) -> list[float] | str:
    if encoding == "base64":
        return base64.b64encode(struct.pack(f"<{len(values)}f", *values)).decode()
    return list(values)


class OpenAIApi:
    """The routes, over the gateway's Tasks, Agents and Knowledge servicers."""

    def __init__(
        self,
        *,
        tasks: servicers.TasksServicer,
        agents: servicers.AgentsServicer,
        knowledge: servicers.KnowledgeServicer,
        timeout_s: float,
        max_body_bytes: int,
    ) -> None:
        self._tasks = tasks
        self._agents = agents
        self._knowledge = knowledge
        self._timeout_s = timeout_s
        self._max_body = max_body_bytes
        params = openai_schema.PARAMS
        self.routes = [
            routing.Route(
                "/v1/chat/completions",
                http_app.guarded(self.chat, params=params, not_found="model"),
                methods=["POST"],
            ),
            routing.Route("/v1/embeddings", http_app.guarded(self.embeddings), methods=["POST"]),
            routing.Route("/v1/models", http_app.guarded(self.models), methods=["GET"]),
            routing.Route(
                "/v1/models/{model:path}",
                http_app.guarded(self.model, not_found="model"),
                methods=["GET"],
            ),
        ]

    def _call(self, request: requests.Request) -> http_calls.Call:
        return http_calls.Call(request.headers, timeout_s=self._timeout_s, client=request.client)

    async def chat(self, request: requests.Request) -> responses.Response:
        """``POST /v1/chat/completions``: run the agent ``model`` on the conversation."""
        body = await http_app.parse_body(
            request,
            openai_schema.ChatCompletionRequest,
            max_bytes=self._max_body,
            field_of=openai_schema.field_of,
        )
        key = request.headers.get("idempotency-key", "")
        if len(key) > MAX_IDEMPOTENCY_KEY:
            raise errors.InvalidArgument(
                f"the Idempotency-Key header is {len(key)} characters; at most "
                f"{MAX_IDEMPOTENCY_KEY}",
                field="task.idempotency_key",
            )
        task = body.task(idempotency_key=key)
        call = self._call(request)
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return await self._stream(task, call, include_usage=include_usage)
        submitted = await self._tasks.Submit(tasks_pb2.SubmitRequest(task=task), call.context())
        result = submitted.result
        if result.status != common_pb2.TASK_STATUS_OK:
            err = _failure(result)
            return http_app.error_response(err, extra={"aion": results.result_to_dict(result)})
        return responses.JSONResponse(
            {
                "id": result.task_id,
                "object": "chat.completion",
                "created": result.created_at.seconds or int(time.time()),
                "model": result.agent,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": result.output},
                        "logprobs": None,
                        "finish_reason": "stop",
                    }
                ],
                "usage": _usage(result),
                "aion": results.result_to_dict(result),
            },
            headers={"x-aion-task-id": result.task_id},
        )

    async def _stream(
        self, task: tasks_pb2.TaskSpec, call: http_calls.Call, *, include_usage: bool
    ) -> responses.Response:
        events = self._tasks.Stream(tasks_pb2.StreamRequest(task=task), call.context())
        try:
            first = await anext(aiter(events))
        except BaseException:
            await _close(events)
            raise
        return responses.StreamingResponse(
            self._chunks(task.agent, first, events, include_usage=include_usage),
            media_type="text/event-stream",
            headers={**_SSE_HEADERS, "x-aion-task-id": first.task_id},
        )

    async def _chunks(
        self,
        agent: str,
        first: tasks_pb2.TaskEvent,
        events: AsyncIterator[tasks_pb2.TaskEvent],
        *,
        include_usage: bool,
    ) -> AsyncIterator[bytes]:
        meta = {
            "id": first.task_id,
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": agent,
        }

        def chunk(delta: dict[str, str], finish: str | None, **extra: Any) -> bytes:
            return _sse(
                {
                    **meta,
                    "choices": [
                        {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
                    ],
                    **extra,
                }
            )

        yield chunk({"role": "assistant", "content": ""}, None)
        async with contextlib.aclosing(_prepend(first, events)) as stream:
            try:
                async for event in stream:
                    kind = event.WhichOneof("event")
                    if kind == "token" and event.token.text:
                        yield chunk({"content": event.token.text}, None)
                    elif kind == "done":
                        result = event.done.result
                        yield chunk({}, "stop", aion=results.result_to_dict(result))
                        if include_usage:
                            yield _sse({**meta, "choices": [], "usage": _usage(result)})
                    elif kind == "error":
                        result = event.error.result
                        yield _sse(_error_event(_failure(result), result))
            except errors.AionError as err:
                # The status line is sent already: the error travels as the last event.
                yield _sse(_error_event(err, None))
        yield b"data: [DONE]\n\n"

    async def embeddings(self, request: requests.Request) -> responses.Response:
        """``POST /v1/embeddings``: the texts of ``input`` through the embedding model."""
        body = await http_app.parse_body(
            request,
            openai_schema.EmbeddingRequest,
            max_bytes=self._max_body,
            field_of=openai_schema.field_of,
        )
        try:
            embedded = await self._knowledge.Embed(body.request(), self._call(request).context())
        except errors.AionError as err:
            body.rename(err)  # the Embed request's texts are this body's input
            raise
        if body.dimensions is not None and body.dimensions != embedded.dimensions:
            raise errors.InvalidArgument(
                f"dimensions is {body.dimensions}; the vectors of {embedded.model} have "
                f"{embedded.dimensions}",
                field="dimensions",
            )
        tokens = embedded.prompt_tokens
        return responses.JSONResponse(
            {
                "object": "list",
                "data": [
                    {
                        "object": "embedding",
                        "index": i,
                        "embedding": _vector(e.values, body.encoding_format),
                    }
                    for i, e in enumerate(embedded.embeddings)
                ],
                "model": embedded.model,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }
        )

    async def models(self, request: requests.Request) -> responses.Response:
        """``GET /v1/models``: the caller's agents."""
        listed = await self._agents.List(
            agents_pb2.ListAgentsRequest(), self._call(request).context()
        )
        return responses.JSONResponse(
            {"object": "list", "data": [_model_card(a) for a in listed.agents]}
        )

    async def model(self, request: requests.Request) -> responses.Response:
        """``GET /v1/models/{model}``: one of the caller's agents."""
        agent = await self._agents.Get(
            agents_pb2.GetAgentRequest(name=request.path_params["model"]),
            self._call(request).context(),
        )
        return responses.JSONResponse(_model_card(agent))


def _error_event(err: errors.AionError, result: common_pb2.TaskResult | None) -> dict[str, Any]:
    body = http_app.error_body(err)
    if result is not None:
        body["aion"] = results.result_to_dict(result)
    return body


async def _prepend(
    first: tasks_pb2.TaskEvent,
    rest: AsyncIterator[tasks_pb2.TaskEvent],
) -> AsyncGenerator[tasks_pb2.TaskEvent, None]:
    try:
        yield first
        async for event in rest:
            yield event
    finally:
        await _close(rest)


async def _close(events: AsyncIterator[tasks_pb2.TaskEvent]) -> None:
    # The servicer's stream is an async generator: closing it cancels the agent call.
    if isinstance(events, AsyncGenerator):
        await events.aclose()
