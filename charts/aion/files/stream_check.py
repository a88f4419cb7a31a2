"""`helm test`: stream one task through the gateway Service and check its canonical result.

The chart's test pod runs this file with the gateway image's Python, which has the
generated ``aion.api`` stubs and grpcio (no SDK needed). Settings, from the pod's env:

- ``AION_TEST_GATEWAY``: the gateway Service's host:port.
- ``AION_TEST_AGENT``: the Agent to call; empty: the first ready generate Agent.
- ``AION_TEST_INPUT``, ``AION_TEST_MAX_TOKENS``: the task.
- ``AION_TEST_TIMEOUT_S``: how long to wait for a ready Agent and its answer.
- ``AION_TEST_API_KEY``: the API key sent (the chart's ``tests.apiKey``); else
- ``AION_TEST_API_KEYS``: the gateway's API keys (JSON); the first plaintext one with
  the user role is sent (the gateway now takes hashes only, so there is usually none).
  Neither: the call goes without credentials.

Exit status 0 when the result is canonical; 1, with every problem named, otherwise.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Sequence

import grpc

from aion.api.v1 import agents_pb2, agents_pb2_grpc, common_pb2, tasks_pb2, tasks_pb2_grpc

# While an Agent is still starting, the gateway answers these; the test waits.
_NOT_YET = (
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.NOT_FOUND,
)


def api_key(keys_json: str) -> str:
    """The first API key with the user role, or "" when there is none."""
    if not keys_json.strip():
        return ""
    for entry in json.loads(keys_json):
        if "user" in entry.get("roles", ["user"]) and "key" in entry:
            return str(entry["key"])
    return ""


def check(events: Sequence[tasks_pb2.TaskEvent], *, agent: str, max_tokens: int) -> list[str]:
    """What is wrong with a streamed task's events; empty when they are canonical."""
    if not events:
        return ["the stream carried no event"]
    problems = []
    kinds = [e.WhichOneof("event") for e in events]
    if kinds[0] != "started":
        problems.append(f"the first event is {kinds[0]}, not started")
    if kinds[-1] != "done":
        problems.append(f"the last event is {kinds[-1]}, not done")
    if [e.seq for e in events] != list(range(1, len(events) + 1)):
        problems.append(f"event seq is {[e.seq for e in events]}, not 1..{len(events)}")
    if len({e.task_id for e in events}) != 1 or not events[0].task_id:
        problems.append("the events do not share one task id")
    tokens = "".join(e.token.text for e in events if e.WhichOneof("event") == "token")
    if not tokens.strip():
        problems.append("no token event carried text")
    last = events[-1]
    result = last.done.result if kinds[-1] == "done" else last.error.result
    if result.status != common_pb2.TASK_STATUS_OK:
        problems.append(
            f"status {common_pb2.TaskStatus.Name(result.status)}: "
            f"{result.error.code} {result.error.message}"
        )
    if result.task_id != events[0].task_id or result.agent != agent:
        problems.append(f"the result names task {result.task_id!r} of agent {result.agent!r}")
    if result.output != tokens:
        problems.append("the result's output differs from the streamed tokens")
    engine = result.engine
    if engine.route == common_pb2.ROUTE_UNSPECIFIED or not engine.chosen_by or not engine.reason:
        problems.append(f"the engine does not say where and why: {engine}")
    if not engine.model:
        problems.append("the engine names no model")
    usage = result.usage
    if not 0 < usage.completion_tokens <= max_tokens or usage.prompt_tokens <= 0:
        problems.append(
            f"usage counts {usage.prompt_tokens} prompt and "
            f"{usage.completion_tokens} completion tokens (at most {max_tokens})"
        )
    if usage.latency_ms <= 0:
        problems.append("usage has no latency")
    return problems


def _ready_agent(
    channel: grpc.Channel, metadata: tuple[tuple[str, str], ...], wanted: str, deadline: float
) -> str:
    stub = agents_pb2_grpc.AgentsStub(channel)
    seen = "no agent"
    while time.monotonic() < deadline:
        try:
            listed = stub.List(agents_pb2.ListAgentsRequest(), metadata=metadata, timeout=10)
        except grpc.RpcError as exc:
            if exc.code() not in _NOT_YET:
                raise
            seen = f"the gateway answers {exc.code().name}: {exc.details()}"
        else:
            ready = [
                a.name
                for a in listed.agents
                if a.ready and a.model_task == "generate" and a.name == (wanted or a.name)
            ]
            if ready:
                return ready[0]
            seen = "agents: " + (
                ", ".join(
                    f"{a.name} ({'ready' if a.ready else 'not ready'}, {a.model_task})"
                    for a in listed.agents
                )
                or "none"
            )
        print(f"waiting for {wanted or 'a ready generate agent'}; {seen}", flush=True)
        time.sleep(3)
    raise SystemExit(f"FAIL: no ready agent {wanted or '(generate)'} in time; {seen}")


def main() -> int:
    """Run the check; 0 when the result is canonical."""
    target = os.environ["AION_TEST_GATEWAY"]
    max_tokens = int(os.environ.get("AION_TEST_MAX_TOKENS", "16"))
    deadline = time.monotonic() + float(os.environ.get("AION_TEST_TIMEOUT_S", "600"))
    key = os.environ.get("AION_TEST_API_KEY") or api_key(os.environ.get("AION_TEST_API_KEYS", ""))
    metadata: tuple[tuple[str, str], ...] = (("x-api-key", key),) if key else ()
    with grpc.insecure_channel(target) as channel:
        agent = _ready_agent(channel, metadata, os.environ.get("AION_TEST_AGENT", ""), deadline)
        spec = tasks_pb2.TaskSpec(
            agent=agent,
            input=os.environ.get("AION_TEST_INPUT", "Hello."),
            options=tasks_pb2.TaskOptions(max_tokens=max_tokens),
        )
        stub = tasks_pb2_grpc.TasksStub(channel)
        while True:
            try:
                events = list(
                    stub.Stream(
                        tasks_pb2.StreamRequest(task=spec),
                        metadata=metadata,
                        timeout=max(deadline - time.monotonic(), 1),
                    )
                )
                break
            except grpc.RpcError as exc:
                if exc.code() not in _NOT_YET or time.monotonic() > deadline:
                    raise SystemExit(f"FAIL: {exc.code().name}: {exc.details()}") from None
                print(f"agent {agent} not answering yet: {exc.details()}", flush=True)
                time.sleep(3)
    problems = check(events, agent=agent, max_tokens=max_tokens)
    result = events[-1].done.result if events and events[-1].HasField("done") else None
    print(f"agent {agent}: {len(events)} events; result: {result}", flush=True)
    for problem in problems:
        print(f"FAIL: {problem}", flush=True)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
