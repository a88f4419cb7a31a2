"""The HTTP front door over the gateway's servicers, with the openai client, against real gRPC
servers standing in for the router and the agent service (scripted: no model here)."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import jwt
import openai
import pytest

from aion.api.v1 import common_pb2
from aion.gateway import http_calls, openapi, results

from . import fakes
from .fakes import AUDIENCE, ISSUER, KEY, SECRET, VIEWER
from .fakes import gateway as _gateway


async def test_a_completion_runs_the_agent_with_the_callers_tenant_and_options() -> None:
    async with _gateway() as gw:
        done = await gw.client().chat.completions.create(
            model="demo",
            messages=[
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Hi"},
            ],
            max_completion_tokens=9,
            temperature=0.5,
            seed=4,
            extra_body={"aion": {"budget_usd": 0.25, "privacy": "local-only"}},
        )
        run = gw.agents.runs[-1]
    assert done.id == "t1"
    assert done.choices[0].message.content == "Hello there"
    assert done.usage is not None
    assert done.usage.total_tokens == 7
    assert (done.model_extra or {})["aion"]["engine"]["chosen_by"] == "test"
    assert run.tenant == "acme"
    assert run.task.input == "system: Be brief.\n\nuser: Hi"
    assert run.task.options.max_tokens == 9
    assert run.task.options.seed == 4
    assert run.task.options.budget_usd == 0.25
    # The agent's privacy and the request's both reach the router, which narrows (as on gRPC).
    assert gw.router.asked[-1].privacy == common_pb2.PRIVACY_HYBRID
    assert gw.router.asked[-1].requested_privacy == common_pb2.PRIVACY_LOCAL_ONLY


async def test_the_idempotency_key_header_reaches_the_task() -> None:
    async with _gateway() as gw:
        client = gw.client()
        ask: dict[str, Any] = {
            "model": "demo",
            "messages": [{"role": "user", "content": "x"}],
            "extra_headers": {"Idempotency-Key": "order-7"},
        }
        first = await client.chat.completions.create(**ask)
        again = await client.chat.completions.create(**ask)
    assert gw.agents.runs[-1].task.idempotency_key == "order-7"
    assert first.id == again.id


async def test_a_stream_sends_role_tokens_then_stop_with_the_result() -> None:
    async with _gateway() as gw:
        stream = await gw.client().chat.completions.create(
            model="demo",
            messages=[{"role": "user", "content": "Hi"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [c async for c in stream]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].delta.content for c in chunks[1:3]] == ["Hello", " there"]
    assert chunks[3].choices[0].finish_reason == "stop"
    assert (chunks[3].model_extra or {})["aion"]["status"] == "OK"
    assert chunks[4].usage is not None
    assert chunks[4].usage.completion_tokens == 2
    assert {c.id for c in chunks} == {"t1"}


async def test_a_task_that_fails_mid_stream_ends_with_an_error_event() -> None:
    async with _gateway() as gw:
        stream = await gw.client().chat.completions.create(
            model="demo", messages=[{"role": "user", "content": "break"}], stream=True
        )
        seen: list[str] = []

        async def read() -> None:
            async for chunk in stream:
                seen.append(chunk.choices[0].delta.content or "")

        with pytest.raises(openai.APIError, match="the executor went away"):
            await read()
    assert "".join(seen) == "Hello there"


async def test_a_task_that_times_out_answers_504_with_its_result() -> None:
    async with _gateway() as gw, httpx.AsyncClient() as http:
        response = await http.post(
            gw.url + "/v1/chat/completions",
            headers={"x-api-key": KEY},
            json={"model": "demo", "messages": [{"role": "user", "content": "time out"}]},
        )
    assert response.status_code == 504
    body = response.json()
    assert body["error"]["code"] == "deadline_exceeded"
    assert body["aion"]["status"] == "TIMEOUT"


async def test_unknown_agents_roles_and_credentials_get_openai_errors() -> None:
    async with _gateway() as gw:
        with pytest.raises(openai.NotFoundError) as missing:
            await gw.client().chat.completions.create(
                model="nope", messages=[{"role": "user", "content": "x"}]
            )
        with pytest.raises(openai.PermissionDeniedError, match="'user' role"):
            await gw.client(VIEWER).chat.completions.create(
                model="demo", messages=[{"role": "user", "content": "x"}]
            )
        with pytest.raises(openai.AuthenticationError, match="unknown API key"):
            await gw.client("k-wrong").models.list()
        token = jwt.encode(
            {
                "sub": "bob",
                "tenant": "acme",
                "roles": ["viewer"],
                "aud": AUDIENCE,
                "iss": ISSUER,
                "exp": int(time.time()) + 600,
            },
            SECRET,
            algorithm="HS256",
        )
        assert [m.id for m in (await gw.client(token).models.list()).data] == ["demo"]
    assert missing.value.body == {
        "message": "agent 'nope' not found",
        "type": "not_found_error",
        "param": "model",
        "code": "not_found",
    }


async def test_the_tenants_rate_limit_answers_429_with_retry_after() -> None:
    async with _gateway(rate=0.01, burst=1) as gw, httpx.AsyncClient() as http:
        auth_header = {"Authorization": f"Bearer {KEY}"}
        assert (await http.get(gw.url + "/v1/models", headers=auth_header)).status_code == 200
        limited = await http.get(gw.url + "/v1/models", headers=auth_header)
    assert limited.status_code == 429
    assert int(limited.headers["retry-after"]) >= 1
    assert limited.json()["error"]["type"] == "rate_limit_error"


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        (b"{not json", 400, "body"),
        (b"[1, 2]", 400, "body"),
        (b'{"model": "demo", "messages": [{"role": "user", "content": "\\ud800"}]}', 400, "body"),
        (
            b'{"model": "demo", "messages": [{"role": "user", "content": "x"}], '
            b'"temperature": NaN}',
            400,
            "temperature",
        ),
        (
            b'{"model": "demo", "messages": [{"role": "user", "content": "x"}], "max_tokens": '
            b"99999999999}",
            400,
            "max_tokens",
        ),
        (
            b'{"model": "demo", "messages": [{"role": "user", "content": "x"}], "tools": [{}]}',
            400,
            "tools",
        ),
        (
            b'{"model": "demo", "messages": [{"role": "user", "content": 7}], "stream": "yes"}',
            400,
            "messages[0].content",
        ),
        (
            b'{"model": "demo", "messages": [{"role": "user", "content": "x"}], "stream": "maybe"}',
            400,
            "stream",
        ),
        (b"[" * 5000 + b"]" * 5000, 413, None),
        (b"[" * 2040 + b"]" * 2040, 400, "body"),  # deeper than the parser goes
    ],
)
async def test_bad_bodies_get_a_4xx_naming_the_field(
    body: bytes, status: int, param: str | None
) -> None:
    async with _gateway() as gw, httpx.AsyncClient() as http:
        response = await http.post(
            gw.url + "/v1/chat/completions",
            content=body,
            headers={"x-api-key": KEY, "content-type": "application/json"},
        )
    assert response.status_code == status, response.text
    assert response.json()["error"]["param"] == param
    assert not gw.agents.runs


async def test_unknown_paths_and_methods_get_json_errors() -> None:
    async with _gateway() as gw, httpx.AsyncClient() as http:
        missing = await http.get(gw.url + "/v1/nothing")
        wrong = await http.get(gw.url + "/v1/chat/completions")
        document = await http.get(gw.url + "/openapi.json")
    assert (missing.status_code, missing.json()["error"]["type"]) == (404, "not_found_error")
    assert wrong.status_code == 405
    assert document.json() == json.loads(json.dumps(openapi.document()))


@pytest.mark.parametrize(
    ("headers", "metadata"),
    [
        ({"authorization": "Bearer k-1"}, (("x-api-key", "k-1"),)),
        ({"authorization": "Bearer aaa.bbb.ccc"}, (("authorization", "Bearer aaa.bbb.ccc"),)),
        ({"x-api-key": "k-2", "authorization": "Bearer k-1"}, (("x-api-key", "k-2"),)),
        ({"authorization": "Basic dTpw"}, (("authorization", "Basic dTpw"),)),
        ({}, ()),
    ],
)
def test_bearer_tokens_are_api_keys_unless_shaped_like_a_jwt(
    headers: dict[str, str], metadata: tuple[tuple[str, str], ...]
) -> None:
    assert http_calls.metadata(headers) == metadata


def test_the_aion_object_is_the_sdks_canonical_result() -> None:
    from aion.sdk import results as sdk_results

    result = common_pb2.TaskResult(
        task_id="t",
        agent="a",
        status=common_pb2.TASK_STATUS_ERROR,
        output="o",
        engine=common_pb2.Engine(
            route=common_pb2.ROUTE_HYBRID, chosen_by="c", reason="r", model="m"
        ),
        usage=common_pb2.Usage(
            latency_ms=1, prompt_tokens=2, completion_tokens=3, tokens=5, cost_usd=0.5
        ),
        error=common_pb2.TaskError(code="INTERNAL", message="m", retriable=False),
        citations=[
            common_pb2.Citation(
                knowledge_base="kb",
                document_id="d.md",
                version=2,
                chunk_index=1,
                char_start=3,
                char_end=9,
                title="D",
                score=0.5,
            )
        ],
    )
    result.created_at.GetCurrentTime()
    assert results.result_to_dict(result) == sdk_results.result_to_dict(result)
    assert results.result_to_dict(result)["citations"] == [
        {
            "knowledge_base": "kb",
            "document_id": "d.md",
            "version": 2,
            "chunk_index": 1,
            "char_start": 3,
            "char_end": 9,
            "title": "D",
            "score": 0.5,
        }
    ]
    # the OpenAPI document lists every field of the aion object
    schema = openapi.document()["components"]["schemas"]["TaskResult"]
    assert set(schema["properties"]) == set(results.result_to_dict(result))
    assert set(schema["properties"]["citations"]["items"]["properties"]) == set(
        results.result_to_dict(result)["citations"][0]
    )
    bare = common_pb2.TaskResult(task_id="t")
    assert results.result_to_dict(bare) == sdk_results.result_to_dict(bare)


# --- /v1/embeddings ---------------------------------------------------------------------


async def test_embeddings_are_the_knowledge_services_vectors_as_floats_or_base64() -> None:
    async with _gateway() as gw:
        client = gw.client()
        floats = await client.embeddings.create(
            model="all-MiniLM-L6-v2", input=["pods", "nodes"], encoding_format="float"
        )
        packed = await client.embeddings.create(model="all-minilm-l6-v2", input="pods")
        asked = gw.knowledge.embeds
    assert [d.index for d in floats.data] == [0, 1]
    assert floats.data[0].embedding == pytest.approx(fakes.fake_vector("pods"), abs=1e-6)
    assert floats.data[1].embedding == pytest.approx(fakes.fake_vector("nodes"), abs=1e-6)
    # The openai client asks for base64 by default and decodes it: the same floats.
    assert packed.data[0].embedding == pytest.approx(floats.data[0].embedding, abs=1e-6)
    assert floats.model == fakes.EMBEDDING_MODEL
    assert floats.usage.prompt_tokens == floats.usage.total_tokens == 6
    assert [(a.tenant, list(a.request.texts)) for a in asked] == [
        ("acme", ["pods", "nodes"]),
        ("acme", ["pods"]),
    ]


async def test_embedded_tokens_count_against_the_tenants_tokens_per_minute() -> None:
    async with _gateway(tokens_per_minute=60) as gw:
        client = gw.client()
        await client.embeddings.create(model="all-minilm-l6-v2", input=["word " * 200])
        with pytest.raises(openai.RateLimitError, match="tokens per minute"):
            await client.embeddings.create(model="all-minilm-l6-v2", input="again")


@pytest.mark.parametrize(
    ("body", "status", "param", "says"),
    [
        ({"model": "gpt-4", "input": "x"}, 400, "model", "all-minilm-l6-v2"),
        ({"input": "x"}, 400, "model", "Field required"),
        ({"model": "all-minilm-l6-v2", "input": ["a", " "]}, 400, "input[1]", "input[1] is empty"),
        ({"model": "all-minilm-l6-v2", "input": ""}, 400, "input", "input is empty"),
        ({"model": "all-minilm-l6-v2", "input": []}, 400, "input", "input must hold"),
        ({"model": "all-minilm-l6-v2", "input": [1, 2]}, 400, "input", "token arrays"),
        ({"model": "all-minilm-l6-v2", "input": ["a", 3]}, 400, "input", "valid string"),
        (
            {"model": "all-minilm-l6-v2", "input": "x", "encoding_format": "hex"},
            400,
            "encoding_format",
            "'float' or 'base64'",
        ),
        (
            {"model": "all-minilm-l6-v2", "input": "x", "dimensions": 1536},
            400,
            "dimensions",
            "have 8",
        ),
    ],
)
async def test_bad_embedding_requests_get_a_400_naming_the_field(
    body: dict[str, object], status: int, param: str, says: str
) -> None:
    async with _gateway() as gw, httpx.AsyncClient() as http:
        response = await http.post(
            gw.url + "/v1/embeddings", json=body, headers={"Authorization": f"Bearer {KEY}"}
        )
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["param"] == param
    assert says in error["message"]


async def test_embeddings_need_credentials_and_the_user_role() -> None:
    async with _gateway() as gw, httpx.AsyncClient() as http:
        body = {"model": "all-minilm-l6-v2", "input": "x"}
        anonymous = await http.post(gw.url + "/v1/embeddings", json=body)
        viewer = await http.post(
            gw.url + "/v1/embeddings", json=body, headers={"x-api-key": VIEWER}
        )
    assert anonymous.status_code == 401
    assert anonymous.json()["error"]["type"] == "authentication_error"
    assert viewer.status_code == 403
    assert "'user' role" in viewer.json()["error"]["message"]
    assert not gw.knowledge.embeds
