"""Knowledge.Embed (the gateway's /v1/embeddings) against the real embedding executor
(all-MiniLM-L6-v2): vectors of the model's size and unit length, the same text the same
vector, limits refused INVALID_ARGUMENT naming the field, and only the gateway admitted."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Callable

import grpc
import pytest

from aion.api.knowledge.v1 import knowledge_pb2, knowledge_pb2_grpc
from aion.api.v1 import knowledge_pb2 as public
from aion.core import errors
from aion.knowledge import testing

MAX_TEXTS, MAX_BYTES, BATCH = 70, 16 * 1024, 32


@pytest.fixture(scope="module")
async def service(
    new_service: Callable[..., testing.Service],
) -> AsyncIterator[testing.Service]:
    # Small limits, and batches of 32, so a request spans several executor calls.
    async with new_service(
        max_embed_texts=MAX_TEXTS, max_embed_bytes=MAX_BYTES, embed_batch=BATCH, workers=0
    ) as svc:
        yield svc


def _embed(*texts: str, model: str = "", tenant: str = "emb") -> knowledge_pb2.EmbedRequest:
    return knowledge_pb2.EmbedRequest(
        tenant=tenant, request=public.EmbedRequest(texts=list(texts), model=model)
    )


def _cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


async def test_texts_get_unit_vectors_of_the_models_size_in_order(
    service: testing.Service,
) -> None:
    texts = [
        "Kubernetes schedules pods onto nodes.",
        "The kubelet runs the pods a node is given.",
        "Bananas are rich in potassium.",
        "Kubernetes schedules pods onto nodes.",
    ]
    got = await service.stub.Embed(_embed(*texts, model="all-MiniLM-L6-v2"), timeout=60)
    vectors = [list(e.values) for e in got.embeddings]
    assert (got.model, got.dimensions, len(vectors)) == ("all-minilm-l6-v2", 384, 4)
    assert all(len(v) == 384 for v in vectors)
    assert all(math.isclose(math.sqrt(_cosine(v, v)), 1.0, abs_tol=1e-3) for v in vectors)
    assert vectors[0] == pytest.approx(vectors[3], abs=1e-5)  # the same text, the same vector
    assert _cosine(vectors[0], vectors[1]) > _cosine(vectors[0], vectors[2])
    assert got.prompt_tokens > sum(len(t.split()) for t in texts)
    # Alone or among others, a text gets the same vector.
    alone = await service.stub.Embed(_embed(texts[2]), timeout=60)
    assert list(alone.embeddings[0].values) == pytest.approx(vectors[2], abs=1e-5)


async def test_more_texts_than_a_batch_come_back_in_order(service: testing.Service) -> None:
    texts = [f"text number {i} about GPUs" for i in range(MAX_TEXTS)]
    got = await service.stub.Embed(_embed(*texts), timeout=120)
    assert len(got.embeddings) == MAX_TEXTS
    again = await service.stub.Embed(_embed(texts[45]), timeout=60)
    assert list(got.embeddings[45].values) == pytest.approx(
        list(again.embeddings[0].values), abs=1e-5
    )


@pytest.mark.parametrize(
    ("request_", "field", "says"),
    [
        (_embed("x", model="text-embedding-3-small"), "model", "'all-minilm-l6-v2'"),
        (_embed(), "texts", "at least one"),
        (_embed("a", " "), "texts[1]", "texts[1] is empty"),
        (_embed(*(["x"] * (MAX_TEXTS + 1))), "texts", f"the limit is {MAX_TEXTS}"),
        (_embed("é" * (MAX_BYTES // 2 + 1)), "texts", f"the limit is {MAX_BYTES}"),
        # Past the model's 256 tokens, in the second batch: named by its place in the request.
        (_embed(*(["short"] * 40), "word " * 400), "texts[40]", "texts[40] is"),
        (_embed("x", tenant=""), "tenant", "tenant is required"),
    ],
    ids=["model", "none", "empty", "count", "bytes", "too-long", "tenant"],
)
async def test_bad_or_oversized_input_is_invalid_argument_naming_the_field(
    service: testing.Service, request_: knowledge_pb2.EmbedRequest, field: str, says: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await service.stub.Embed(request_, timeout=60)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value
    assert errors.from_rpc_error(info.value).field == field
    assert says in str(info.value.details())


async def test_only_the_gateway_may_call_embed(service: testing.Service) -> None:
    async with testing.channel(service.address, identity="agent") as channel:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await knowledge_pb2_grpc.KnowledgeServiceStub(channel).Embed(_embed("x"), timeout=30)
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "agent may not call /aion.knowledge.v1.KnowledgeService/Embed" in str(
        info.value.details()
    )
