"""One task's whole trace, read back from the real Jaeger (v2): a suite exporting its spans
over OTLP runs an asynchronous task of an agent with a knowledge base, through the gateway
with authentication on; the trace holds every hop (gateway, router, agent, knowledge,
executor) with the right parents, the work topic's send and process spans linked, and the
GenAI attributes of the model call. The upload's trace goes through the document topic the
same way. ``AION_SPAN_TREE_OUT`` names a file to write the task's rendered tree to."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from aion.api.v1 import common_pb2, knowledge_pb2
from aion.infra import devstack
from aion.infra.jaeger import Jaeger
from aion.sdk import Client

from .span_tree import Span, fetch, find_trace_ids, render

pytestmark = pytest.mark.e2e
AIONCTL = str(Path(sys.executable).with_name("aionctl"))
SERVICES = ("gateway", "router", "agent", "knowledge", "executor")
MODEL = "smollm2-135m-instruct"
TENANT = "default"  # the e2e admin key's
# The tags the tree written to AION_SPAN_TREE_OUT shows.
NOTED = (
    "aion.task.id",
    "messaging.kafka.offset",
    "gen_ai.usage.input_tokens",
    "gen_ai.usage.output_tokens",
    "gen_ai.response.finish_reasons",
)


def _agent(name: str, kb: str) -> str:
    return f"""
apiVersion: aion.dev/v1alpha1
kind: Agent
metadata:
  name: {name}
spec:
  model:
    name: {MODEL}
    task: generate
  instructions: Answer from the context, in one short sentence.
  knowledgeBases: [{kb}]
  routing:
    privacy: local-only
"""


@pytest.fixture
def traced_suite(
    fresh_suite: Callable[..., devstack.LocalSuite], jaeger: Jaeger, tmp_path: Path
) -> devstack.LocalSuite:
    """A suite of its own whose services export their spans to Jaeger, in small batches."""
    env = {f"AION_{name.upper()}_OTLP_ENDPOINT": jaeger.otlp_endpoint for name in SERVICES}
    return fresh_suite(tmp_path / "suite", {**env, "OTEL_BSP_SCHEDULE_DELAY": "200"})


def _under(span: Span, ancestor: Span, by_id: dict[str, Span]) -> bool:
    seen = span
    while seen.parent_id is not None and seen.parent_id in by_id:
        seen = by_id[seen.parent_id]
        if seen is ancestor:
            return True
    return False


def _hops(spans: list[Span], services: tuple[str, ...] = SERVICES) -> list[str]:
    """What the trace lacks or gets wrong, in general: a service missing, a span whose
    parent is not in the trace, more than one root, a server span whose parent is not a
    client span of the same RPC in another service, a consumer not linked to its
    producer."""
    by_id = {s.span_id: s for s in spans}
    problems = [
        f"no span of aion-{name}"
        for name in services
        if not any(s.service == f"aion-{name}" for s in spans)
    ]
    roots = [s for s in spans if s.parent_id is None]
    problems += [
        f"{s.service}: {s.name} has a parent outside the trace"
        for s in spans
        if (s.parent_id is not None and s.parent_id not in by_id)
    ]
    if len(roots) != 1:
        problems.append(f"{len(roots)} roots, not one")
    for s in spans:
        parent = by_id.get(s.parent_id or "")
        if (
            s.kind == "server"
            and parent is not None
            and (parent.kind != "client" or parent.name != s.name or parent.service == s.service)
        ):
            problems.append(f"{s.service}: {s.name}'s parent is {parent.service}: {parent.name}")
        if s.kind == "consumer":
            producers = [p for p in (parent, *(by_id.get(i) for i in s.links)) if p is not None]
            if not any(
                p.kind == "producer" and p.name == "send " + s.name.removeprefix("process ")
                for p in producers
            ):
                problems.append(f"{s.service}: {s.name} is not linked to its send span")
    return problems


def _topic(spans: list[Span], name: str) -> str:
    """The full name of the topic ``name`` (under the suite's prefix) the trace sent to."""
    sent = [s.name.removeprefix("send ") for s in spans if s.name.startswith("send ")]
    return next((t for t in sent if t.endswith("." + name)), "<no send span of " + name + ">")


def _task_problems(spans: list[Span], *, agent: str, task_id: str) -> list[str]:
    """What the task's trace lacks or gets wrong (empty once it is whole)."""
    problems = _hops(spans)
    work = _topic(spans, "agent.tasks")
    by_id = {s.span_id: s for s in spans}

    def one(service: str, name: str, kind: str) -> Span | None:
        found = [s for s in spans if (s.service, s.name, s.kind) == (service, name, kind)]
        if not found:
            problems.append(f"no {kind} span {service}: {name}")
        return found[0] if found else None

    root = one("aion-gateway", "/aion.v1.Tasks/Submit", "server")
    one("aion-router", "/aion.router.v1.Router/Decide", "server")
    submit = one("aion-agent", "/aion.agent.v1.AgentService/Submit", "server")
    send = one("aion-agent", f"send {work}", "producer")
    process = one("aion-agent", f"process {work}", "consumer")
    run = one("aion-agent", f"invoke_agent {agent}", "internal")
    search = one("aion-knowledge", "/aion.knowledge.v1.KnowledgeService/Search", "server")
    generate = one("aion-executor", "/aion.executor.v1.Executor/Generate", "server")
    call = one("aion-agent", f"chat {MODEL}", "client")
    generation = one("aion-executor", f"chat {MODEL}", "internal")
    embeds = [s for s in spans if s.name == "/aion.executor.v1.Executor/Embed"]
    if root is not None and root.parent_id is not None:
        problems.append("the gateway's Submit is not the root")
    if root is not None and root.tags.get("aion.tenant") != TENANT:
        problems.append(f"the gateway's span names tenant {root.tags.get('aion.tenant')!r}")
    if submit is not None and submit.tags.get("aion.task.id") != task_id:
        problems.append("the agent's Submit span does not name the task")
    if send is not None and submit is not None and send.parent_id != submit.span_id:
        problems.append("the work topic's send span is not a child of the agent's Submit")
    if send is not None:
        for attr, value in (
            ("messaging.system", "kafka"),
            ("messaging.operation.type", "send"),
            ("messaging.destination.name", work),
            ("messaging.kafka.message.key", task_id),
        ):
            if send.tags.get(attr) != value:
                problems.append(f"send {work}: {attr} is {send.tags.get(attr)!r}, not {value!r}")
    if run is not None and process is not None and run.parent_id != process.span_id:
        problems.append("the run is not a child of the work topic's process span")
    if run is not None and (run.tags.get("aion.task.id"), run.tags.get("aion.tenant")) != (
        task_id,
        TENANT,
    ):
        problems.append("the run does not name its task and tenant")
    if run is not None and search is not None and not _under(search, run, by_id):
        problems.append("the knowledge search is not under the run")
    if search is not None and not any(_under(e, search, by_id) for e in embeds):
        problems.append("the query's embedding (executor Embed) is not under the search")
    if call is not None and generate is not None and not _under(generate, call, by_id):
        problems.append("the executor's Generate is not under the agent's model call")
    if (
        generation is not None
        and generate is not None
        and generation.parent_id != (generate.span_id)
    ):
        problems.append("the generation span is not a child of the executor's Generate")
    for span in (call, generation):
        if span is None:
            continue
        tags = span.tags
        if tags.get("gen_ai.request.model") != MODEL or tags.get("gen_ai.operation.name") != (
            "chat"
        ):
            problems.append(f"{span.service}: {span.name} lacks gen_ai model/operation")
        if not (
            int(tags.get("gen_ai.usage.input_tokens", 0)) > 0
            and int(tags.get("gen_ai.usage.output_tokens", 0)) > 0
        ):
            problems.append(f"{span.service}: {span.name} lacks its token usage")
        if (tags.get("aion.task.id"), tags.get("aion.tenant")) != (task_id, TENANT):
            problems.append(f"{span.service}: {span.name} does not name the task and tenant")
    if generation is not None and not generation.tags.get("gen_ai.response.finish_reasons"):
        problems.append("the generation lacks its finish reasons")
    return problems


def test_one_tasks_span_tree_in_jaeger(traced_suite: devstack.LocalSuite, jaeger: Jaeger) -> None:
    suffix = uuid.uuid4().hex[:6]
    kb, agent = f"handbook-{suffix}", f"librarian-{suffix}"
    with Client(traced_suite.gateway) as client:
        doc = client.ingest(
            kb,
            "vacation.md",
            title="Vacation policy",
            content="# Vacation\n\nEmployees get 30 days of paid vacation a year.",
            content_type="text/markdown",
        )
        assert doc.state == knowledge_pb2.DOCUMENT_STATE_READY, doc.error
        client.apply_agents(_agent(agent, kb), timeout=30)
        submitted = client.submit(
            agent, "How many days of paid vacation?", asynchronous=True, max_tokens=8
        )
        events = list(client.follow(submitted.task_id, timeout=120))
        assert events[-1].WhichOneof("event") == "done", events[-1]
        result = client.get(submitted.task_id, timeout=10)
    assert result.status == common_pb2.TASK_STATUS_OK, result.error
    assert len(result.citations) == 1  # the retrieval found the document
    assert len(result.trace_id) == 32, result

    shown = subprocess.run(
        [
            AIONCTL,
            "--target",
            traced_suite.gateway,
            "get",
            result.task_id,
            "--trace",
            "--trace-ui",
            jaeger.url,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.strip() == jaeger.trace_url(result.trace_id)

    def whole(spans: list[Span]) -> bool:
        return not _task_problems(spans, agent=agent, task_id=result.task_id)

    spans = fetch(jaeger.url, result.trace_id, until=whole, timeout_s=60)
    tree = render(spans)
    if out := os.environ.get("AION_SPAN_TREE_OUT"):
        Path(out).write_text(render(spans, show=NOTED) + "\n")
    problems = _task_problems(spans, agent=agent, task_id=result.task_id)
    assert not problems, "\n".join([*problems, "", "the trace:", tree])

    # The upload: the gateway's Ingest, the knowledge service's send to the document topic,
    # the indexer's process span and the chunks' embeddings, one trace.
    documents = (
        next(
            (
                s.tags["messaging.destination.name"]
                for s in spans
                if str(s.tags.get("messaging.destination.name", "")).endswith(".agent.tasks")
            ),
            "",
        ).removesuffix("agent.tasks")
        + "knowledge.documents"
    )
    ids = find_trace_ids(jaeger.url, service="aion-knowledge", operation=f"process {documents}")
    assert ids, f"no trace in Jaeger holds process {documents}"

    def upload_problems(upload: list[Span]) -> list[str]:
        problems = _hops(upload, ("gateway", "knowledge", "executor"))
        names = {(s.service, s.name, s.kind) for s in upload}
        for expected in (
            ("aion-gateway", "/aion.v1.Knowledge/Ingest", "server"),
            ("aion-knowledge", f"send {documents}", "producer"),
            ("aion-knowledge", f"process {documents}", "consumer"),
            ("aion-executor", "/aion.executor.v1.Executor/Embed", "server"),
        ):
            if expected not in names:
                problems.append(f"no {expected[2]} span {expected[0]}: {expected[1]}")
        return problems

    upload = fetch(jaeger.url, ids[0], until=lambda got: not upload_problems(got), timeout_s=30)
    problems = upload_problems(upload)
    assert not problems, "\n".join([*problems, "", "the trace:", render(upload)])
