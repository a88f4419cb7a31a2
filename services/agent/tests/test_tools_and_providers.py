"""The knowledge_search tool and retrieval against the real knowledge service, and the
OpenAI-compatible provider path (``api`` and ``hybrid`` routes) against the real
executor's HTTP endpoint (``/v1/chat/completions``, SmolLM2 on the CPU).

The knowledge service runs its real composition in this process (Postgres, Kafka,
MinIO, the embedding executor, qdrant-client's local mode); the executors run as
``python -m aion.executor``.
Local model calls still go to the scripted executor of ``conftest``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, TypeAlias

import httpx
import psycopg
import pydantic
import pytest

from aion.agent import provider
from aion.agent import testing as agent_testing
from aion.api.agent.v1 import agent_pb2, agent_pb2_grpc
from aion.api.knowledge.v1 import knowledge_pb2, knowledge_pb2_grpc
from aion.api.router.v1 import router_pb2
from aion.api.v1 import agents_pb2, common_pb2, tasks_pb2
from aion.api.v1 import knowledge_pb2 as public_knowledge_pb2
from aion.core import channels, errors
from aion.infra.devstack import suite
from aion.infra.kafka import Kafka
from aion.infra.minio import MinIO
from aion.infra.postgres import Postgres
from aion.knowledge import settings as knowledge_settings
from aion.knowledge import testing as knowledge_testing

Stub: TypeAlias = "agent_pb2_grpc.AgentServiceAsyncStub"
TENANT = "acme"
MODEL = "smollm2-135m-instruct"
COST_PER_1K = 0.5
EXECUTOR_TOKEN = "provider-test-token"  # the executor's HTTP API key, sent by the provider
DOCS = (
    b"Kubernetes schedules pods onto nodes.",
    b"GPUs are advertised by the NVIDIA device plugin as nvidia.com/gpu.",
    b"Kafka keeps events in ordered partitions.",
)


# -- the real peers ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def embedder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``python -m aion.executor`` serving all-MiniLM-L6-v2 embeddings; its gRPC target."""
    port, health_port = suite.free_port(), suite.free_port()
    log = tmp_path_factory.mktemp("embedder") / "executor.log"
    env = {
        **os.environ,
        **agent_testing.process_env(log.parent / "tls", "executor"),
        "AION_EXECUTOR_HEALTH_PORT": str(health_port),
        "AION_EXECUTOR_MODEL_TASK": "embed",
        "AION_EXECUTOR_PORT": str(port),
        "AION_EXECUTOR_HTTP_PORT": "0",
        "AION_EXECUTOR_METRICS_PORT": str(suite.free_port()),
        "AION_EXECUTOR_N_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
    }
    env.pop("AION_EXECUTOR_KAFKA_BOOTSTRAP", None)
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "aion.executor"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    target = f"127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while suite.health_status(f"127.0.0.1:{health_port}") != "SERVING":
            assert proc.poll() is None, f"the embedder exited; its log:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"the embedder is not serving:\n{log.read_text()}"
            time.sleep(0.3)
        yield target
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def knowledge_dsn(postgres: Postgres) -> Iterator[str]:
    """A database of the knowledge service's own, dropped at the end."""
    with postgres.scratch_database("kb_tools") as dsn:
        yield dsn


@pytest.fixture(scope="module")
async def knowledge(
    knowledge_dsn: str,
    kafka: Kafka,
    minio: MinIO,
    embedder: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[str]:
    """The knowledge service's real composition (Postgres, Kafka, MinIO, the embedding
    executor, Qdrant's local mode), with one document per tenant."""
    cfg = knowledge_settings.KnowledgeSettings(
        postgres_dsn=pydantic.SecretStr(knowledge_dsn),
        kafka_bootstrap=kafka.bootstrap,
        minio_endpoint=minio.endpoint,
        minio_access_key=minio.access_key,
        minio_secret_key=pydantic.SecretStr(minio.secret_key),
        minio_bucket=f"kb-tools-{uuid.uuid4().hex[:8]}",
        executor_target=embedder,
        topic_prefix=f"k{uuid.uuid4().hex[:8]}.",
        port=0,
        health_port=0,
        grace_s=1.0,
        qdrant_path=str(tmp_path_factory.mktemp("qdrant")),
    )
    async with knowledge_testing.Service(cfg, ca=agent_testing.CA) as svc:
        for tenant, contents in (
            (TENANT, DOCS),
            ("globex", (b"Globex keeps its quarterly zebra ledger.",)),
        ):
            for i, content in enumerate(contents):  # a passage each
                await svc.ingest(tenant, "docs", f"d{i}", content)
        yield svc.address


@pytest.fixture(scope="module")
def model_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``python -m aion.executor`` with its OpenAI-compatible HTTP endpoint; its /v1 URL."""
    port, http_port = suite.free_port(), suite.free_port()
    log = tmp_path_factory.mktemp("executor") / "executor.log"
    env = {
        **os.environ,
        **agent_testing.process_env(log.parent / "tls", "executor"),
        "AION_EXECUTOR_HEALTH_PORT": str(suite.free_port()),
        "AION_EXECUTOR_HTTP_TOKEN": EXECUTOR_TOKEN,
        "AION_EXECUTOR_PORT": str(port),
        "AION_EXECUTOR_HTTP_PORT": str(http_port),
        "AION_EXECUTOR_METRICS_PORT": str(suite.free_port()),
        "AION_EXECUTOR_N_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
    }
    env.pop("AION_EXECUTOR_KAFKA_BOOTSTRAP", None)
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "aion.executor"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    base = f"http://127.0.0.1:{http_port}"
    try:
        _wait_healthy(base, proc, log)
        yield f"{base}/v1"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wait_healthy(base: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 180
    while True:
        assert proc.poll() is None, f"the executor exited; its log:\n{log.read_text()[-3000:]}"
        try:
            if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, (
            f"the executor's HTTP endpoint is not healthy; its log:\n{log.read_text()[-3000:]}"
        )
        time.sleep(0.3)


@pytest.fixture(scope="module")
async def service(
    new_service: Callable[..., Any], executor: Any, knowledge: str, model_api: str
) -> AsyncIterator[Any]:
    """The agent service with retrieval, the knowledge service and the provider."""
    async with new_service(
        knowledge_target=knowledge,
        retrieval_top_k=2,
        provider_base_url=model_api,
        provider_model=MODEL,
        provider_api_key=pydantic.SecretStr(EXECUTOR_TOKEN),
        provider_cost_per_1k_tokens=COST_PER_1K,
    ) as svc:
        async with agent_testing.channel(svc.address) as chan:
            stub: Stub = agent_pb2_grpc.AgentServiceStub(chan)
            # "plain" may use the external API (the provider); "librarian" is local-only.
            for name, tools, kbs, privacy in (
                ("librarian", ["knowledge_search"], ["docs"], common_pb2.PRIVACY_LOCAL_ONLY),
                ("plain", [], [], common_pb2.PRIVACY_ALLOW_API),
            ):
                await stub.RegisterAgent(
                    agent_pb2.RegisterAgentRequest(
                        tenant=TENANT,
                        instructions="Answer briefly.",
                        tools=tools,
                        privacy=privacy,
                        agent=agents_pb2.Agent(name=name, model="m", knowledge_bases=kbs),
                        executor_endpoints=[executor.address],
                    )
                )
        yield svc


# -- helpers ------------------------------------------------------------------------------
def _route(route: common_pb2.Route.ValueType) -> router_pb2.Decision:
    return router_pb2.Decision(
        engine=common_pb2.Engine(route=route, chosen_by="test", reason="chosen by the test"),
        provider="executor-http",
    )


async def _run(
    stub: Stub,
    agent: str,
    text: str,
    *,
    decision: router_pb2.Decision | None = None,
    max_tokens: int | None = None,
) -> tuple[str, common_pb2.TaskResult]:
    req = agent_pb2.RunRequest(
        tenant=TENANT,
        task=tasks_pb2.TaskSpec(
            agent=agent, input=text, options=tasks_pb2.TaskOptions(max_tokens=max_tokens)
        ),
    )
    if decision is not None:
        req.decision.CopyFrom(decision)
    events = [e async for e in stub.Run(req, timeout=120)]
    last = events[-1]
    kind = last.WhichOneof("event")
    assert kind in ("done", "error"), kind
    result = last.done.result if kind == "done" else last.error.result
    return events[0].task_id, result


async def _steps(dsn: str, task_id: str) -> list[dict[str, Any]]:
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        cur = await conn.execute(
            "SELECT step, kind, name, output, error, prompt_tokens, completion_tokens, cost_usd,"
            " model_ms, latency_ms FROM task_steps WHERE task_id = %s ORDER BY step",
            (task_id,),
        )
        cols = [c.name for c in cur.description or ()]
        return [dict(zip(cols, r, strict=True)) for r in await cur.fetchall()]


# -- knowledge ----------------------------------------------------------------------------
async def test_knowledge_search_tool_returns_passages_of_the_agents_base(
    stub: Stub, agent_dsn: str
) -> None:
    call = 'call:knowledge_search {"query": "which GPU device plugin?", "top_k": 1}'
    task_id, result = await _run(stub, "librarian", call)
    assert result.status == common_pb2.TASK_STATUS_OK, result.error.message
    assert result.output.startswith("answer: GPUs are advertised by the NVIDIA device plugin")
    steps = await _steps(agent_dsn, task_id)
    assert [(s["kind"], s["name"]) for s in steps] == [
        ("model", "m"),
        ("tool", "knowledge_search"),
        ("model", "m"),
    ]
    assert steps[1]["output"].startswith("GPUs are advertised")
    assert steps[1]["error"] is None


async def _hits(knowledge: str, query: str, top_k: int) -> list[public_knowledge_pb2.SearchHit]:
    """What the knowledge service finds for acme in "docs", asked as the agent service."""
    async with channels.connect(
        knowledge, tls=agent_testing.CA.tls("agent"), peer="knowledge"
    ) as chan:
        stub = knowledge_pb2_grpc.KnowledgeServiceStub(chan)
        resp = await stub.Search(
            knowledge_pb2.SearchRequest(
                tenant=TENANT,
                request=public_knowledge_pb2.SearchRequest(
                    knowledge_base="docs", query=query, top_k=top_k
                ),
            ),
            timeout=30,
        )
    return list(resp.hits)


async def test_the_result_cites_the_passages_its_run_used_once_each(
    stub: Stub, knowledge: str
) -> None:
    call = 'call:knowledge_search {"query": "which GPU device plugin?", "top_k": 1}'
    task_id, result = await _run(stub, "librarian", call)
    assert result.status == common_pb2.TASK_STATUS_OK, result.error.message
    # The retrieval's passages for the input (before the first model call; top_k 2), then
    # the tool's, each passage once, in order of first use.
    used = [
        *await _hits(knowledge, call, 2),
        *await _hits(knowledge, "which GPU device plugin?", 1),
    ]
    expected: list[tuple[str, str, int, int]] = []
    for h in used:
        if (key := (h.knowledge_base, h.document_id, h.version, h.chunk_index)) not in expected:
            expected.append(key)
    cited = [(c.knowledge_base, c.document_id, c.version, c.chunk_index) for c in result.citations]
    assert cited == expected
    assert ("docs", "d1", 1, 0) in cited
    [gpu] = [c for c in result.citations if c.document_id == "d1"]
    assert (gpu.char_start, gpu.char_end) == (0, len(DOCS[1]))
    assert gpu.score > 0
    # Stored with the task: Get (as Tasks.Get through the gateway) lists them the same.
    stored = await stub.GetTask(agent_pb2.TaskRef(tenant=TENANT, task_id=task_id), timeout=10)
    assert list(stored.citations) == list(result.citations)


async def test_a_run_that_used_no_knowledge_cites_nothing(stub: Stub) -> None:
    _, result = await _run(stub, "plain", "nothing to look up")
    assert result.status == common_pb2.TASK_STATUS_OK, result.error.message
    assert list(result.citations) == []


async def test_knowledge_search_sees_only_its_tenants_documents(stub: Stub) -> None:
    call = 'call:knowledge_search {"query": "quarterly zebra ledger"}'
    _, result = await _run(stub, "librarian", call)
    assert result.status == common_pb2.TASK_STATUS_OK, result.error.message
    # globex has that document; acme has nothing like it
    assert result.output == "answer: (no passages found)"


async def test_knowledge_search_of_a_base_the_agent_lacks_ends_invalid_argument(
    stub: Stub, agent_dsn: str
) -> None:
    call = 'call:knowledge_search {"query": "GPU", "knowledge_base": "secrets"}'
    task_id, result = await _run(stub, "librarian", call)
    assert result.status == common_pb2.TASK_STATUS_ERROR
    assert result.error.code == "INVALID_ARGUMENT"
    assert "may search ['docs'], not ['secrets']" in result.error.message
    steps = await _steps(agent_dsn, task_id)
    assert steps[-1]["kind"] == "tool"
    assert "secrets" in steps[-1]["error"]


async def test_retrieved_context_goes_into_the_system_message(stub: Stub, executor: Any) -> None:
    task_id, result = await _run(stub, "librarian", "Which GPU device plugin is used?")
    assert result.status == common_pb2.TASK_STATUS_OK, result.error.message
    index = next(i for i, (t, _) in enumerate(executor.calls) if t == task_id)
    system = executor.requests[index].messages[0]
    assert system.role == "system"
    assert "Use this context when it helps:" in system.content
    assert "NVIDIA device plugin" in system.content
    assert "zebra" not in system.content


# -- the OpenAI-compatible provider -------------------------------------------------------
async def test_api_route_calls_the_openai_compatible_endpoint(
    stub: Stub, executor: Any, agent_dsn: str
) -> None:
    task_id, result = await _run(
        stub, "plain", "Name a planet.", decision=_route(common_pb2.ROUTE_API), max_tokens=8
    )
    assert result.status == common_pb2.TASK_STATUS_OK, result.error.message
    assert result.output.strip()
    assert result.engine.route == common_pb2.ROUTE_API
    assert task_id not in {t for t, _ in executor.calls}  # the local executor was not asked
    assert 0 < result.usage.completion_tokens <= 8
    assert result.usage.prompt_tokens > 10  # the real chat template, not the scripted 7
    [step] = await _steps(agent_dsn, task_id)
    assert step["name"] == MODEL
    assert step["output"] == result.output
    assert step["cost_usd"] == pytest.approx(
        (step["prompt_tokens"] + step["completion_tokens"]) / 1000 * COST_PER_1K
    )
    assert result.usage.cost_usd == pytest.approx(step["cost_usd"])


async def test_hybrid_falls_back_to_the_api_when_the_local_pool_fails(
    stub: Stub, executor: Any, agent_dsn: str
) -> None:
    task_id, result = await _run(
        stub, "plain", "fail", decision=_route(common_pb2.ROUTE_HYBRID), max_tokens=8
    )
    assert result.status == common_pb2.TASK_STATUS_OK, result.error.message
    assert result.output.strip()
    assert [t for t, _ in executor.calls].count(task_id) == 1  # asked first, it refused
    [step] = await _steps(agent_dsn, task_id)
    assert step["name"] == MODEL
    assert step["cost_usd"] > 0


async def test_hybrid_stays_local_when_the_local_pool_answers(
    stub: Stub, executor: Any, agent_dsn: str
) -> None:
    task_id, result = await _run(
        stub, "plain", "stay right here", decision=_route(common_pb2.ROUTE_HYBRID)
    )
    assert result.status == common_pb2.TASK_STATUS_OK, result.error.message
    assert result.output == "stay right here "
    [step] = await _steps(agent_dsn, task_id)
    assert (step["name"], step["cost_usd"]) == ("m", 0)
    assert task_id in {t for t, _ in executor.calls}


async def test_provider_errors_are_clear(model_api: str) -> None:
    messages = [("user", "hi")]
    async with provider.Provider(
        base_url=model_api, api_key=EXECUTOR_TOKEN, model="no-such-model", cost_per_1k_tokens=0
    ) as wrong_model:
        with pytest.raises(
            errors.FailedPrecondition, match=r"the model API answered 4\d\d: .*no-such-model"
        ):
            async for _ in wrong_model.generate(
                messages, max_tokens=4, temperature=0, seed=None, timeout=30
            ):
                pass
    closed = f"http://127.0.0.1:{suite.free_port()}/v1"
    async with provider.Provider(
        base_url=closed, api_key="", model=MODEL, cost_per_1k_tokens=0
    ) as nobody:
        with pytest.raises(errors.Unavailable, match="the model API is unavailable"):
            async for _ in nobody.generate(
                messages, max_tokens=4, temperature=0, seed=None, timeout=5
            ):
                pass


async def test_the_provider_without_the_executors_key_is_refused(model_api: str) -> None:
    async with provider.Provider(
        base_url=model_api, api_key="wrong", model=MODEL, cost_per_1k_tokens=0
    ) as api:
        with pytest.raises(errors.AionError, match="401"):
            async for _ in api.generate(
                [("user", "hi")], max_tokens=2, temperature=0, seed=None, timeout=30
            ):
                pass


async def test_provider_streams_the_reply_with_usage_last(model_api: str) -> None:
    async with provider.Provider(
        base_url=model_api, api_key=EXECUTOR_TOKEN, model=MODEL, cost_per_1k_tokens=0
    ) as api:
        chunks = [
            c
            async for c in api.generate(
                [("user", "Count to three.")], max_tokens=6, temperature=0, seed=1, timeout=60
            )
        ]
    assert "".join(c.text for c in chunks).strip()
    assert chunks[-1].final
    assert 0 < chunks[-1].completion_tokens <= 6
    assert not any(c.final for c in chunks[:-1])
