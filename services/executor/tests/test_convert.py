"""Validation and conversion at the protobuf edge, without a model."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from aion.api.executor.v1 import executor_pb2
from aion.core import errors
from aion.executor import backend, convert, stats, validation

LIMITS = validation.Limits(default_max_tokens=256, max_tokens_limit=2048, max_texts=4)


def convert_request(**fields: Any) -> validation.GenerateRequest:
    msg = executor_pb2.GenerateRequest(**fields)
    return convert.generate_request_from_pb(msg, limits=LIMITS)


def user(content: str = "hi") -> list[executor_pb2.ChatMessage]:
    return [executor_pb2.ChatMessage(role="user", content=content)]


def test_defaults_fill_unset_fields() -> None:
    req = convert_request(messages=user())
    assert req.model == ""
    assert req.messages == (backend.ChatMessage("user", "hi"),)
    assert req.params == backend.SamplingParams(max_tokens=256)


def test_set_fields_are_kept() -> None:
    req = convert_request(
        model="m",
        messages=[executor_pb2.ChatMessage(role="system", content="be brief"), *user()],
        max_tokens=7,
        temperature=0,
        top_p=1,
        stop=["\n"],
        seed=0,
    )
    assert req.model == "m"
    assert [m.role for m in req.messages] == ["system", "user"]
    assert req.params == backend.SamplingParams(
        max_tokens=7, temperature=0.0, top_p=1.0, stop=("\n",), seed=0
    )


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({}, "messages"),
        ({"messages": user("   ")}, "messages[0].content"),
        (
            {"messages": [*user(), executor_pb2.ChatMessage(role="tool", content="x")]},
            "messages[1].role",
        ),
        ({"messages": user(), "max_tokens": 0}, "max_tokens"),
        ({"messages": user(), "max_tokens": -3}, "max_tokens"),
        ({"messages": user(), "max_tokens": 2049}, "max_tokens"),
        ({"messages": user(), "temperature": -0.01}, "temperature"),
        ({"messages": user(), "temperature": float("nan")}, "temperature"),
        ({"messages": user(), "top_p": 0.0}, "top_p"),
        ({"messages": user(), "top_p": 1.01}, "top_p"),
        ({"messages": user(), "stop": ["a", ""]}, "stop[1]"),
        ({"messages": user(), "stop": ["s"] * 9}, "stop"),
        ({"messages": user(), "seed": -1}, "seed"),
        ({"messages": user(), "seed": 2**32 - 1}, "seed"),
        ({"messages": user(), "prompt": "go on"}, "prompt"),
        ({"prompt": "  "}, "prompt"),
    ],
)
def test_invalid_fields_are_named(fields: dict[str, Any], field: str) -> None:
    with pytest.raises(errors.InvalidArgument) as info:
        convert_request(**fields)
    assert info.value.field == field


def test_a_raw_prompt_needs_no_messages() -> None:
    req = convert_request(prompt="Once upon a time", max_tokens=3)
    assert (req.prompt, req.messages, req.params.max_tokens) == ("Once upon a time", (), 3)


@pytest.mark.parametrize(
    ("texts", "field"),
    [
        ([], "texts"),
        (["a", "b", "c", "d", "e"], "texts"),
        (["fine", ""], "texts[1]"),
        (["   "], "texts[0]"),
    ],
)
def test_invalid_embed_requests_name_the_field(texts: list[str], field: str) -> None:
    with pytest.raises(errors.InvalidArgument) as info:
        convert.embed_request_from_pb(executor_pb2.EmbedRequest(texts=texts), limits=LIMITS)
    assert info.value.field == field


def test_another_model_is_an_invalid_argument_naming_the_served_one() -> None:
    validation.check_model("", served="m")
    validation.check_model("m", served="m")
    with pytest.raises(errors.InvalidArgument) as info:
        validation.check_model("llama-70b", served="m")
    assert info.value.field == "model"
    assert "'m'" in info.value.message


def test_vectors_become_an_embed_response() -> None:
    vectors = np.array([[0.6, 0.8], [1.0, 0.0]], dtype=np.float32)
    msg = convert.embedded_to_pb(backend.Embedded(vectors, 7), model="e")
    assert (msg.model, msg.dimensions, msg.prompt_tokens) == ("e", 2, 7)
    assert [v for e in msg.embeddings for v in e.values] == pytest.approx([0.6, 0.8, 1.0, 0.0])


def test_only_the_last_chunk_carries_finish_and_usage() -> None:
    middle = convert.chunk_to_pb(backend.Chunk("Hel", 1))
    assert middle.text == "Hel"
    assert middle.finish_reason == executor_pb2.FINISH_REASON_UNSPECIFIED
    assert not middle.HasField("usage")
    last = convert.chunk_to_pb(
        backend.Chunk("lo", 2, finish=backend.FinishReason.LENGTH, usage=backend.Usage(10, 3))
    )
    assert last.finish_reason == executor_pb2.FINISH_REASON_LENGTH
    assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (10, 3)


def test_stats_are_converted_to_milliseconds() -> None:
    load = stats.Load(
        model_ready=True,
        queue_depth=2,
        in_flight=1,
        max_queue=16,
        tokens_per_s=12.5,
        p95_latency_s=0.25,
        max_batch=8,
    )
    msg = convert.stats_to_pb(load, model="m", device="cpu", task="generate", executor="pod-1")
    assert msg == executor_pb2.ExecutorStats(
        model="m",
        model_ready=True,
        device="cpu",
        queue_depth=2,
        in_flight=1,
        tokens_per_s=12.5,
        p95_latency_ms=250.0,
        max_queue=16,
        task="generate",
        max_batch=8,
        executor="pod-1",
    )
