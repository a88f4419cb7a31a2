"""Embeddings over gRPC with the real all-MiniLM-L6-v2 model: vectors, batching, errors."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable

import grpc
import numpy as np
import pytest

from aion.api.executor.v1 import executor_pb2
from aion.core import errors
from aion.executor import inference, testing, validation
from aion.executor.embedding import st_backend

MODEL = "all-minilm-l6-v2"


def vectors(response: executor_pb2.EmbedResponse) -> np.ndarray:
    """The response's vectors as rows."""
    return np.array([list(e.values) for e in response.embeddings], dtype=np.float32)


async def embed(ex: testing.Executor, *texts: str, **fields: str) -> np.ndarray:
    """Embed ``texts`` through gRPC."""
    return vectors(
        await ex.stub.Embed(executor_pb2.EmbedRequest(texts=texts, **fields), timeout=60)
    )


async def rpc_error(call: Awaitable[object]) -> errors.AionError:
    """The AionError a call ends with."""
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    return errors.from_rpc_error(info.value)


async def test_vectors_have_the_model_dimension_and_unit_length(embedder: testing.Executor) -> None:
    response = await embedder.stub.Embed(
        executor_pb2.EmbedRequest(
            texts=["The cat sits on the mat.", "Kubernetes schedules pods onto nodes."]
        )
    )
    assert (response.model, response.dimensions) == (MODEL, 384)
    rows = vectors(response)
    assert rows.shape == (2, 384)
    assert np.linalg.norm(rows, axis=1) == pytest.approx([1.0, 1.0], abs=1e-4)
    assert response.prompt_tokens > 10


async def test_near_duplicates_are_closer_than_unrelated_texts(embedder: testing.Executor) -> None:
    rows = await embed(
        embedder,
        "How do I reset my password?",
        "How can I reset my password?",
        "The recipe needs two cups of flour.",
    )
    near, far = float(rows[0] @ rows[1]), float(rows[0] @ rows[2])
    assert near > 0.9
    assert far < 0.3
    assert near > far


async def test_concurrent_callers_are_batched_and_get_their_own_vectors(
    embedder: testing.Executor,
) -> None:
    texts = [f"document number {i} is about topic {i % 3}" for i in range(12)]
    alone = [await embed(embedder, t) for t in texts[:3]]
    together = await asyncio.gather(*(embed(embedder, t) for t in texts))
    for single, batched in zip(alone, together[:3], strict=True):
        np.testing.assert_allclose(single, batched, atol=1e-4)
    assert len({tuple(np.round(v[0], 4)) for v in together}) == len(texts)


@pytest.mark.parametrize(
    ("texts", "field"),
    [
        ([], "texts"),
        ([""], "texts[0]"),
        (["ok", "  "], "texts[1]"),
        (["x"] * 17, "texts"),
        (["fine", "word " * 400], "texts[1]"),
    ],
)
async def test_invalid_requests_name_the_field_and_others_are_served(
    embedder: testing.Executor, texts: list[str], field: str
) -> None:
    err = await rpc_error(embedder.stub.Embed(executor_pb2.EmbedRequest(texts=texts)))
    assert isinstance(err, errors.InvalidArgument), err
    assert err.field == field
    assert (await embed(embedder, "still serving")).shape == (1, 384)


async def test_a_text_longer_than_the_model_input_says_so(embedder: testing.Executor) -> None:
    err = await rpc_error(embedder.stub.Embed(executor_pb2.EmbedRequest(texts=["word " * 400])))
    assert "at most 256" in err.message


async def test_an_unknown_model_is_an_invalid_argument(embedder: testing.Executor) -> None:
    err = await rpc_error(
        embedder.stub.Embed(executor_pb2.EmbedRequest(texts=["hi"], model="text-embedding-3-large"))
    )
    assert isinstance(err, errors.InvalidArgument)
    assert err.field == "model"
    assert MODEL in err.message


async def test_generate_needs_a_generation_executor(embedder: testing.Executor) -> None:
    async def drain() -> None:
        async for _ in embedder.stub.Generate(
            executor_pb2.GenerateRequest(
                messages=[executor_pb2.ChatMessage(role="user", content="hi")]
            )
        ):
            pass

    err = await rpc_error(drain())
    assert isinstance(err, errors.FailedPrecondition)
    assert '"generate"' in err.message


async def test_a_full_queue_is_refused_with_a_retry_delay(
    embedding_model: st_backend.SentenceTransformerBackend,
) -> None:
    limits = validation.Limits(default_max_tokens=8, max_tokens_limit=8, max_texts=4)
    service = inference.EmbeddingService(
        embedding_model, model_name=MODEL, limits=limits, max_queue=1, max_batch=8, max_wait_s=0
    )
    # The batcher is not running yet, so the first request waits in the queue.
    async with testing.serve(service, loops=False) as ex:
        first = asyncio.ensure_future(ex.stub.Embed(executor_pb2.EmbedRequest(texts=["a"])))
        for _ in range(3000):  # until the first request waits in the queue
            if (await ex.stub.Stats(executor_pb2.StatsRequest())).queue_depth == 1:
                break
            await asyncio.sleep(0.01)

        err = await rpc_error(ex.stub.Embed(executor_pb2.EmbedRequest(texts=["b"])))

        assert isinstance(err, errors.ResourceExhausted)
        assert "queue is full (1 requests)" in err.message
        assert err.retry_after_s is not None
        assert err.retry_after_s > 0
        runner = asyncio.ensure_future(service.loops()["embed batcher"]())
        try:
            assert len((await first).embeddings) == 1
        finally:
            runner.cancel()
            await asyncio.gather(runner, return_exceptions=True)


async def test_stats_report_the_embedding_load(embedder: testing.Executor) -> None:
    await embed(embedder, "count me")
    load = await embedder.stub.Stats(executor_pb2.StatsRequest())
    assert (load.model, load.task, load.max_batch) == (MODEL, "embed", 32)
    assert load.model_ready
    assert load.tokens_per_s > 0
    assert load.p95_latency_ms > 0


async def test_the_batcher_runs_as_a_named_task_beside_http(embedder: testing.Executor) -> None:
    tasks = embedder.serving.tasks
    assert list(tasks) == ["http", "embed batcher"]
    assert not any(task.done() for task in tasks.values())
