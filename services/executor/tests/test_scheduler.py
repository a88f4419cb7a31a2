"""Admission, queueing and load accounting, over an in-memory backend."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Callable, Sequence
from pathlib import Path

import pytest

from aion.core import errors
from aion.executor import backend
from aion.executor.generation import scheduler

PROMPT = backend.Prompt((1, 2, 3))
PARAMS = backend.SamplingParams(max_tokens=4)


class ScriptedModel:
    """A GenerationBackend whose streams emit what the test feeds them."""

    path = Path("scripted")
    device = "cpu"
    ready = True
    context_size = 128
    max_streams = 1

    def __init__(self) -> None:
        self.feeds: list[asyncio.Queue[backend.Chunk]] = []
        self.closed = 0

    def load(self) -> None:
        """Nothing to load."""

    def close(self) -> None:
        """Nothing to free."""

    def encode_chat(self, messages: Sequence[backend.ChatMessage]) -> backend.Prompt:
        """A fixed prompt."""
        return PROMPT

    def encode_text(self, text: str) -> backend.Prompt:
        """A fixed prompt."""
        return PROMPT

    async def stream(
        self, prompt: backend.Prompt, params: backend.SamplingParams
    ) -> AsyncGenerator[backend.Chunk, None]:
        """Yield fed chunks until one finishes."""
        feed: asyncio.Queue[backend.Chunk] = asyncio.Queue()
        self.feeds.append(feed)
        try:
            while True:
                chunk = await feed.get()
                yield chunk
                if chunk.finish is not None:
                    return
        finally:
            self.closed += 1


class Clock:
    """A clock the test moves."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def last(tokens: int) -> backend.Chunk:
    return backend.Chunk(
        "", tokens, finish=backend.FinishReason.STOP, usage=backend.Usage(3, tokens)
    )


async def collect(chunks: AsyncGenerator[backend.Chunk, None]) -> list[backend.Chunk]:
    return [c async for c in chunks]


async def wait_until(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 5
    while not condition():
        assert time.monotonic() < deadline, "condition not met within 5 s"
        await asyncio.sleep(0.001)


async def test_requests_wait_for_the_slot_and_over_the_bound_are_refused() -> None:
    model, clock = ScriptedModel(), Clock()
    sched = scheduler.Scheduler(model, max_queue=2, clock=clock)
    first = asyncio.create_task(collect(sched.generate(PROMPT, PARAMS)))
    await wait_until(lambda: len(model.feeds) == 1)
    second = asyncio.create_task(collect(sched.generate(PROMPT, PARAMS)))
    await wait_until(lambda: sched.snapshot().queue_depth == 1)
    assert sched.snapshot().in_flight == 1

    with pytest.raises(errors.ResourceExhausted) as refused:
        await anext(sched.generate(PROMPT, PARAMS))
    assert refused.value.retry_after_s == 1.0
    assert "queue is full (2 requests)" in refused.value.message

    clock.now += 4
    model.feeds[0].put_nowait(backend.Chunk("a", 1))
    model.feeds[0].put_nowait(last(1))
    assert [c.text for c in await first] == ["a", ""]
    await wait_until(lambda: len(model.feeds) == 2)
    assert (sched.snapshot().in_flight, sched.snapshot().queue_depth) == (1, 0)
    model.feeds[1].put_nowait(last(2))
    await second

    load = sched.snapshot()
    assert (load.in_flight, load.queue_depth, load.max_queue) == (0, 0, 2)
    assert load.p95_latency_s == 4.0
    assert load.tokens_per_s > 0
    assert sched.retry_after_s() == 4.0


async def test_a_cancelled_consumer_releases_the_slot_and_closes_the_stream() -> None:
    model = ScriptedModel()
    sched = scheduler.Scheduler(model, max_queue=1)
    running = asyncio.create_task(collect(sched.generate(PROMPT, PARAMS)))
    await wait_until(lambda: len(model.feeds) == 1)
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    assert model.closed == 1
    assert sched.snapshot().in_flight == 0

    follower = asyncio.create_task(collect(sched.generate(PROMPT, PARAMS)))
    await wait_until(lambda: len(model.feeds) == 2)
    model.feeds[1].put_nowait(last(1))
    assert len(await follower) == 1


async def test_a_waiting_request_that_gives_up_leaves_the_queue() -> None:
    model = ScriptedModel()
    sched = scheduler.Scheduler(model, max_queue=2)
    running = asyncio.create_task(collect(sched.generate(PROMPT, PARAMS)))
    await wait_until(lambda: len(model.feeds) == 1)
    waiting = asyncio.create_task(collect(sched.generate(PROMPT, PARAMS)))
    await wait_until(lambda: sched.snapshot().queue_depth == 1)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert sched.snapshot().queue_depth == 0
    model.feeds[0].put_nowait(last(1))
    await running
    assert len(model.feeds) == 1


async def test_streams_share_the_backend_up_to_its_max_streams() -> None:
    model = ScriptedModel()
    model.max_streams = 2
    sched = scheduler.Scheduler(model, max_queue=3)
    runs = [asyncio.create_task(collect(sched.generate(PROMPT, PARAMS))) for _ in range(3)]
    await wait_until(lambda: len(model.feeds) == 2)
    await wait_until(lambda: sched.snapshot().queue_depth == 1)
    load = sched.snapshot()
    assert (load.in_flight, load.queue_depth, load.max_batch) == (2, 1, 2)

    model.feeds[1].put_nowait(last(1))
    await runs[1]
    await wait_until(lambda: len(model.feeds) == 3)
    assert (sched.snapshot().in_flight, sched.snapshot().queue_depth) == (2, 0)
    model.feeds[0].put_nowait(last(1))
    model.feeds[2].put_nowait(last(1))
    await asyncio.gather(runs[0], runs[2])
