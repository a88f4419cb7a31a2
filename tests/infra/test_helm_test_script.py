"""The chart's `helm test` script (charts/aion/files/stream_check.py) judges a stream.

The script runs in the cluster with the gateway image's Python; here its check
is fed a canonical stream and broken ones.
"""

from __future__ import annotations

import importlib.util
from types import ModuleType

import pytest

from aion.api.v1 import common_pb2, tasks_pb2
from aion.infra.paths import REPO

SCRIPT = REPO / "charts" / "aion" / "files" / "stream_check.py"


@pytest.fixture(scope="module")
def script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("stream_check", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _stream(
    *tokens: str,
    status: common_pb2.TaskStatus.ValueType = common_pb2.TASK_STATUS_OK,
) -> list[tasks_pb2.TaskEvent]:
    engine = common_pb2.Engine(
        route=common_pb2.ROUTE_LOCAL,
        chosen_by="policy:privacy",
        reason="local-only agent",
        model="smollm2-135m-instruct",
    )
    events = [tasks_pb2.TaskEvent(task_id="t1", started=tasks_pb2.TaskStarted(engine=engine))]
    events += [tasks_pb2.TaskEvent(task_id="t1", token=tasks_pb2.Token(text=t)) for t in tokens]
    result = common_pb2.TaskResult(
        task_id="t1",
        agent="demo",
        status=status,
        output="".join(tokens),
        engine=engine,
        usage=common_pb2.Usage(prompt_tokens=9, completion_tokens=len(tokens), latency_ms=80),
    )
    events.append(tasks_pb2.TaskEvent(task_id="t1", done=tasks_pb2.Done(result=result)))
    for seq, event in enumerate(events, 1):
        event.seq = seq
    return events


def test_a_canonical_stream_passes(script: ModuleType) -> None:
    assert script.check(_stream("Hello", " there"), agent="demo", max_tokens=16) == []


def test_each_broken_part_is_named(script: ModuleType) -> None:
    assert script.check([], agent="demo", max_tokens=16) == ["the stream carried no event"]
    events = _stream("Hello", " there", status=common_pb2.TASK_STATUS_ERROR)
    events[-1].done.result.output = "Goodbye"
    events[-1].done.result.ClearField("engine")
    events[1].seq = 7
    problems = script.check(events, agent="other", max_tokens=1)
    text = "\n".join(problems)
    for fragment in (
        "event seq is",
        "status TASK_STATUS_ERROR",
        "of agent 'demo'",
        "differs from the streamed tokens",
        "does not say where and why",
        "names no model",
        "at most 1",
    ):
        assert fragment in text, (fragment, problems)


def test_the_first_user_key_of_the_gateway_secret_is_used(script: ModuleType) -> None:
    keys = (
        '[{"key": "v", "tenant": "a", "roles": ["viewer"]},'
        ' {"key": "u", "tenant": "a", "roles": ["user"]}]'
    )
    assert script.api_key(keys) == "u"
    assert script.api_key("") == ""
    assert script.api_key('[{"key": "v", "tenant": "a", "roles": ["viewer"]}]') == ""
