"""The OpenAI-compatible HTTP API, spoken to by the OpenAI Python client and plain httpx."""

from __future__ import annotations

import asyncio
import time

import httpx
import numpy as np
import openai
import pytest
from openai.types import chat as openai_chat

from aion.api.executor.v1 import executor_pb2
from aion.executor import inference, serving, testing, validation
from aion.executor.generation import llama_backend

GEN = "smollm2-135m-instruct"
EMB = "all-minilm-l6-v2"
COUNTING = "Count from 1 to 500, one number per line."
HI: list[openai_chat.ChatCompletionMessageParam] = [{"role": "user", "content": COUNTING}]


def client(ex: testing.Executor) -> openai.AsyncOpenAI:
    """The OpenAI client, pointed at the executor, without retries (use it with async with)."""
    return openai.AsyncOpenAI(
        base_url=f"{ex.http_url}/v1", api_key=ex.http_token, max_retries=0, timeout=120
    )


async def test_models_lists_the_one_served(
    generator: testing.Executor, embedder: testing.Executor
) -> None:
    async with client(generator) as gen, client(embedder) as emb:
        assert [m.id for m in (await gen.models.list()).data] == [GEN]
        assert [m.id for m in (await emb.models.list()).data] == [EMB]
        assert (await gen.models.retrieve(GEN)).id == GEN


async def test_chat_completion(generator: testing.Executor) -> None:
    async with client(generator) as api:
        reply = await api.chat.completions.create(
            model=GEN, messages=HI, max_tokens=5, temperature=0, seed=7
        )
    choice = reply.choices[0]
    assert choice.finish_reason == "length"
    assert choice.message.role == "assistant"
    assert choice.message.content
    assert reply.usage is not None
    assert reply.usage.completion_tokens == 5
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + 5


async def test_a_streamed_chat_completion_matches_the_whole_one(
    generator: testing.Executor,
) -> None:
    pieces, finish, usage = [], None, None
    async with client(generator) as api:
        whole = await api.chat.completions.create(
            model=GEN, messages=HI, max_tokens=8, temperature=0
        )
        stream = await api.chat.completions.create(
            model=GEN,
            messages=HI,
            max_tokens=8,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
        async for chunk in stream:
            if chunk.choices:
                pieces.append(chunk.choices[0].delta.content or "")
                finish = chunk.choices[0].finish_reason or finish
            if chunk.usage is not None:
                usage = chunk.usage
    assert "".join(pieces) == whole.choices[0].message.content
    assert finish == "length"
    assert usage is not None
    assert usage.completion_tokens == 8


async def test_stop_ends_the_text_before_it(generator: testing.Executor) -> None:
    async with client(generator) as api:
        reply = await api.chat.completions.create(
            model=GEN, messages=HI, max_tokens=12, temperature=0, stop="3"
        )
    assert reply.choices[0].finish_reason == "stop"
    assert "3" not in (reply.choices[0].message.content or "")


async def test_text_completion_streamed_and_whole(generator: testing.Executor) -> None:
    async with client(generator) as api:
        whole = await api.completions.create(
            model=GEN, prompt="The capital of France is", max_tokens=4, temperature=0
        )
        assert whole.choices[0].text
        assert whole.usage is not None
        assert whole.usage.completion_tokens <= 4
        stream = await api.completions.create(
            model=GEN, prompt="The capital of France is", max_tokens=4, temperature=0, stream=True
        )
        text = "".join([c.choices[0].text async for c in stream if c.choices])
    assert text == whole.choices[0].text


async def test_embeddings_through_the_client_and_as_floats(embedder: testing.Executor) -> None:
    async with client(embedder) as api:
        result = await api.embeddings.create(
            model=EMB, input=["How do I reset my password?", "How can I reset my password?"]
        )
    rows = np.array([d.embedding for d in result.data])
    assert rows.shape == (2, 384)
    assert float(rows[0] @ rows[1]) > 0.9
    assert result.usage.prompt_tokens > 0
    async with httpx.AsyncClient(base_url=embedder.http_url, headers=embedder.http_headers) as http:
        raw = await http.post(
            "/v1/embeddings",
            json={"input": "How do I reset my password?", "encoding_format": "float"},
        )
    assert raw.status_code == 200
    np.testing.assert_allclose(raw.json()["data"][0]["embedding"], rows[0], atol=1e-5)


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/chat/completions", {"messages": HI, "max_tokens": -1}, "max_tokens"),
        ("/v1/chat/completions", {"messages": HI, "model": "gpt-4o"}, "model"),
        ("/v1/chat/completions", {"messages": []}, "messages"),
        ("/v1/chat/completions", {"messages": HI, "n": 2}, "n"),
        (
            "/v1/chat/completions",
            {"messages": [{"role": "user", "content": "x " * 600}]},
            "messages",
        ),
        ("/v1/chat/completions", {"messages": "hello"}, "messages"),
        ("/v1/completions", {"prompt": ""}, "prompt"),
        ("/v1/completions", {"prompt": "hi", "temperature": -1}, "temperature"),
        ("/v1/embeddings", {"input": ["hi"]}, None),
    ],
)
async def test_bad_input_is_a_400_naming_the_field(
    generator: testing.Executor, path: str, body: dict[str, object], param: str | None
) -> None:
    async with httpx.AsyncClient(
        base_url=generator.http_url, headers=generator.http_headers
    ) as http:
        response = await http.post(path, json=body)
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert error["type"] == "invalid_request_error"
        if param is not None:
            assert error["param"] == param
        assert error["message"]
        ok = await http.post("/v1/chat/completions", json={"messages": HI, "max_tokens": 1})
        assert ok.status_code == 200


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": ""}, "input"),
        ({"input": [""]}, "texts[0]"),
        ({"input": ["x"] * 17}, "texts"),
        ({"input": "hi", "model": "text-embedding-3-small"}, "model"),
        ({"input": [1, 2, 3]}, "input"),
    ],
)
async def test_bad_embedding_input_is_a_400(
    embedder: testing.Executor, body: dict[str, object], param: str
) -> None:
    async with client(embedder) as api:
        with pytest.raises(openai.BadRequestError) as info:
            await api.embeddings.create(**{"model": "", **body})  # type: ignore[arg-type]
    assert info.value.status_code == 400
    assert isinstance(info.value.body, dict)
    assert info.value.body["param"] in (param, "texts[0]")


async def test_a_full_queue_is_a_429_with_retry_after(
    generation_model: llama_backend.LlamaBackend,
) -> None:
    limits = validation.Limits(default_max_tokens=8, max_tokens_limit=64, max_texts=4)
    service = inference.GenerationService(
        generation_model, model_name=GEN, limits=limits, max_queue=1
    )
    async with testing.serve(service) as ex:
        call = ex.stub.Generate(
            executor_pb2.GenerateRequest(
                messages=[executor_pb2.ChatMessage(role="user", content=COUNTING)], max_tokens=64
            ),
            timeout=60,
        )
        await anext(aiter(call))
        async with client(ex) as api:
            with pytest.raises(openai.RateLimitError) as info:
                await api.chat.completions.create(model=GEN, messages=HI, max_tokens=2)
        assert int(info.value.response.headers["retry-after"]) >= 1
        call.cancel()


async def test_a_client_that_disconnects_frees_its_slot(generator: testing.Executor) -> None:
    body = {"messages": HI, "max_tokens": 64, "stream": True}
    async with (
        httpx.AsyncClient(
            base_url=generator.http_url, timeout=60, headers=generator.http_headers
        ) as http,
        http.stream("POST", "/v1/chat/completions", json=body) as response,
    ):
        assert response.status_code == 200
        lines = aiter(response.aiter_lines())
        assert (await anext(lines)).startswith("data: ")
    deadline = time.monotonic() + 30
    while True:
        load = await generator.stub.Stats(executor_pb2.StatsRequest())
        if load.in_flight == 0 and load.queue_depth == 0:
            break
        assert time.monotonic() < deadline, "the stream kept its slot"
        await asyncio.sleep(0.05)


async def test_health_says_ready(generator: testing.Executor) -> None:
    async with httpx.AsyncClient(
        base_url=generator.http_url, headers=generator.http_headers
    ) as http:
        response = await http.get("/healthz")
    assert (response.status_code, response.json()) == (200, {"ready": True})


async def test_the_bearer_token_is_required(generator: testing.Executor) -> None:
    body = {"model": GEN, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
    async with httpx.AsyncClient(base_url=generator.http_url, timeout=60) as http:
        for headers in (
            {},
            {"Authorization": "Bearer wrong"},
            {"Authorization": generator.http_token},
        ):
            for method, path in (
                ("GET", "/v1/models"),
                ("POST", "/v1/chat/completions"),
                ("POST", "/v1/embeddings"),
                ("POST", "/v1/completions"),
            ):
                got = await http.request(method, path, json=body, headers=headers)
                assert got.status_code == 401, (headers, path, got.text)
                assert got.json()["error"]["type"] == "authentication_error"
        assert (await http.get("/healthz")).status_code == 200
        ok = await http.post("/v1/chat/completions", json=body, headers=generator.http_headers)
        assert ok.status_code == 200, ok.text


async def test_without_a_token_the_http_api_is_closed(
    generation_model: llama_backend.LlamaBackend,
) -> None:
    service = inference.GenerationService(
        generation_model,
        model_name=GEN,
        max_queue=1,
        limits=(validation.Limits(default_max_tokens=8, max_tokens_limit=64, max_texts=16)),
    )
    http = serving.http_server(service, token=None, host="127.0.0.1", port=0)
    async with http:
        task = asyncio.create_task(http.serve())
        try:
            async with httpx.AsyncClient(base_url=http.url) as client_:
                refused = await client_.get("/v1/models", headers={"Authorization": "Bearer x"})
                assert refused.status_code == 401
                assert "AION_EXECUTOR_HTTP_TOKEN" in refused.json()["error"]["message"]
                assert (await client_.get("/healthz")).status_code in (200, 503)
        finally:
            http.shutdown()
            await task
