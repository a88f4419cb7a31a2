"""Input limits checked before any work: HTTP bodies, prompt sizes, queue admission first."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any, cast

import grpc
import httpx
import pytest

from aion.api.executor.v1 import executor_pb2
from aion.core import errors
from aion.executor import backend, inference, testing, validation
from aion.executor.generation import llama_backend

GEN = "smollm2-135m-instruct"
COUNTING = "Count from 1 to 500, one number per line."
LIMITS = validation.Limits(
    default_max_tokens=8,
    max_tokens_limit=64,
    max_texts=4,
    max_prompt_chars=1000,
    max_body_bytes=4096,
)


class Counted:
    """The real model, counting the prompts it tokenises."""

    def __init__(self, model: llama_backend.LlamaBackend) -> None:
        self._model = model
        self.encoded = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)

    def encode_chat(self, messages: Sequence[backend.ChatMessage]) -> backend.Prompt:
        self.encoded += 1
        return self._model.encode_chat(messages)

    def encode_text(self, text: str) -> backend.Prompt:
        self.encoded += 1
        return self._model.encode_text(text)


@pytest.fixture
async def executor(
    generation_model: llama_backend.LlamaBackend,
) -> AsyncIterator[tuple[testing.Executor, Counted]]:
    counted = Counted(generation_model)
    service = inference.GenerationService(
        cast(backend.GenerationBackend, counted), model_name=GEN, limits=LIMITS, max_queue=1
    )
    async with testing.serve(service) as ex:
        yield ex, counted


def _chat(content: str) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": content}], "max_tokens": 2}


async def test_a_body_over_the_limit_is_a_413_read_no_further(
    executor: tuple[testing.Executor, Counted],
) -> None:
    ex, counted = executor
    async with httpx.AsyncClient(base_url=ex.http_url, headers=ex.http_headers, timeout=60) as http:
        declared = await http.post("/v1/chat/completions", json=_chat("a " * 5000))

        async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: read until too much
            yield b'{"messages": [{"role": "user", "content": "'
            for _ in range(100):
                yield b"a" * 1000
            yield b'"}]}'

        streamed = await http.post(
            "/v1/chat/completions", content=chunks(), headers={"content-type": "application/json"}
        )
    for response in (declared, streamed):
        assert response.status_code == 413
        error = response.json()["error"]
        assert error["param"] == "body"
        assert error["type"] == "invalid_request_error"
        assert "4096 bytes" in error["message"]
    assert counted.encoded == 0


async def test_a_prompt_over_the_limit_is_refused_before_tokenising(
    executor: tuple[testing.Executor, Counted],
) -> None:
    ex, counted = executor
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async for _ in ex.stub.Generate(
            executor_pb2.GenerateRequest(
                messages=[executor_pb2.ChatMessage(role="user", content="a" * 1001)]
            ),
            timeout=30,
        ):
            pass
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert errors.from_rpc_error(info.value).field == "messages"
    async with httpx.AsyncClient(base_url=ex.http_url, headers=ex.http_headers, timeout=60) as http:
        response = await http.post("/v1/completions", json={"prompt": "a" * 1001, "max_tokens": 2})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "prompt"
    assert counted.encoded == 0


async def test_a_full_queue_refuses_before_tokenising(
    executor: tuple[testing.Executor, Counted],
) -> None:
    ex, counted = executor
    # Greedy, so that it never ends early by chance (a sampled stream may stop at once).
    held = ex.stub.Generate(
        executor_pb2.GenerateRequest(
            messages=[executor_pb2.ChatMessage(role="user", content=COUNTING)],
            max_tokens=64,
            temperature=0,
        ),
        timeout=60,
    )
    await anext(aiter(held))  # the one place of the queue is taken
    assert counted.encoded == 1
    async with httpx.AsyncClient(base_url=ex.http_url, headers=ex.http_headers, timeout=60) as http:
        for _ in range(5):
            response = await http.post("/v1/chat/completions", json=_chat("b " * 400))
            assert response.status_code == 429
            assert int(response.headers["retry-after"]) >= 1
    assert counted.encoded == 1  # refused ones were never tokenised
    held.cancel()
