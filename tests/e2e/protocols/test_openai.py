"""The gateway's OpenAI-compatible front door, with the official openai client, against the
running suite (real model), API keys and JWTs on, anonymous access off."""

from __future__ import annotations

import time
import uuid
from typing import Any

import httpx
import hypothesis
import jwt
import openai
import pytest
import schemathesis
from schemathesis import checks

from aion.api.v1 import common_pb2
from aion.gateway import openapi
from aion.sdk import Client

from .suite import JWT_AUDIENCE, JWT_ISSUER, JWT_SECRET, OTHER_KEY, USER_KEY, VIEWER_KEY, HttpSuite

pytestmark = pytest.mark.e2e


def test_models_are_the_callers_agents(http_suite: HttpSuite) -> None:
    models = http_suite.client(VIEWER_KEY).models.list()
    assert [m.id for m in models.data] == ["demo"]
    assert models.data[0].model_extra is not None
    assert models.data[0].model_extra["aion"]["model"] == "smollm2-135m-instruct"
    assert http_suite.client(VIEWER_KEY).models.retrieve("demo").id == "demo"
    assert http_suite.client(OTHER_KEY).models.list().data == []  # another tenant's catalogue
    with pytest.raises(openai.NotFoundError) as info:
        http_suite.client(OTHER_KEY).models.retrieve("demo")
    assert info.value.body["param"] == "model"  # type: ignore[index]


def test_chat_completion_is_an_aion_task_with_its_canonical_result(http_suite: HttpSuite) -> None:
    done = http_suite.client().chat.completions.create(
        model="demo",
        messages=[{"role": "user", "content": "Name a color."}],
        max_tokens=12,
        temperature=0,
        seed=3,
    )
    text = done.choices[0].message.content
    assert text
    assert text.strip()
    assert done.choices[0].finish_reason == "stop"
    assert done.model == "demo"
    aion = (done.model_extra or {})["aion"]
    assert aion["status"] == "OK"
    assert aion["task_id"] == done.id
    assert aion["output"] == text
    assert aion["engine"] == {
        "route": "local",
        "chosen_by": "policy:privacy",
        "reason": aion["engine"]["reason"],
        "model": "smollm2-135m-instruct",
    }
    assert done.usage is not None
    assert 0 < done.usage.completion_tokens <= 12
    assert done.usage.completion_tokens == aion["usage"]["completion_tokens"]
    # The same task over gRPC, with the same API key.
    with Client(http_suite.suite.gateway, api_key=USER_KEY) as grpc_client:
        result = grpc_client.get(done.id)
    assert result.status == common_pb2.TASK_STATUS_OK
    assert result.output == text


def test_streamed_completion_sends_tokens_then_the_result(http_suite: HttpSuite) -> None:
    stream = http_suite.client().chat.completions.create(
        model="demo",
        messages=[{"role": "user", "content": "What is Kubernetes?"}],
        max_tokens=24,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    deltas = [
        c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content
    ]
    assert len(deltas) > 3, "the answer should arrive as several chunks"
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert [c.choices[0].finish_reason for c in finals] == ["stop"]
    aion = (finals[0].model_extra or {})["aion"]
    assert aion["status"] == "OK"
    assert aion["output"] == "".join(deltas)
    assert {c.id for c in chunks} == {aion["task_id"]}
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == aion["usage"]["completion_tokens"]


def test_an_idempotency_key_returns_the_first_task(http_suite: HttpSuite) -> None:
    client = http_suite.client()
    key = f"idem-{uuid.uuid4().hex}"
    ask = {
        "model": "demo",
        "messages": [{"role": "user", "content": "Say hi."}],
        "max_tokens": 8,
        "extra_headers": {"Idempotency-Key": key},
    }
    first = client.chat.completions.create(**ask)  # type: ignore[call-overload]
    again = client.chat.completions.create(**ask)  # type: ignore[call-overload]
    assert again.id == first.id
    assert again.choices[0].message.content == first.choices[0].message.content
    other = client.chat.completions.create(**{**ask, "extra_headers": {}})  # type: ignore[call-overload]
    assert other.id != first.id


def test_a_jwt_works_as_the_bearer_token(http_suite: HttpSuite) -> None:
    token = jwt.encode(
        {
            "sub": "alice",
            "tenant": "default",
            "roles": ["viewer"],
            "aud": JWT_AUDIENCE,
            "iss": JWT_ISSUER,
            "exp": int(time.time()) + 600,
        },
        JWT_SECRET,
        algorithm="HS256",
    )
    assert [m.id for m in http_suite.client(token).models.list().data] == ["demo"]
    forged = jwt.encode(
        {
            "sub": "mallory",
            "tenant": "default",
            "aud": JWT_AUDIENCE,
            "iss": JWT_ISSUER,
            "exp": int(time.time()) + 600,
        },
        "not-the-secret-but-32-bytes-long!!",
        algorithm="HS256",
    )
    with pytest.raises(openai.AuthenticationError, match="invalid token"):
        http_suite.client(forged).models.list()


def test_credentials_and_roles_are_checked(http_suite: HttpSuite) -> None:
    with pytest.raises(openai.AuthenticationError, match="unknown API key"):
        http_suite.client("k-nobody").models.list()
    with pytest.raises(openai.PermissionDeniedError, match="'user' role"):
        http_suite.client(VIEWER_KEY).chat.completions.create(
            model="demo", messages=[{"role": "user", "content": "hi"}]
        )
    response = httpx.get(http_suite.base_url + "/v1/models")
    assert response.status_code == 401
    assert "no credentials" in response.json()["error"]["message"]


@pytest.mark.parametrize(
    ("body", "status", "param", "says"),
    [
        (
            {"model": "nope", "messages": [{"role": "user", "content": "hi"}]},
            404,
            "model",
            "agent 'nope' not found",
        ),
        (
            {"model": "demo", "messages": [{"role": "user", "content": "hi"}], "max_tokens": -1},
            400,
            "max_tokens",
            "max_tokens must be between 1",
        ),
        ({"model": "demo", "messages": []}, 400, "messages", "at least 1 item"),
        (
            {"model": "demo", "messages": [{"role": "robot", "content": "hi"}]},
            400,
            "messages[0].role",
            "Input should be",
        ),
        (
            {"model": "demo", "messages": [{"role": "user", "content": "hi"}], "n": 2},
            400,
            "n",
            "one choice",
        ),
        (
            {
                "model": "demo",
                "messages": [{"role": "user", "content": "hi"}],
                "aion": {"privacy": "anywhere"},
            },
            400,
            "aion.privacy",
            "Input should be",
        ),
    ],
)
def test_bad_requests_get_a_4xx_naming_the_field(
    http_suite: HttpSuite, body: dict[str, object], status: int, param: str, says: str
) -> None:
    response = httpx.post(
        http_suite.base_url + "/v1/chat/completions",
        json=body,
        headers={"Authorization": f"Bearer {USER_KEY}"},
        timeout=60,
    )
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["param"] == param
    assert says in error["message"]


def test_malformed_json_and_unknown_paths_get_json_errors(http_suite: HttpSuite) -> None:
    auth = {"Authorization": f"Bearer {USER_KEY}", "Content-Type": "application/json"}
    bad = httpx.post(
        http_suite.base_url + "/v1/chat/completions", content=b'{"model": "demo",', headers=auth
    )
    assert bad.status_code == 400
    assert bad.json()["error"]["param"] == "body"
    assert "not valid JSON" in bad.json()["error"]["message"]
    missing = httpx.get(http_suite.base_url + "/v2/nothing", headers=auth)
    assert missing.status_code == 404
    assert missing.json()["error"]["type"] == "not_found_error"


def test_an_unknown_agent_fails_a_stream_before_it_starts(http_suite: HttpSuite) -> None:
    with pytest.raises(openai.NotFoundError, match="agent 'nope' not found"):
        list(
            http_suite.client().chat.completions.create(
                model="nope", messages=[{"role": "user", "content": "hi"}], stream=True
            )
        )


# -- /v1/embeddings: the knowledge service's embedding model (all-MiniLM-L6-v2) ---------
EMBEDDING_MODEL = "all-minilm-l6-v2"


def test_embeddings_with_the_openai_client(http_suite: HttpSuite) -> None:
    client = http_suite.client()
    texts = ["Kubernetes schedules pods onto nodes.", "Bananas are rich in potassium."]
    # The client asks for base64 unless told otherwise, and decodes it.
    packed = client.embeddings.create(model="all-MiniLM-L6-v2", input=[texts[0], *texts])
    floats = client.embeddings.create(
        model=EMBEDDING_MODEL, input=texts[0], encoding_format="float"
    )
    assert packed.model == floats.model == EMBEDDING_MODEL
    assert [d.index for d in packed.data] == [0, 1, 2]
    vectors = [d.embedding for d in packed.data]
    assert all(len(v) == 384 for v in [*vectors, floats.data[0].embedding])
    assert sum(x * x for x in vectors[0]) == pytest.approx(1.0, abs=1e-3)
    assert vectors[1] == pytest.approx(vectors[0], abs=1e-5)  # the same text twice
    assert floats.data[0].embedding == pytest.approx(vectors[0], abs=1e-5)
    assert sum(a * b for a, b in zip(vectors[0], vectors[2], strict=True)) < 0.5  # unrelated
    assert 0 < packed.usage.prompt_tokens == packed.usage.total_tokens


@pytest.mark.parametrize(
    ("body", "param", "says"),
    [
        ({"model": "demo", "input": "hi"}, "model", f"the embedding model is '{EMBEDDING_MODEL}'"),
        ({"model": EMBEDDING_MODEL, "input": ["hi", ""]}, "input[1]", "input[1] is empty"),
        ({"model": EMBEDDING_MODEL, "input": "word " * 600}, "input", "the model takes at most"),
        ({"model": EMBEDDING_MODEL, "input": [[1, 2]]}, "input", "token arrays"),
        ({"model": EMBEDDING_MODEL, "input": "hi", "dimensions": 1536}, "dimensions", "384"),
    ],
)
def test_bad_embedding_requests_get_a_400_naming_the_field(
    http_suite: HttpSuite, body: dict[str, object], param: str, says: str
) -> None:
    response = httpx.post(
        http_suite.base_url + "/v1/embeddings",
        json=body,
        headers={"Authorization": f"Bearer {USER_KEY}"},
        timeout=60,
    )
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param
    assert says in error["message"]


def test_embeddings_need_credentials_and_the_user_role(http_suite: HttpSuite) -> None:
    body = {"model": EMBEDDING_MODEL, "input": "hi"}
    anonymous = httpx.post(http_suite.base_url + "/v1/embeddings", json=body, timeout=60)
    assert anonymous.status_code == 401
    assert "no credentials" in anonymous.json()["error"]["message"]
    with pytest.raises(openai.AuthenticationError, match="unknown API key"):
        http_suite.client("k-nobody").embeddings.create(model=EMBEDDING_MODEL, input="hi")
    with pytest.raises(openai.PermissionDeniedError, match="'user' role"):
        http_suite.client(VIEWER_KEY).embeddings.create(model=EMBEDDING_MODEL, input="hi")


# -- the OpenAPI document, fuzzed against the running suite ------------------------------
SCHEMA = schemathesis.openapi.from_dict(openapi.document())


@SCHEMA.hook
def map_path_parameters(
    context: schemathesis.HookContext, path_parameters: dict[str, Any] | None
) -> dict[str, Any] | None:
    # Half the agents named are the real one, so requests reach the model, not only 404.
    if not path_parameters:
        return path_parameters
    return {
        name: "demo" if len(str(value)) % 2 else value for name, value in path_parameters.items()
    }


@SCHEMA.hook
def map_body(context: schemathesis.HookContext, body: Any) -> Any:
    if isinstance(body, dict) and "input" in body and "model" in body:
        return {**body, "model": EMBEDDING_MODEL}  # the embedding model the suite serves
    if not (isinstance(body, dict) and "messages" in body):
        return body
    # The real agent, and few tokens: each valid request runs the model on the CPU.
    short = {
        k: max(1, min(v, 8))
        for k, v in body.items()
        if k in ("max_tokens", "max_completion_tokens")
        and isinstance(v, int)
        and not isinstance(v, bool)
    }
    return {**body, "model": "demo", **short}


@SCHEMA.parametrize()
@hypothesis.settings(
    max_examples=15, deadline=None, suppress_health_check=list(hypothesis.HealthCheck)
)
def test_the_openapi_surface_answers_no_5xx(
    case: schemathesis.Case[Any], http_suite: HttpSuite
) -> None:
    case.call_and_validate(
        base_url=http_suite.base_url,
        headers={"Authorization": f"Bearer {USER_KEY}"},
        timeout=120,
        checks=[
            checks.not_a_server_error,
            checks.status_code_conformance,
            checks.content_type_conformance,
        ],
    )
