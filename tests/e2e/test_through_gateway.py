"""A task through gateway -> router -> agent -> executor (real model), and bad input; an
agent with a knowledge base (the real knowledge service) whose answer cites its document."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import grpc
import httpx
import pytest

from aion.api.v1 import common_pb2, knowledge_pb2, tasks_pb2, tasks_pb2_grpc
from aion.infra import devstack
from aion.sdk import AsyncClient, Client, errors

pytestmark = pytest.mark.e2e
AIONCTL = str(Path(sys.executable).with_name("aionctl"))


def test_every_service_reports_serving(suite: devstack.LocalSuite) -> None:
    for svc in suite.services.values():
        assert devstack.health_status(svc.health_target, timeout=10) == "SERVING", svc.name


async def test_stream_yields_model_tokens_then_the_canonical_result(
    suite: devstack.LocalSuite,
) -> None:
    async with AsyncClient(suite.gateway) as client:
        events = [e async for e in client.stream("demo", "What is Kubernetes?", max_tokens=24)]
    kinds = [e.WhichOneof("event") for e in events]
    assert kinds[0] == "started"
    assert kinds[-1] == "done"
    tokens = [e.token.text for e in events if e.WhichOneof("event") == "token"]
    assert len(tokens) > 3, "the answer should arrive as several token events"
    result = events[-1].done.result
    assert result.status == common_pb2.TASK_STATUS_OK
    assert result.output == "".join(tokens)
    assert result.output.strip()
    assert result.engine.route == common_pb2.ROUTE_LOCAL
    assert result.engine.chosen_by == "policy:privacy"
    assert "local-only" in result.engine.reason
    assert result.engine.model == "smollm2-135m-instruct"
    assert 0 < result.usage.completion_tokens <= 24
    assert result.usage.prompt_tokens > 0
    assert result.usage.latency_ms > 0


async def test_same_seed_at_temperature_zero_gives_the_same_answer(
    suite: devstack.LocalSuite,
) -> None:
    async with AsyncClient(suite.gateway) as client:
        a = await client.submit("demo", "Name a color.", max_tokens=12, temperature=0, seed=7)
        b = await client.submit("demo", "Name a color.", max_tokens=12, temperature=0, seed=7)
    assert a.result.status == common_pb2.TASK_STATUS_OK
    assert a.result.output == b.result.output
    assert a.task_id != b.task_id


@pytest.mark.parametrize(
    ("kwargs", "error", "field"),
    [
        ({"agent": "nope", "input": "hi"}, errors.NotFound, None),
        ({"agent": "demo", "input": ""}, errors.InvalidArgument, "task.input"),
        (
            {"agent": "demo", "input": "hi", "max_tokens": -1},
            errors.InvalidArgument,
            "task.options.max_tokens",
        ),
    ],
)
def test_bad_input_gets_the_matching_status(
    suite: devstack.LocalSuite,
    kwargs: dict[str, object],
    error: type[errors.AionError],
    field: str | None,
) -> None:
    agent, text = str(kwargs.pop("agent")), str(kwargs.pop("input"))
    with Client(suite.gateway) as client, pytest.raises(error) as info:
        list(client.stream(agent, text, **kwargs))  # type: ignore[arg-type]
    assert info.value.field == field
    assert info.value.message


async def test_stream_without_a_deadline_is_refused(suite: devstack.LocalSuite) -> None:
    async with grpc.aio.insecure_channel(suite.gateway) as chan:
        stub: tasks_pb2_grpc.TasksAsyncStub = tasks_pb2_grpc.TasksStub(chan)
        call = stub.Stream(
            tasks_pb2.StreamRequest(task=tasks_pb2.TaskSpec(agent="demo", input="hi")),
            metadata=(("x-api-key", os.environ["AION_API_KEY"]),),
        )
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for _ in call:
                pass
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "deadline" in (info.value.details() or "")


def test_async_submit_then_get_returns_the_stored_result(suite: devstack.LocalSuite) -> None:
    with Client(suite.gateway) as client:
        submitted = client.submit("demo", "Say hello.", asynchronous=True, max_tokens=8)
        assert submitted.task_id
        # Follow replays what the task produced so far and ends with it; polling Get
        # in a tight loop would spend the tenant's rate limit meant for other tests.
        events = list(client.follow(submitted.task_id, timeout=60))
        assert events[-1].WhichOneof("event") == "done", events[-1]
        result = client.get(submitted.task_id, timeout=5)
        assert result.status == common_pb2.TASK_STATUS_OK
        assert result.task_id == submitted.task_id
        replay = list(client.follow(submitted.task_id))
        assert replay[-1].done.result.output == result.output


async def test_cancel_mid_stream_ends_the_task_canceled(suite: devstack.LocalSuite) -> None:
    async with AsyncClient(suite.gateway) as client:
        task_id = ""
        final = None
        async for event in client.stream("demo", "Write a long story about GPUs.", max_tokens=400):
            kind = event.WhichOneof("event")
            if kind == "token" and not task_id:
                task_id = event.task_id
                await client.cancel(task_id)
            if kind in ("done", "error"):
                final = event
        assert final is not None
        assert final.WhichOneof("event") == "error"
        assert final.error.result.status == common_pb2.TASK_STATUS_CANCELED
        assert (await client.get(task_id)).status == common_pb2.TASK_STATUS_CANCELED


def test_knowledge_round_trip_through_the_gateway(suite: devstack.LocalSuite) -> None:
    with Client(suite.gateway) as client:
        resp = client.ingest("docs", "k8s", content="Pods run on nodes.\n\nGPUs are scarce.")
        assert resp.chunks == 1  # both paragraphs fit one 800-character chunk
        client.ingest("docs", "kafka", content="Kafka keeps ordered partitions.")
        hits = client.search("docs", "scarce GPUs")
        assert [h.document_id for h in hits] == ["k8s"]
        assert "GPUs are scarce." in hits[0].text
        assert client.delete_document("docs", "k8s").chunks_removed == 1
        assert client.search("docs", "scarce GPUs") == []
        with pytest.raises(errors.NotFound):
            client.delete_document("docs", "k8s")


LIBRARIAN = """
apiVersion: aion.dev/v1alpha1
kind: Agent
metadata:
  name: librarian
spec:
  model:
    name: smollm2-135m-instruct
    task: generate
  instructions: Answer from the context, in one short sentence.
  knowledgeBases: [handbook]
  routing:
    privacy: local-only
"""
VACATION = "# Vacation\n\nEmployees get 30 days of paid vacation a year."


async def test_an_agents_answer_cites_the_document_it_drew_on(
    suite: devstack.LocalSuite,
) -> None:
    question = "How many days of paid vacation do employees get?"
    async with AsyncClient(suite.gateway) as client:
        doc = await client.ingest(
            "handbook",
            "vacation.md",
            title="Vacation policy",
            content=VACATION,
            content_type="text/markdown",
        )
        assert doc.state == knowledge_pb2.DOCUMENT_STATE_READY, doc.error
        [hit] = await client.search("handbook", question)  # hybrid, with its citation
        [agent] = await client.apply_agents(LIBRARIAN, timeout=30)
        assert list(agent.knowledge_bases) == ["handbook"]
        events = [e async for e in client.stream("librarian", question, max_tokens=16)]
        assert events[-1].WhichOneof("event") == "done", events[-1]
        result = events[-1].done.result
        assert result.status == common_pb2.TASK_STATUS_OK, result.error
        # The retrieval put the document's one passage into the context: the answer cites it.
        [cited] = result.citations
        assert (cited.knowledge_base, cited.document_id, cited.version, cited.title) == (
            "handbook",
            "vacation.md",
            doc.version,
            "Vacation policy",
        )
        assert (cited.chunk_index, cited.char_start, cited.char_end) == (
            hit.chunk_index,
            hit.char_start,
            hit.char_end,
        )
        assert "30 days" in hit.text
        # Stored with the task: Get after the fact lists the same.
        stored = await client.get(result.task_id, timeout=10)
        assert list(stored.citations) == list(result.citations)
    # The OpenAI-compatible surface carries them in its canonical result (``aion``).
    async with httpx.AsyncClient(base_url=suite.gateway_http, timeout=120) as http:
        answer = await http.post(
            "/v1/chat/completions",
            headers={"Authorization": f"Bearer {os.environ['AION_API_KEY']}"},
            json={
                "model": "librarian",
                "max_tokens": 8,
                "messages": [{"role": "user", "content": question}],
            },
        )
    assert answer.status_code == 200, answer.text
    assert [c["document_id"] for c in answer.json()["aion"]["citations"]] == ["vacation.md"]


def _aionctl(suite: devstack.LocalSuite, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [AIONCTL, "--target", suite.gateway, *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_aionctl_streams_an_answer_and_prints_json(suite: devstack.LocalSuite) -> None:
    out = _aionctl(suite, "stream", "--agent", "demo", "--max-tokens", "16", "What is Kubernetes?")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip()
    as_json = _aionctl(suite, "submit", "--agent", "demo", "--max-tokens", "8", "--json", "Hi")
    assert as_json.returncode == 0, as_json.stderr
    result = json.loads(as_json.stdout)
    assert result["status"] == "OK"
    assert result["engine"]["route"] == "local"
    assert set(result["usage"]) >= {"latency_ms", "tokens", "cost_usd"}


def test_aionctl_shows_errors_in_one_line_with_a_non_zero_exit(suite: devstack.LocalSuite) -> None:
    out = _aionctl(suite, "stream", "--agent", "nope", "hi")
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert lines == [lines[0]]
    assert lines[0].startswith("error: NOT_FOUND:")
    assert "Traceback" not in out.stderr
    bad = _aionctl(suite, "stream", "--agent", "demo", "--max-tokens", "-1", "hi")
    assert bad.returncode == 2
    assert "INVALID_ARGUMENT" in bad.stderr


def _log_records(suite: devstack.LocalSuite, service: str) -> list[dict[str, object]]:
    lines = suite.services[service].log_path.read_text().splitlines()
    return [json.loads(line) for line in lines if line.startswith("{")]


def test_one_trace_follows_a_task_across_services(suite: devstack.LocalSuite) -> None:
    with Client(suite.gateway) as client:
        task_id = client.submit("demo", "Trace me.", max_tokens=4).task_id
    deadline = time.monotonic() + 10
    ended: list[dict[str, object]] = []
    while not ended:
        assert time.monotonic() < deadline, "the agent service never logged the task's end"
        ended = [
            r
            for r in _log_records(suite, "agent")
            if r.get("message") == "task ended" and r.get("task_id") == task_id
        ]
    trace_id = ended[0]["trace_id"]
    assert isinstance(trace_id, str)
    assert len(trace_id) == 32
    routed = [r for r in _log_records(suite, "gateway") if r.get("message") == "task routed"]
    decided = [r for r in _log_records(suite, "router") if r.get("message") == "decided"]
    assert trace_id in {r["trace_id"] for r in routed}
    assert trace_id in {r["trace_id"] for r in decided}
    # Each line of the task names its span and its tenant (the e2e admin key's).
    for record in (
        ended[0],
        *(r for r in routed if r["trace_id"] == trace_id),
        *(r for r in decided if r["trace_id"] == trace_id),
    ):
        assert len(str(record["span_id"])) == 16, record
        assert record["tenant"] == "default", record
