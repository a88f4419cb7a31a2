"""``aionctl`` through click's CliRunner, against the fake gateway (aion.sdk.testing)."""

from __future__ import annotations

import asyncio
import json
import socket

import click.testing
import grpc

from aion.api.v1 import common_pb2
from aion.sdk import cli, testing


async def _run(
    gateway: testing.FakeGateway, *args: str, stdin: str | None = None
) -> click.testing.Result:
    runner = click.testing.CliRunner()
    return await asyncio.to_thread(
        runner.invoke, cli.main, ["--target", gateway.target, *args], input=stdin
    )


async def test_stream_prints_tokens_then_a_summary(gateway: testing.FakeGateway) -> None:
    out = await _run(gateway, "stream", "--agent", "demo", "--max-tokens", "8", "hi")
    assert out.exit_code == 0, out.output
    assert out.stdout == "Hello\n"
    assert out.stderr.strip() == "OK · local · 5 tokens · 42 ms · task t-1"
    assert gateway.seen("Stream")[0].request.task.options.max_tokens == 8


async def test_stream_json_prints_the_canonical_result(gateway: testing.FakeGateway) -> None:
    out = await _run(gateway, "stream", "--agent", "demo", "--json", "hi")
    assert out.exit_code == 0, out.output
    data = json.loads(out.stdout)
    assert data == {
        "task_id": "t-1",
        "agent": "demo",
        "status": "OK",
        "output": "Hello",
        "engine": {
            "route": "local",
            "chosen_by": "policy:privacy",
            "reason": "the agent is local-only",
            "model": "smollm2",
        },
        "usage": {
            "latency_ms": 42,
            "prompt_tokens": 3,
            "completion_tokens": 2,
            "tokens": 5,
            "cost_usd": 0.0,
        },
        "error": None,
        "created_at": "2023-11-14T22:13:20Z",
        "finished_at": "2023-11-14T22:13:21Z",
        "citations": [],
    }


async def test_not_found_is_one_line_and_exit_2(gateway: testing.FakeGateway) -> None:
    out = await _run(gateway, "agents", "nope")
    assert out.exit_code == 2
    assert out.stdout == ""
    assert out.stderr == "error: NOT_FOUND: agent 'nope' not found\n"


async def test_invalid_argument_names_its_field(gateway: testing.FakeGateway) -> None:
    out = await _run(gateway, "submit", "--agent", "demo", "--max-tokens", "-1", "hi")
    assert out.exit_code == 2
    assert out.stderr == (
        "error: INVALID_ARGUMENT: max_tokens must be positive (field: max_tokens)\n"
    )


async def test_task_that_ends_in_error_exits_1(gateway: testing.FakeGateway) -> None:
    gateway.end_with_error("INTERNAL", "the model crashed")
    out = await _run(gateway, "stream", "--agent", "demo", "hi")
    assert out.exit_code == 1
    assert out.stderr.splitlines()[-1] == "error: INTERNAL: the model crashed"
    assert "Traceback" not in out.output


async def test_unreachable_gateway_exits_3(gateway: testing.FakeGateway) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    runner = click.testing.CliRunner()
    out = await asyncio.to_thread(
        runner.invoke, cli.main, ["--target", f"127.0.0.1:{port}", "health"]
    )
    assert out.exit_code == 3
    assert out.stderr.startswith("error: UNAVAILABLE: ")
    assert len(out.stderr.splitlines()) == 1


async def test_submit_reads_stdin_and_sends_credentials(gateway: testing.FakeGateway) -> None:
    out = await _run(
        gateway,
        "--api-key",
        "k",
        "submit",
        "--agent",
        "demo",
        "--idempotency-key",
        "i-1",
        "-",
        stdin="from stdin\n",
    )
    assert out.exit_code == 0, out.output
    assert out.stdout == "Hello\n"
    call = gateway.seen("Submit")[0]
    assert call.request.task.input == "from stdin"
    assert call.request.task.idempotency_key == "i-1"
    assert call.metadata["x-api-key"] == "k"


async def test_async_submit_prints_the_task_id(gateway: testing.FakeGateway) -> None:
    out = await _run(gateway, "submit", "--agent", "demo", "--async", "hi")
    assert out.exit_code == 0, out.output
    assert out.stdout == "t-9\n"
    assert gateway.seen("Submit")[0].request.asynchronous


async def test_get_and_cancel(gateway: testing.FakeGateway) -> None:
    shown = await _run(gateway, "get", "t-1")
    assert shown.exit_code == 0, shown.output
    assert "status       OK" in shown.stdout
    assert shown.stdout.rstrip().endswith("Hello")
    canceled = await _run(gateway, "cancel", "t-1", "--json")
    assert json.loads(canceled.stdout)["status"] == "CANCELED"


async def test_get_trace_prints_the_traces_address_in_the_ui(
    gateway: testing.FakeGateway,
) -> None:
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    gateway.result = testing.task_result(trace_id=trace_id)
    shown = await _run(gateway, "get", "t-1", "--trace")
    assert shown.exit_code == 0, shown.output
    assert shown.stdout == f"http://127.0.0.1:16686/trace/{trace_id}\n"
    elsewhere = await _run(gateway, "get", "t-1", "--trace", "--trace-ui", "http://jaeger:80/")
    assert elsewhere.stdout == f"http://jaeger:80/trace/{trace_id}\n"
    gateway.result = testing.task_result()
    none = await _run(gateway, "get", "t-1", "--trace")
    assert none.exit_code == 1
    assert "has no trace" in none.stderr


async def test_get_shows_the_citations_and_the_summary_counts_them(
    gateway: testing.FakeGateway,
) -> None:
    gateway.result = testing.task_result(
        citations=(
            common_pb2.Citation(
                knowledge_base="handbook",
                document_id="vacation.md",
                version=2,
                chunk_index=0,
                char_start=0,
                char_end=52,
                title="Vacation policy",
                score=0.03,
            ),
            common_pb2.Citation(knowledge_base="handbook", document_id="faq.txt", version=1),
        )
    )
    shown = await _run(gateway, "get", "t-1")
    assert shown.exit_code == 0, shown.output
    cited = [line for line in shown.stdout.splitlines() if line.startswith("cited")]
    assert cited == [
        "cited        handbook/vacation.md v2 chunk 0 [0:52] 'Vacation policy'",
        "cited        handbook/faq.txt v1 chunk 0 [0:0]",
    ]
    submitted = await _run(gateway, "submit", "--agent", "demo", "hi")
    assert submitted.stderr.strip() == "OK · local · 5 tokens · 42 ms · 2 citations · task t-1"
    as_json = await _run(gateway, "get", "t-1", "--json")
    assert [c["document_id"] for c in json.loads(as_json.stdout)["citations"]] == [
        "vacation.md",
        "faq.txt",
    ]


async def test_agents_table_and_health(gateway: testing.FakeGateway) -> None:
    table = await _run(gateway, "agents")
    assert table.exit_code == 0, table.output
    assert table.stdout.splitlines() == [
        "NAME  MODEL      PRIVACY     READY",
        "demo  smollm2    local-only  yes",
        "big   llama-70b  hybrid      no",
    ]
    listed = await _run(gateway, "agents", "--json")
    assert [a["name"] for a in json.loads(listed.stdout)] == ["demo", "big"]
    healthy = await _run(gateway, "health")
    assert (healthy.exit_code, healthy.stdout) == (0, "SERVING\n")


async def test_deadline_exceeded_exits_3(gateway: testing.FakeGateway) -> None:
    gateway.fail("Get", grpc.StatusCode.DEADLINE_EXCEEDED, "too slow")
    out = await _run(gateway, "--timeout", "5", "get", "t-1")
    assert out.exit_code == 3
    assert out.stderr == "error: DEADLINE_EXCEEDED: too slow\n"
    assert gateway.seen("Get")[0].time_remaining is not None


async def test_follow_prints_an_existing_task(gateway: testing.FakeGateway) -> None:
    out = await _run(gateway, "follow", "t-1")
    assert out.exit_code == 0, out.output
    assert out.stdout == "Hello\n"
    assert gateway.seen("Stream")[0].request.task_id == "t-1"
