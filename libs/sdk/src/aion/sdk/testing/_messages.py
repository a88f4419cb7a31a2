"""What the fake gateway answers with: canned results and events, and scripted failures.

The defaults look like a real gateway's answers for the ``demo`` agent (a
local-only SmolLM2), so a test only scripts what it is about. Failures carry
the ``google.rpc`` details the real gateway sends (``BadRequest`` for a bad
field, ``RetryInfo`` for a delay), so the SDK's error mapping and retries see
what they would see in production.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import grpc
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from aion.api.v1 import agents_pb2, common_pb2, tasks_pb2


@dataclasses.dataclass(frozen=True)
class Failure:
    """A status the fake gateway answers with, with google.rpc details as the gateway's."""

    code: grpc.StatusCode
    message: str
    field: str | None = None
    retry_after_s: float | None = None

    def status(self) -> grpc.Status:
        """The grpc.Status to abort with."""
        status = status_pb2.Status(code=self.code.value[0], message=self.message)
        if self.field is not None:
            status.details.add().Pack(
                error_details_pb2.BadRequest(
                    field_violations=[
                        error_details_pb2.BadRequest.FieldViolation(
                            field=self.field, description=self.message
                        )
                    ]
                )
            )
        if self.retry_after_s is not None:
            delay = duration_pb2.Duration()
            delay.FromNanoseconds(int(self.retry_after_s * 1e9))
            status.details.add().Pack(error_details_pb2.RetryInfo(retry_delay=delay))
        converted: grpc.Status = rpc_status.to_status(status)
        return converted


@dataclasses.dataclass(frozen=True)
class Call:
    """One request as the fake gateway received it."""

    method: str
    """The RPC: ``Submit``, ``Stream``, ``Get``, ``Cancel`` (Tasks), ``ListAgents``,
    ``GetAgent``, ``ApplyAgents`` (Agents)."""
    request: Any
    """The request message."""
    metadata: dict[str, str]
    """The call's metadata (``x-api-key``, ``authorization``, ``x-request-id``...)."""
    time_remaining: float | None
    """Seconds left of the caller's deadline when it arrived; None without a deadline."""
    at: float
    """When it arrived (``time.monotonic()``)."""


def task_result(
    task_id: str = "t-1",
    *,
    status: common_pb2.TaskStatus.ValueType = common_pb2.TASK_STATUS_OK,
    output: str = "Hello",
    error: common_pb2.TaskError | None = None,
    citations: tuple[common_pb2.Citation, ...] = (),
    trace_id: str = "",
) -> common_pb2.TaskResult:
    """A task result as the gateway would send it (the ``demo`` agent, routed locally);
    ``citations``: the knowledge its answer drew on (none by default); ``trace_id``: its
    trace's (none by default)."""
    res = common_pb2.TaskResult(
        task_id=task_id,
        agent="demo",
        status=status,
        output=output,
        engine=common_pb2.Engine(
            route=common_pb2.ROUTE_LOCAL,
            chosen_by="policy:privacy",
            reason="the agent is local-only",
            model="smollm2",
        ),
        usage=common_pb2.Usage(
            latency_ms=42, prompt_tokens=3, completion_tokens=2, tokens=5, cost_usd=0.0
        ),
        error=error,
        citations=citations,
        trace_id=trace_id,
    )
    res.created_at.FromSeconds(1_700_000_000)
    res.finished_at.FromSeconds(1_700_000_001)
    return res


def stream_events(
    task_id: str = "t-1",
    *,
    tokens: tuple[str, ...] = ("Hel", "lo"),
) -> list[tasks_pb2.TaskEvent]:
    """A successful stream: started, one event per token, done (with ``task_result``)."""
    events = [
        tasks_pb2.TaskEvent(
            task_id=task_id,
            seq=1,
            started=tasks_pb2.TaskStarted(engine=common_pb2.Engine(route=common_pb2.ROUTE_LOCAL)),
        )
    ]
    events += [
        tasks_pb2.TaskEvent(task_id=task_id, seq=seq, token=tasks_pb2.Token(text=text))
        for seq, text in enumerate(tokens, start=2)
    ]
    events.append(
        tasks_pb2.TaskEvent(
            task_id=task_id,
            seq=len(tokens) + 2,
            done=tasks_pb2.Done(result=task_result(task_id, output="".join(tokens))),
        )
    )
    return events


def error_events(code: str, message: str, *, task_id: str = "t-1") -> list[tasks_pb2.TaskEvent]:
    """A stream whose task fails: started, then an ERROR event carrying ``code`` and
    ``message`` (the task's failure, as opposed to the RPC's: the stream itself ends OK)."""
    failed = task_result(
        task_id,
        status=common_pb2.TASK_STATUS_ERROR,
        output="",
        error=common_pb2.TaskError(code=code, message=message),
    )
    return [
        stream_events(task_id)[0],
        tasks_pb2.TaskEvent(task_id=task_id, seq=2, error=tasks_pb2.ErrorEvent(result=failed)),
    ]


def demo_agents() -> dict[str, agents_pb2.Agent]:
    """The agents a fresh fake gateway knows: ``demo`` (ready) and ``big`` (not ready)."""
    return {
        "demo": agents_pb2.Agent(
            name="demo",
            model="smollm2",
            model_task="generate",
            privacy=common_pb2.PRIVACY_LOCAL_ONLY,
            ready=True,
            max_tokens=256,
        ),
        "big": agents_pb2.Agent(
            name="big", model="llama-70b", ready=False, privacy=common_pb2.PRIVACY_HYBRID
        ),
    }
