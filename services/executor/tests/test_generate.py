"""Generation over gRPC with the real SmolLM2 model: limits, stops, seeds, batching, errors."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import prometheus_client
import pytest
from grpc_health.v1 import health_pb2

from aion.api.executor.v1 import executor_pb2
from aion.core import errors
from aion.executor import inference, settings, stats, testing, validation
from aion.executor.generation import llama_backend

MODEL = "smollm2-135m-instruct"
COUNTING = "Count from 1 to 500, one number per line."
LIMIT = 64


def chat(content: str = COUNTING, **fields: Any) -> executor_pb2.GenerateRequest:
    """A GenerateRequest with one user message."""
    return executor_pb2.GenerateRequest(
        messages=[executor_pb2.ChatMessage(role="user", content=content)], **fields
    )


async def generate(
    ex: testing.Executor,
    request: executor_pb2.GenerateRequest,
) -> list[executor_pb2.GenerateChunk]:
    """Every chunk of one Generate call."""
    return [chunk async for chunk in ex.stub.Generate(request, timeout=120)]


def text_of(chunks: list[executor_pb2.GenerateChunk]) -> str:
    """The generated text."""
    return "".join(c.text for c in chunks)


async def wait_until(condition: Callable[[], Awaitable[bool]]) -> None:
    """Poll ``condition`` until it holds; fail after thirty seconds."""
    deadline = time.monotonic() + 30
    while not await condition():
        assert time.monotonic() < deadline, "condition not met within 30 s"
        await asyncio.sleep(0.01)


async def idle(ex: testing.Executor) -> bool:
    """Whether nothing is running or waiting."""
    load = await ex.stub.Stats(executor_pb2.StatsRequest())
    return load.in_flight == 0 and load.queue_depth == 0


async def rpc_error(call: Awaitable[object]) -> errors.AionError:
    """The AionError a call ends with."""
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    return errors.from_rpc_error(info.value)


async def stream_error(
    ex: testing.Executor,
    request: executor_pb2.GenerateRequest,
) -> errors.AionError:
    """The error a Generate stream ends with before its first chunk."""

    async def drain() -> None:
        async for _ in ex.stub.Generate(request, timeout=60):
            raise AssertionError("expected an error, got a chunk")

    return await rpc_error(drain())


def service(
    model: llama_backend.LlamaBackend,
    *,
    max_queue: int = 8,
) -> inference.GenerationService:
    limits = validation.Limits(default_max_tokens=8, max_tokens_limit=LIMIT, max_texts=16)
    return inference.GenerationService(model, model_name=MODEL, limits=limits, max_queue=max_queue)


async def test_not_serving_until_the_model_is_loaded() -> None:
    fresh = llama_backend.LlamaBackend(
        settings.bundled_model_path(), n_ctx=256, n_threads=1, max_streams=1
    )
    with fresh:
        async with testing.serve(service(fresh), ready=False) as ex:
            check = await ex.health.Check(health_pb2.HealthCheckRequest())
            assert check.status == health_pb2.HealthCheckResponse.NOT_SERVING
            err = await stream_error(ex, chat())
            assert isinstance(err, errors.Unavailable)
            assert err.message == "model is loading"
            assert err.retry_after_s == 1
            assert not (await ex.stub.Stats(executor_pb2.StatsRequest())).model_ready

            await ex.serving.load_model()

            check = await ex.health.Check(health_pb2.HealthCheckRequest())
            assert check.status == health_pb2.HealthCheckResponse.SERVING
            assert (await ex.stub.Stats(executor_pb2.StatsRequest())).model_ready
            chunks = await generate(ex, chat(max_tokens=2))
            assert chunks[-1].usage.completion_tokens <= 2


async def test_generation_is_cut_at_max_tokens(generator: testing.Executor) -> None:
    chunks = await generate(generator, chat(max_tokens=5, temperature=0))
    last = chunks[-1]
    assert last.finish_reason == executor_pb2.FINISH_REASON_LENGTH
    assert last.usage.completion_tokens == 5
    assert last.usage.prompt_tokens > 10
    assert text_of(chunks)
    assert all(c.finish_reason == executor_pb2.FINISH_REASON_UNSPECIFIED for c in chunks[:-1])
    assert all(not c.HasField("usage") for c in chunks[:-1])


async def test_stop_sequences_end_the_text_before_them(generator: testing.Executor) -> None:
    reference = text_of(await generate(generator, chat(max_tokens=12, temperature=0)))
    assert "3" in reference, reference

    chunks = await generate(generator, chat(max_tokens=12, temperature=0, stop=["3"]))

    assert text_of(chunks) == reference[: reference.index("3")]
    assert chunks[-1].finish_reason == executor_pb2.FINISH_REASON_STOP
    assert chunks[-1].usage.completion_tokens < 12


@pytest.mark.parametrize("temperature", [0.0, 0.9])
async def test_the_same_seed_gives_the_same_text(
    generator: testing.Executor, temperature: float
) -> None:
    request = chat(
        "Write a haiku about the sea.", max_tokens=10, temperature=temperature, seed=1234
    )
    first = text_of(await generate(generator, request))
    second = text_of(await generate(generator, request))
    assert first
    assert first == second


async def test_a_raw_prompt_is_continued_without_the_chat_template(
    generator: testing.Executor,
) -> None:
    chunks = await generate(
        generator,
        executor_pb2.GenerateRequest(
            prompt="The capital of France is", max_tokens=4, temperature=0
        ),
    )
    assert chunks[-1].usage.prompt_tokens < 10  # no template around it
    assert chunks[-1].usage.completion_tokens <= 4
    assert text_of(chunks)


async def test_a_stream_that_joins_later_finishes_while_a_long_one_runs(
    generator: testing.Executor,
) -> None:
    long_call = generator.stub.Generate(chat(max_tokens=LIMIT, temperature=0), timeout=120)
    long_stream = aiter(long_call)
    first = await anext(long_stream)
    assert not first.finish_reason

    short = await generate(generator, chat("Say hi.", max_tokens=3, temperature=0))

    assert short[-1].usage.completion_tokens <= 3
    load = await generator.stub.Stats(executor_pb2.StatsRequest())
    assert load.in_flight == 1  # the long stream is still decoding
    rest = [chunk async for chunk in long_stream]
    assert rest[-1].usage.completion_tokens == LIMIT


async def test_streams_decoded_together_each_continue_their_own_prompt(
    generator: testing.Executor,
) -> None:
    # Batched decoding is not bit-identical to decoding alone (llama.cpp sums in a
    # different order), so this checks that no stream reads another's tokens.
    def steps(le: str) -> float:
        sample = prometheus_client.REGISTRY.get_sample_value
        return sample("aion_executor_batch_size_bucket", {"le": le}) or 0.0

    before = (steps("+Inf"), steps("1.0"))
    words = ["apple", "banana", "cherry"]
    together = await asyncio.gather(
        *(
            generate(
                generator, chat(f"Repeat the word {w} five times.", max_tokens=12, temperature=0)
            )
            for w in words
        )
    )
    for word, chunks in zip(words, together, strict=True):
        text = text_of(chunks).lower()
        assert word in text, (word, text)
        assert not any(other in text for other in words if other != word), (word, text)
        assert chunks[-1].usage.completion_tokens <= 12
    # Each decoding step counts the streams it decoded; some decoded more than one.
    after = (steps("+Inf"), steps("1.0"))
    assert after[0] - before[0] >= 12
    assert after[0] - before[0] > after[1] - before[1], (before, after)


async def test_a_cancelled_stream_frees_its_slot(generator: testing.Executor) -> None:
    before = (
        prometheus_client.REGISTRY.get_sample_value("aion_executor_completion_tokens_total") or 0.0
    )
    call = generator.stub.Generate(chat(max_tokens=LIMIT, temperature=0), timeout=60)
    stream = aiter(call)
    await anext(stream)
    await anext(stream)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await anext(stream)

    await wait_until(lambda: idle(generator))

    generated = (
        prometheus_client.REGISTRY.get_sample_value("aion_executor_completion_tokens_total") or 0.0
    ) - before
    assert generated < LIMIT
    # Every slot is free again: as many streams as the model decodes at once all finish.
    results = await asyncio.gather(
        *(generate(generator, chat(max_tokens=3, temperature=0)) for _ in range(4))
    )
    assert [r[-1].usage.completion_tokens for r in results] == [3, 3, 3, 3]


async def test_a_timed_out_stream_frees_its_slot(generator: testing.Executor) -> None:
    call = generator.stub.Generate(chat(max_tokens=LIMIT, temperature=0), timeout=0.5)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async for _ in call:
            pass
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    await wait_until(lambda: idle(generator))


async def test_a_full_queue_is_refused_with_a_retry_delay(
    generation_model: llama_backend.LlamaBackend,
) -> None:
    async with testing.serve(service(generation_model, max_queue=1)) as ex:
        call = ex.stub.Generate(chat(max_tokens=LIMIT, temperature=0), timeout=60)
        await anext(aiter(call))
        load = await ex.stub.Stats(executor_pb2.StatsRequest())
        assert (load.in_flight, load.queue_depth, load.max_queue) == (1, 0, 1)

        err = await stream_error(ex, chat(max_tokens=2))

        assert isinstance(err, errors.ResourceExhausted)
        assert "queue is full (1 requests)" in err.message
        assert err.retry_after_s is not None
        assert err.retry_after_s >= 1
        call.cancel()
        await wait_until(lambda: idle(ex))


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (executor_pb2.GenerateRequest(), "messages"),
        (chat(""), "messages[0].content"),
        (
            executor_pb2.GenerateRequest(
                messages=[executor_pb2.ChatMessage(role="robot", content="hi")]
            ),
            "messages[0].role",
        ),
        (chat(max_tokens=-1), "max_tokens"),
        (chat(max_tokens=LIMIT + 1), "max_tokens"),
        (chat(temperature=-0.5), "temperature"),
        (chat(top_p=0), "top_p"),
        (chat(seed=-1), "seed"),
        (chat(stop=[""]), "stop[0]"),
        (chat("many words " * 512), "messages"),
        (executor_pb2.GenerateRequest(prompt="many words " * 512), "prompt"),
        (chat(model="llama-70b"), "model"),
    ],
)
async def test_invalid_requests_name_the_field_and_others_are_served(
    generator: testing.Executor, request_: executor_pb2.GenerateRequest, field: str
) -> None:
    err = await stream_error(generator, request_)
    assert isinstance(err, errors.InvalidArgument), err
    assert err.field == field
    chunks = await generate(generator, chat(max_tokens=1))
    assert chunks[-1].usage.completion_tokens == 1


async def test_an_unknown_model_names_the_served_one(generator: testing.Executor) -> None:
    err = await stream_error(generator, chat(model="llama-70b"))
    assert MODEL in err.message


async def test_the_own_model_name_is_accepted(generator: testing.Executor) -> None:
    chunks = await generate(generator, chat(model=MODEL, max_tokens=2))
    assert chunks[-1].usage.completion_tokens <= 2


async def test_embed_needs_an_embedding_executor(generator: testing.Executor) -> None:
    err = await rpc_error(generator.stub.Embed(executor_pb2.EmbedRequest(texts=["hello"])))
    assert isinstance(err, errors.FailedPrecondition)
    assert MODEL in err.message
    assert '"embed"' in err.message


async def test_stats_and_gauges_report_the_load(generator: testing.Executor) -> None:
    await generate(generator, chat(max_tokens=4, temperature=0))

    load = await generator.stub.Stats(executor_pb2.StatsRequest())

    assert (load.model, load.task, load.executor) == (MODEL, "generate", "in-process")
    assert load.model_ready
    assert load.device in ("cpu", "cuda")
    assert (load.max_queue, load.max_batch) == (8, 4)
    assert load.tokens_per_s > 0
    assert load.p95_latency_ms > 0
    stats.export(generator.service.snapshot)
    assert prometheus_client.REGISTRY.get_sample_value("aion_executor_model_ready") == 1
    assert prometheus_client.REGISTRY.get_sample_value("aion_executor_max_queue") == 8
    assert prometheus_client.REGISTRY.get_sample_value("aion_executor_max_batch") == 4
    assert prometheus_client.REGISTRY.get_sample_value("aion_executor_in_flight") == 0
    assert (prometheus_client.REGISTRY.get_sample_value("aion_executor_tokens_per_second") or 0) > 0
