"""The executor on a real grpc.aio server with the real SmolLM2 model, loaded once.

The model runs on one thread: the test machine is small and shared, and
llama.cpp's threads spin badly when the cores are oversubscribed.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import grpc
import prometheus_client
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from aion.api.executor.v1 import executor_pb2, executor_pb2_grpc
from aion.core import errors, server
from aion.executor import backend, llama_backend, main, scheduler, servicer, settings, stats

MODEL_NAME = "smollm2-135m-instruct"
N_CTX = 512
MAX_TOKENS_LIMIT = 64
COUNTING = "Count from 1 to 500, one number per line."


@dataclasses.dataclass
class Executor:
    """A running executor and clients of it."""

    server: server.GrpcServer
    scheduler: scheduler.Scheduler
    stub: executor_pb2_grpc.ExecutorAsyncStub
    health: health_pb2_grpc.HealthStub


def new_model() -> llama_backend.LlamaBackend:
    """The bundled SmolLM2 model, not loaded yet."""
    return llama_backend.LlamaBackend(settings.bundled_model_path(), n_ctx=N_CTX, n_threads=1)


@contextlib.asynccontextmanager
async def serve(model: backend.GenerationBackend, *, max_queue: int = 4,
                ready: bool = True) -> AsyncIterator[Executor]:
    """Serve ``model`` on a free port; stubs use a plain channel, without client retries."""
    sched = scheduler.Scheduler(model, max_queue=max_queue)
    grpc_server = server.GrpcServer(name="executor", host="127.0.0.1", port=0, grace_s=1.0,
                                    ready=ready)
    grpc_server.add(executor_pb2_grpc.add_ExecutorServicer_to_server,
                    servicer.ExecutorServicer(model, sched, model_name=MODEL_NAME,
                                              default_max_tokens=8,
                                              max_tokens_limit=MAX_TOKENS_LIMIT),
                    executor_pb2.DESCRIPTOR.services_by_name["Executor"].full_name)
    async with grpc_server, grpc.aio.insecure_channel(grpc_server.address) as channel:
        yield Executor(server=grpc_server, scheduler=sched,
                       stub=executor_pb2_grpc.ExecutorStub(channel),
                       health=health_pb2_grpc.HealthStub(channel))


def chat(content: str = COUNTING, **fields: Any) -> executor_pb2.GenerateRequest:
    """A GenerateRequest with one user message."""
    return executor_pb2.GenerateRequest(
        messages=[executor_pb2.ChatMessage(role="user", content=content)], **fields)


async def generate(ex: Executor, request: executor_pb2.GenerateRequest,
                   ) -> list[executor_pb2.GenerateChunk]:
    """Every chunk of one Generate call."""
    return [chunk async for chunk in ex.stub.Generate(request, timeout=60)]


def text_of(chunks: list[executor_pb2.GenerateChunk]) -> str:
    """The generated text."""
    return "".join(c.text for c in chunks)


async def wait_until(condition: Callable[[], Awaitable[bool]]) -> None:
    """Poll ``condition`` until it holds; fail after ten seconds."""
    deadline = time.monotonic() + 10
    while not await condition():
        assert time.monotonic() < deadline, "condition not met within 10 s"
        await asyncio.sleep(0.01)


async def idle(ex: Executor) -> bool:
    """Whether nothing is running or waiting."""
    load = await ex.stub.Stats(executor_pb2.StatsRequest())
    return load.in_flight == 0 and load.queue_depth == 0


async def rpc_error(call: Awaitable[object]) -> errors.AionError:
    """The AionError a call ends with."""
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    return errors.from_rpc_error(info.value)


async def first_chunk_then_error(ex: Executor, request: executor_pb2.GenerateRequest,
                                 ) -> errors.AionError:
    """The error a Generate stream ends with before its first chunk."""
    async def drain() -> None:
        async for _ in ex.stub.Generate(request, timeout=30):
            raise AssertionError("expected an error, got a chunk")
    return await rpc_error(drain())


@pytest.fixture(scope="module")
def model() -> Iterator[llama_backend.LlamaBackend]:
    """The real model, loaded once."""
    with new_model() as m:
        m.load()
        yield m


@pytest.fixture(scope="module")
async def executor(model: llama_backend.LlamaBackend) -> AsyncIterator[Executor]:
    """One executor serving the shared model."""
    async with serve(model) as running:
        yield running


async def test_not_serving_until_the_model_is_loaded() -> None:
    with new_model() as fresh:
        async with serve(fresh, ready=False) as ex:
            check = await ex.health.Check(health_pb2.HealthCheckRequest())
            assert check.status == health_pb2.HealthCheckResponse.NOT_SERVING
            err = await first_chunk_then_error(ex, chat())
            assert isinstance(err, errors.Unavailable)
            assert err.message == "model is loading"
            assert err.retry_after_s == 1
            assert not (await ex.stub.Stats(executor_pb2.StatsRequest())).model_ready

            await main.load_model(fresh, ex.server)

            check = await ex.health.Check(health_pb2.HealthCheckRequest())
            assert check.status == health_pb2.HealthCheckResponse.SERVING
            assert (await ex.stub.Stats(executor_pb2.StatsRequest())).model_ready


async def test_generation_is_cut_at_max_tokens(executor: Executor) -> None:
    chunks = await generate(executor, chat(max_tokens=5, temperature=0))
    last = chunks[-1]
    assert last.finish_reason == executor_pb2.FINISH_REASON_LENGTH
    assert last.usage.completion_tokens == 5
    assert last.usage.prompt_tokens > 10
    assert text_of(chunks)
    assert all(c.finish_reason == executor_pb2.FINISH_REASON_UNSPECIFIED for c in chunks[:-1])
    assert all(not c.HasField("usage") for c in chunks[:-1])


async def test_stop_sequences_end_the_text_before_them(executor: Executor) -> None:
    reference = text_of(await generate(executor, chat(max_tokens=12, temperature=0)))
    assert "3" in reference, reference

    chunks = await generate(executor, chat(max_tokens=12, temperature=0, stop=["3"]))

    assert text_of(chunks) == reference[:reference.index("3")]
    assert chunks[-1].finish_reason == executor_pb2.FINISH_REASON_STOP
    assert chunks[-1].usage.completion_tokens < 12


@pytest.mark.parametrize("temperature", [0.0, 0.9])
async def test_the_same_seed_gives_the_same_text(executor: Executor, temperature: float) -> None:
    request = chat("Write a haiku about the sea.", max_tokens=10, temperature=temperature,
                   seed=1234)
    first = text_of(await generate(executor, request))
    second = text_of(await generate(executor, request))
    assert first
    assert first == second


async def test_a_cancelled_stream_frees_its_slot(executor: Executor) -> None:
    before = prometheus_client.REGISTRY.get_sample_value(
        "aion_executor_completion_tokens_total") or 0.0
    call = executor.stub.Generate(chat(max_tokens=MAX_TOKENS_LIMIT, temperature=0), timeout=60)
    stream = aiter(call)
    await anext(stream)
    await anext(stream)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await anext(stream)

    await wait_until(lambda: idle(executor))

    generated = (prometheus_client.REGISTRY.get_sample_value(
        "aion_executor_completion_tokens_total") or 0.0) - before
    assert generated < MAX_TOKENS_LIMIT
    after = await generate(executor, chat(max_tokens=3, temperature=0))
    assert after[-1].usage.completion_tokens == 3


async def test_a_full_queue_is_refused_with_a_retry_delay(
        model: llama_backend.LlamaBackend) -> None:
    async with serve(model, max_queue=1) as ex:
        call = ex.stub.Generate(chat(max_tokens=MAX_TOKENS_LIMIT, temperature=0), timeout=60)
        await anext(aiter(call))
        load = await ex.stub.Stats(executor_pb2.StatsRequest())
        assert (load.in_flight, load.queue_depth, load.max_queue) == (1, 0, 1)

        err = await first_chunk_then_error(ex, chat(max_tokens=2))

        assert isinstance(err, errors.ResourceExhausted)
        assert "queue is full (1 requests)" in err.message
        assert err.retry_after_s is not None
        assert err.retry_after_s >= 1
        call.cancel()
        await wait_until(lambda: idle(ex))


@pytest.mark.parametrize(("request_", "field"), [
    (executor_pb2.GenerateRequest(), "messages"),
    (chat(""), "messages[0].content"),
    (executor_pb2.GenerateRequest(messages=[
        executor_pb2.ChatMessage(role="robot", content="hi")]), "messages[0].role"),
    (chat(max_tokens=-1), "max_tokens"),
    (chat(max_tokens=MAX_TOKENS_LIMIT + 1), "max_tokens"),
    (chat(temperature=-0.5), "temperature"),
    (chat(top_p=0), "top_p"),
    (chat(top_p=1.5), "top_p"),
    (chat(seed=-1), "seed"),
    (chat(stop=[""]), "stop[0]"),
    (chat("many words " * N_CTX), "messages"),
])
async def test_invalid_requests_name_the_field(executor: Executor,
                                               request_: executor_pb2.GenerateRequest,
                                               field: str) -> None:
    err = await first_chunk_then_error(executor, request_)
    assert isinstance(err, errors.InvalidArgument), err
    assert err.field == field


async def test_another_model_is_not_found(executor: Executor) -> None:
    err = await first_chunk_then_error(executor, chat(model="llama-70b"))
    assert isinstance(err, errors.NotFound)
    assert err.field == "model"
    assert MODEL_NAME in err.message


async def test_the_own_model_name_is_accepted(executor: Executor) -> None:
    chunks = await generate(executor, chat(model=MODEL_NAME, max_tokens=2))
    assert chunks[-1].usage.completion_tokens <= 2


async def test_embed_needs_an_embedding_executor(executor: Executor) -> None:
    err = await rpc_error(executor.stub.Embed(executor_pb2.EmbedRequest(texts=["hello"])))
    assert isinstance(err, errors.FailedPrecondition)
    assert MODEL_NAME in err.message
    assert '"embed"' in err.message


async def test_stats_and_gauges_report_the_load(executor: Executor) -> None:
    await generate(executor, chat(max_tokens=4, temperature=0))

    load = await executor.stub.Stats(executor_pb2.StatsRequest())

    assert load.model == MODEL_NAME
    assert load.model_ready
    assert load.device in ("cpu", "cuda")
    assert load.max_queue == 4
    assert load.tokens_per_s > 0
    assert load.p95_latency_ms > 0
    stats.export(executor.scheduler.snapshot)
    assert prometheus_client.REGISTRY.get_sample_value("aion_executor_model_ready") == 1
    assert prometheus_client.REGISTRY.get_sample_value("aion_executor_max_queue") == 4
    assert prometheus_client.REGISTRY.get_sample_value("aion_executor_in_flight") == 0
    assert (prometheus_client.REGISTRY.get_sample_value("aion_executor_tokens_per_second")
            or 0) > 0
