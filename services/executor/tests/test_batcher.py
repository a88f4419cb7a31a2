"""Dynamic batching of embedding requests, over an in-memory embedding backend."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import numpy as np
import pytest

from aion.core import errors
from aion.executor import backend
from aion.executor.embedding import batcher


class CountingModel:
    """An EmbeddingBackend whose vector for a text is its length, one-hot; records batches."""

    path = Path("scripted")
    device = "cpu"
    ready = True
    dimensions = 8
    max_input_tokens = 5

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.gate = threading.Event()
        self.gate.set()

    def load(self) -> None:
        """Nothing to load."""

    def close(self) -> None:
        """Nothing to free."""

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """One token per word."""
        return [len(t.split()) for t in texts]

    def embed(self, texts: Sequence[str]) -> backend.Vectors:
        """Row i is one-hot at len(texts[i]) % 8; waits for the gate first."""
        self.gate.wait(timeout=10)
        self.batches.append(list(texts))
        out = np.zeros((len(texts), self.dimensions), dtype=np.float32)
        for i, text in enumerate(texts):
            out[i, len(text) % self.dimensions] = 1.0
        return out


@contextlib.asynccontextmanager
async def running(b: batcher.EmbedBatcher) -> AsyncIterator[batcher.EmbedBatcher]:
    task = asyncio.create_task(b.run())
    try:
        yield b
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_concurrent_callers_share_batches_of_at_most_max_batch() -> None:
    model = CountingModel()
    b = batcher.EmbedBatcher(model, max_batch=4, max_wait_s=0.5, max_queue=16)
    async with running(b):
        results = await asyncio.gather(*(b.embed(["x" * i]) for i in range(1, 7)))
    assert [len(batch) for batch in model.batches] == [4, 2]
    for i, result in enumerate(results, start=1):
        assert result.vectors.shape == (1, 8)
        assert int(np.argmax(result.vectors[0])) == i % 8
        assert result.prompt_tokens == 1


async def test_a_request_larger_than_max_batch_is_a_batch_of_its_own() -> None:
    model = CountingModel()
    b = batcher.EmbedBatcher(model, max_batch=2, max_wait_s=0.0, max_queue=4)
    async with running(b):
        result = await b.embed(["a", "bb", "ccc"])
    assert model.batches == [["a", "bb", "ccc"]]
    assert [int(np.argmax(row)) for row in result.vectors] == [1, 2, 3]


async def test_a_text_over_the_input_limit_fails_only_its_request() -> None:
    model = CountingModel()
    b = batcher.EmbedBatcher(model, max_batch=8, max_wait_s=0.5, max_queue=8)
    async with running(b):
        good, bad = await asyncio.gather(
            b.embed(["short one"]),
            b.embed(["fine", "one two three four five six"]),
            return_exceptions=True,
        )
    assert isinstance(good, backend.Embedded)
    assert isinstance(bad, errors.InvalidArgument)
    assert bad.field == "texts[1]"
    assert "6 tokens" in bad.message
    assert "at most 5" in bad.message
    assert model.batches == [["short one"]]


async def test_over_max_queue_is_refused_with_a_retry_delay() -> None:
    model = CountingModel()
    b = batcher.EmbedBatcher(model, max_batch=8, max_wait_s=0.0, max_queue=1)
    waiting = asyncio.create_task(b.embed(["a"]))  # the loop is not running: it waits
    await asyncio.sleep(0)
    assert b.snapshot().queue_depth == 1
    with pytest.raises(errors.ResourceExhausted) as refused:
        await b.embed(["b"])
    assert refused.value.retry_after_s is not None
    assert refused.value.retry_after_s > 0
    assert "queue is full (1 requests)" in refused.value.message
    async with running(b):
        assert (await waiting).vectors.shape == (1, 8)
    assert b.snapshot().queue_depth == 0


async def test_a_caller_that_gives_up_while_waiting_is_skipped() -> None:
    model = CountingModel()
    b = batcher.EmbedBatcher(model, max_batch=8, max_wait_s=0.0, max_queue=4)
    gone = asyncio.create_task(b.embed(["gone"]))
    await asyncio.sleep(0)
    gone.cancel()
    with pytest.raises(asyncio.CancelledError):
        await gone
    async with running(b):
        await b.embed(["kept"])
    assert model.batches == [["kept"]]
    load = b.snapshot()
    assert (load.queue_depth, load.in_flight, load.max_batch) == (0, 0, 8)
    assert load.tokens_per_s > 0
