"""Validation and conversion at the protobuf edge, without a model."""

from __future__ import annotations

from typing import Any

import pytest

from aion.api.executor.v1 import executor_pb2
from aion.core import errors
from aion.executor import backend, convert, stats


def convert_request(**fields: Any) -> convert.GenerateRequest:
    msg = executor_pb2.GenerateRequest(**fields)
    return convert.generate_request_from_pb(msg, default_max_tokens=256, max_tokens_limit=2048)


def user(content: str = "hi") -> list[executor_pb2.ChatMessage]:
    return [executor_pb2.ChatMessage(role="user", content=content)]


def test_defaults_fill_unset_fields() -> None:
    req = convert_request(messages=user())
    assert req.model == ""
    assert req.messages == (backend.ChatMessage("user", "hi"),)
    assert req.params == backend.SamplingParams(max_tokens=256)


def test_set_fields_are_kept() -> None:
    req = convert_request(
        model="m", messages=[executor_pb2.ChatMessage(role="system", content="be brief"),
                             *user()],
        max_tokens=7, temperature=0, top_p=1, stop=["\n"], seed=0)
    assert req.model == "m"
    assert [m.role for m in req.messages] == ["system", "user"]
    assert req.params == backend.SamplingParams(
        max_tokens=7, temperature=0.0, top_p=1.0, stop=("\n",), seed=0)


@pytest.mark.parametrize(("fields", "field"), [
    ({}, "messages"),
    ({"messages": user("   ")}, "messages[0].content"),
    ({"messages": [*user(), executor_pb2.ChatMessage(role="tool", content="x")]},
     "messages[1].role"),
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
])
def test_invalid_fields_are_named(fields: dict[str, Any], field: str) -> None:
    with pytest.raises(errors.InvalidArgument) as info:
        convert_request(**fields)
    assert info.value.field == field


def test_only_the_last_chunk_carries_finish_and_usage() -> None:
    middle = convert.chunk_to_pb(backend.Chunk("Hel", 1))
    assert middle.text == "Hel"
    assert middle.finish_reason == executor_pb2.FINISH_REASON_UNSPECIFIED
    assert not middle.HasField("usage")
    last = convert.chunk_to_pb(backend.Chunk("lo", 2, finish=backend.FinishReason.LENGTH,
                                             usage=backend.Usage(10, 3)))
    assert last.finish_reason == executor_pb2.FINISH_REASON_LENGTH
    assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (10, 3)


def test_stats_are_converted_to_milliseconds() -> None:
    load = stats.Load(model_ready=True, queue_depth=2, in_flight=1, max_queue=16,
                      tokens_per_s=12.5, p95_latency_s=0.25)
    msg = convert.stats_to_pb(load, model="m", device="cpu")
    assert msg == executor_pb2.ExecutorStats(
        model="m", model_ready=True, device="cpu", queue_depth=2, in_flight=1,
        tokens_per_s=12.5, p95_latency_ms=250.0, max_queue=16)
