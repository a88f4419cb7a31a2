"""Scripted peers for the gateway's HTTP tests: real gRPC servers standing in for the router
and the agent service (no model), and the gateway's HTTP app over them."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import math
from collections.abc import AsyncIterator
from typing import Any

import grpc
import openai
import pydantic

from aion.api.agent.v1 import agent_pb2, agent_pb2_grpc
from aion.api.knowledge.v1 import knowledge_pb2 as internal_knowledge_pb2
from aion.api.knowledge.v1 import knowledge_pb2_grpc as internal_knowledge_pb2_grpc
from aion.api.router.v1 import router_pb2, router_pb2_grpc
from aion.api.v1 import agents_pb2, common_pb2, knowledge_pb2, tasks_pb2
from aion.core import errors, http_server, server
from aion.gateway import (
    a2a_api,
    auth,
    http_app,
    keys,
    mcp_server,
    openai_api,
    openapi,
    ratelimit,
    servicers,
    settings,
)

KEY, VIEWER, SECRET = "k-user", "k-viewer", "jwt-secret-for-tests-32-bytes-long"
AUDIENCE, ISSUER = "aion", "https://issuer.test"


class FakeAgents(agent_pb2_grpc.AgentServiceServicer):
    """The agent service, scripted by the task's input; it records what it was asked."""

    def __init__(self) -> None:
        self.runs: list[agent_pb2.RunRequest] = []
        self.by_key: dict[str, str] = {}
        self.tasks: dict[str, common_pb2.TaskResult] = {}

    def _result(self, run: agent_pb2.RunRequest, **kw: Any) -> common_pb2.TaskResult:
        task_id = f"t{len(self.runs)}"
        if run.task.idempotency_key:
            task_id = self.by_key.setdefault(run.task.idempotency_key, task_id)
        result = common_pb2.TaskResult(
            task_id=task_id,
            agent=run.task.agent,
            status=common_pb2.TASK_STATUS_OK,
            output="Hello there",
            engine=run.decision.engine,
            usage=common_pb2.Usage(prompt_tokens=5, completion_tokens=2, tokens=7),
            **kw,
        )
        result.created_at.GetCurrentTime()
        self.tasks[task_id] = result
        return result

    def _task(self, ref: agent_pb2.TaskRef) -> common_pb2.TaskResult:
        if ref.tenant != "acme" or ref.task_id not in self.tasks:
            raise errors.NotFound(f"task '{ref.task_id}' not found")
        return self.tasks[ref.task_id]

    async def GetTask(self, request: agent_pb2.TaskRef, context: Any) -> common_pb2.TaskResult:
        return self._task(request)

    async def CancelTask(self, request: agent_pb2.TaskRef, context: Any) -> common_pb2.TaskResult:
        task = self._task(request)  # as the agent service: an ended task is returned as it is
        if task.status == common_pb2.TASK_STATUS_QUEUED:
            task.status = common_pb2.TASK_STATUS_CANCELED
        return task

    async def Follow(
        self, request: agent_pb2.TaskRef, context: Any
    ) -> AsyncIterator[tasks_pb2.TaskEvent]:
        task = self._task(request)
        yield tasks_pb2.TaskEvent(task_id=task.task_id, seq=1, started=tasks_pb2.TaskStarted())
        yield tasks_pb2.TaskEvent(
            task_id=task.task_id, seq=2, token=tasks_pb2.Token(text=task.output)
        )
        yield tasks_pb2.TaskEvent(task_id=task.task_id, seq=3, done=tasks_pb2.Done(result=task))

    async def GetAgent(self, request: agent_pb2.AgentRef, context: Any) -> agents_pb2.Agent:
        if request.tenant != "acme" or request.name != "demo":
            raise errors.NotFound(f"agent '{request.name}' not found")
        return agents_pb2.Agent(
            name="demo", model="m", ready=True, privacy=common_pb2.PRIVACY_HYBRID
        )

    async def ListAgents(
        self, request: agent_pb2.ListAgentsRequest, context: Any
    ) -> agents_pb2.ListAgentsResponse:
        agents = [agents_pb2.Agent(name="demo", model="m")] if request.tenant == "acme" else []
        return agents_pb2.ListAgentsResponse(agents=agents)

    async def Submit(self, request: agent_pb2.RunRequest, context: Any) -> tasks_pb2.SubmitResponse:
        self.runs.append(request)
        if request.task.input == "time out":
            result = self._result(
                request,
                error=common_pb2.TaskError(
                    code="DEADLINE_EXCEEDED",
                    message="the task ran past its deadline",
                    retriable=True,
                ),
            )
            result.status = common_pb2.TASK_STATUS_TIMEOUT
        elif request.asynchronous:
            result = self._result(request)
            result.output = ""
            result.status = common_pb2.TASK_STATUS_QUEUED
        else:
            result = self._result(request)
        return tasks_pb2.SubmitResponse(task_id=result.task_id, result=result)

    async def Run(
        self, request: agent_pb2.RunRequest, context: Any
    ) -> AsyncIterator[tasks_pb2.TaskEvent]:
        self.runs.append(request)
        result = self._result(request)
        yield tasks_pb2.TaskEvent(
            task_id=result.task_id,
            seq=1,
            started=tasks_pb2.TaskStarted(engine=request.decision.engine),
        )
        for i, piece in enumerate(["Hello", " there"]):
            yield tasks_pb2.TaskEvent(
                task_id=result.task_id, seq=2 + i, token=tasks_pb2.Token(text=piece)
            )
        if request.task.input == "break":
            result.status = common_pb2.TASK_STATUS_ERROR
            result.error.CopyFrom(
                common_pb2.TaskError(code="UNAVAILABLE", message="the executor went away")
            )
            yield tasks_pb2.TaskEvent(
                task_id=result.task_id, seq=4, error=tasks_pb2.ErrorEvent(result=result)
            )
            return
        yield tasks_pb2.TaskEvent(task_id=result.task_id, seq=4, done=tasks_pb2.Done(result=result))


EMBEDDING_MODEL, DIMENSIONS = "all-minilm-l6-v2", 8


def fake_vector(text: str) -> list[float]:
    """A unit vector of ``DIMENSIONS`` that only ``text`` gets."""
    digest = hashlib.sha256(text.encode()).digest()
    raw = [b - 127.5 for b in digest[:DIMENSIONS]]
    norm = math.sqrt(sum(v * v for v in raw))
    return [v / norm for v in raw]


class FakeKnowledge(internal_knowledge_pb2_grpc.KnowledgeServiceServicer):
    """One passage in the knowledge base "docs" of tenant acme; it records the searches and
    embeds as the knowledge service does (its checks, a vector per text, a token per word)."""

    def __init__(self) -> None:
        self.searches: list[internal_knowledge_pb2.SearchRequest] = []
        self.embeds: list[internal_knowledge_pb2.EmbedRequest] = []

    async def Embed(
        self, request: internal_knowledge_pb2.EmbedRequest, context: Any
    ) -> knowledge_pb2.EmbedResponse:
        self.embeds.append(request)
        req = request.request
        if req.model and req.model.casefold() != EMBEDDING_MODEL:
            raise errors.InvalidArgument(
                f"model {req.model!r} is not served; the embedding model is {EMBEDDING_MODEL!r}",
                field="model",
            )
        if not req.texts:
            raise errors.InvalidArgument("texts must hold at least one text", field="texts")
        for i, text in enumerate(req.texts):
            if not text.strip():
                raise errors.InvalidArgument(f"texts[{i}] is empty", field=f"texts[{i}]")
        return knowledge_pb2.EmbedResponse(
            embeddings=[knowledge_pb2.Embedding(values=fake_vector(t)) for t in req.texts],
            model=EMBEDDING_MODEL,
            dimensions=DIMENSIONS,
            prompt_tokens=sum(len(t.split()) + 2 for t in req.texts),
        )

    async def Search(
        self, request: internal_knowledge_pb2.SearchRequest, context: Any
    ) -> knowledge_pb2.SearchResponse:
        self.searches.append(request)
        if request.tenant != "acme" or request.request.knowledge_base != "docs":
            raise errors.NotFound(f"knowledge base '{request.request.knowledge_base}' not found")
        return knowledge_pb2.SearchResponse(
            hits=[
                knowledge_pb2.SearchHit(
                    document_id="k8s.md",
                    chunk_index=0,
                    text="Kubernetes schedules pods.",
                    score=0.9,
                )
            ]
        )


class FakeRouter(router_pb2_grpc.RouterServicer):
    """Decides local, and records the request."""

    def __init__(self) -> None:
        self.asked: list[router_pb2.DecideRequest] = []

    async def Decide(self, request: router_pb2.DecideRequest, context: Any) -> router_pb2.Decision:
        self.asked.append(request)
        return router_pb2.Decision(
            engine=common_pb2.Engine(
                route=common_pb2.ROUTE_LOCAL, chosen_by="test", reason="scripted", model="m"
            )
        )


class Gateway:
    """The HTTP app of a gateway whose peers are the fakes."""

    def __init__(
        self, url: str, agents: FakeAgents, router: FakeRouter, knowledge: FakeKnowledge
    ) -> None:
        self.url = url
        self.agents = agents
        self.router = router
        self.knowledge = knowledge
        self.clients: list[openai.AsyncOpenAI] = []

    def client(self, key: str = KEY) -> openai.AsyncOpenAI:
        """An openai client authenticated with ``key``, closed with the gateway."""
        self.clients.append(
            openai.AsyncOpenAI(base_url=self.url + "/v1", api_key=key, max_retries=0)
        )
        return self.clients[-1]


@contextlib.asynccontextmanager
async def gateway(
    *, rate: float = 100.0, burst: int = 100, tokens_per_minute: int = 200_000
) -> AsyncIterator[Gateway]:
    """The HTTP surfaces (OpenAI, A2A, MCP, OpenAPI) of a gateway over the fakes, on a free
    port."""
    cfg = settings.GatewaySettings(
        api_keys=[
            settings.ApiKey(hash=keys.hash_key(KEY), tenant="acme", roles=["user"]),
            settings.ApiKey(hash=keys.hash_key(VIEWER), tenant="acme", roles=["viewer"]),
        ],
        jwt_secret=pydantic.SecretStr(SECRET),
        jwt_audience=AUDIENCE,
        jwt_issuer=ISSUER,
        http_max_body_bytes=4096,
    )
    agents, router = FakeAgents(), FakeRouter()  # type: ignore[abstract]
    knowledge = FakeKnowledge()  # type: ignore[abstract]
    backend = server.GrpcServer(name="fakes", host="127.0.0.1", port=0, grace_s=1)
    backend.add(agent_pb2_grpc.add_AgentServiceServicer_to_server, agents, "agents")
    backend.add(router_pb2_grpc.add_RouterServicer_to_server, router, "router")
    backend.add(
        internal_knowledge_pb2_grpc.add_KnowledgeServiceServicer_to_server, knowledge, "knowledge"
    )
    async with backend, grpc.aio.insecure_channel(backend.address) as chan:
        upstreams = servicers.Upstreams.over(router=chan, agent=chan, knowledge=chan)
        guard = servicers.Guard(
            authenticator=auth.Authenticator(cfg),
            limiter=ratelimit.RateLimiter(
                ratelimit.MemoryBuckets(),
                ratelimit.Policy(
                    tenant_rate=rate, tenant_burst=burst, tokens_per_minute=tokens_per_minute
                ),
            ),
        )
        tasks = servicers.TasksServicer(guard=guard, upstreams=upstreams)
        agent_list = servicers.AgentsServicer(guard=guard, upstreams=upstreams)
        knowledge_api = servicers.KnowledgeServicer(guard=guard, upstreams=upstreams)
        api = openai_api.OpenAIApi(
            tasks=tasks,
            agents=agent_list,
            knowledge=knowledge_api,
            timeout_s=30,
            max_body_bytes=cfg.http_max_body_bytes,
        )
        a2a = a2a_api.A2AApi(
            guard=guard,
            tasks=tasks,
            agents=agent_list,
            timeout_s=30,
            max_body_bytes=cfg.http_max_body_bytes,
        )
        mcp = mcp_server.McpApi(
            guard=guard, tasks=tasks, agents=agent_list, knowledge=knowledge_api, timeout_s=30
        )
        app = http_app.build([*api.routes, *a2a.routes, *mcp.routes, openapi.route()])
        async with (
            mcp.running(),
            http_server.HttpServer(app, name="http", host="127.0.0.1", port=0) as http,
        ):
            serving = asyncio.create_task(http.serve())
            running = Gateway(http.url, agents, router, knowledge)
            try:
                yield running
            finally:
                for client in running.clients:
                    await client.close()
                http.shutdown()
                await serving
