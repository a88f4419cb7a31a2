"""Internal gRPC against the running suite: mTLS only, each RPC admits only its callers.

For every internal service and every RPC (the table below is the contract, written
here independently of the services' own tables): a call as each identity either
passes the door (any status but PERMISSION_DENIED and UNAUTHENTICATED; the empty
request is then refused on its merits) or is PERMISSION_DENIED naming the caller
and the RPC. A call without a client certificate, or with one from another CA,
never reaches a handler; the plaintext health port answers Health only; an empty
tenant is INVALID_ARGUMENT.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from aion.api.agent.v1 import agent_pb2
from aion.api.knowledge.v1 import knowledge_pb2
from aion.api.router.v1 import router_pb2
from aion.api.v1 import knowledge_pb2 as public_knowledge_pb2
from aion.api.v1 import tasks_pb2
from aion.core import pki, tls
from aion.infra import devstack

pytestmark = pytest.mark.e2e

IDENTITIES = ("gateway", "router", "agent", "knowledge", "executor", "operator")
GATEWAY = frozenset({"gateway"})
# service (suite name) -> (gRPC service, {method: (kind, identities it admits)})
TABLE: dict[str, tuple[str, dict[str, tuple[str, frozenset[str]]]]] = {
    "router": ("aion.router.v1.Router", {"Decide": ("unary", GATEWAY)}),
    "agent": (
        "aion.agent.v1.AgentService",
        {
            "Run": ("stream", GATEWAY),
            "Submit": ("unary", GATEWAY),
            "Follow": ("stream", GATEWAY),
            "GetTask": ("unary", GATEWAY),
            "CancelTask": ("unary", GATEWAY),
            "ListAgents": ("unary", GATEWAY),
            "GetAgent": ("unary", GATEWAY),
            "ApplyAgents": ("unary", GATEWAY),
            "RegisterAgent": ("unary", frozenset({"operator"})),
            "DeregisterAgent": ("unary", frozenset({"operator"})),
        },
    ),
    "knowledge": (
        "aion.knowledge.v1.KnowledgeService",
        {
            "Ingest": ("unary", GATEWAY),
            "IngestStream": ("client_stream", GATEWAY),
            "Delete": ("unary", GATEWAY),
            "GetDocument": ("unary", GATEWAY),
            "ListDocuments": ("unary", GATEWAY),
            "Embed": ("unary", GATEWAY),
            "Search": ("unary", frozenset({"gateway", "agent"})),
        },
    ),
    "executor": (
        "aion.executor.v1.Executor",
        {
            "Generate": ("stream", frozenset({"agent"})),
            "Stats": ("unary", frozenset({"agent"})),
            "Embed": ("unary", frozenset({"knowledge", "agent"})),
        },
    ),
}
CASES = [
    (svc, method, identity)
    for svc, (_, methods) in TABLE.items()
    for method in methods
    for identity in IDENTITIES
]


def _material(suite: devstack.LocalSuite, identity: str) -> tls.Tls:
    env = suite.tls_env(identity)
    return tls.Tls.of(
        Path(env["AION_TLS_CA_FILE"]).read_bytes(),
        pki.KeyPair.read(Path(env["AION_TLS_CERT_FILE"]), Path(env["AION_TLS_KEY_FILE"])),
    )


async def _status(
    channel: grpc.aio.Channel,
    path: str,
    kind: str,
    request: bytes = b"",
) -> tuple[grpc.StatusCode, str]:
    """The status and its message of one call with a raw (serialised) request."""
    try:
        if kind == "unary":
            unary: Any = channel.unary_unary(path)
            await unary(request, timeout=30)
        elif kind == "client_stream":
            upload: Any = channel.stream_unary(path)
            await upload(iter([request]), timeout=30)
        else:
            stream: Any = channel.unary_stream(path)
            async for _ in stream(request, timeout=30):
                pass
    except grpc.aio.AioRpcError as exc:
        return exc.code(), str(exc.details())
    return grpc.StatusCode.OK, ""


async def _call(channel: grpc.aio.Channel, path: str, kind: str) -> grpc.StatusCode:
    return (await _status(channel, path, kind))[0]


def _secure(target: str, material: tls.Tls, peer: str) -> grpc.aio.Channel:
    return grpc.aio.secure_channel(
        target, material.channel_credentials(), options=material.channel_options(peer)
    )


@pytest.mark.parametrize(
    ("svc", "method", "identity"), CASES, ids=[f"{s}.{m}<-{i}" for s, m, i in CASES]
)
async def test_each_rpc_admits_only_its_callers(
    suite: devstack.LocalSuite, svc: str, method: str, identity: str
) -> None:
    service, methods = TABLE[svc]
    kind, admitted = methods[method]
    target = suite.services[svc].target
    peer = suite.services[svc].identity
    async with _secure(target, _material(suite, identity), peer) as channel:
        code, message = await _status(channel, f"/{service}/{method}", kind)
    if identity in admitted:
        assert code not in (
            grpc.StatusCode.PERMISSION_DENIED,
            grpc.StatusCode.UNAUTHENTICATED,
            grpc.StatusCode.UNAVAILABLE,
            grpc.StatusCode.INTERNAL,
        ), code
    else:
        assert code == grpc.StatusCode.PERMISSION_DENIED, code
        assert identity in message, message
        assert method in message, message


@pytest.mark.parametrize("svc", list(TABLE))
async def test_no_client_certificate_and_a_foreign_ca_are_refused(
    suite: devstack.LocalSuite, svc: str
) -> None:
    service, methods = TABLE[svc]
    method, (kind, admitted) = next(iter(methods.items()))
    caller = sorted(admitted)[0]
    real = _material(suite, caller)
    target, peer = suite.services[svc].target, suite.services[svc].identity
    anonymous = grpc.ssl_channel_credentials(root_certificates=real.ca_pem)
    async with grpc.aio.secure_channel(
        target, anonymous, options=real.channel_options(peer)
    ) as channel:
        assert await _call(channel, f"/{service}/{method}", kind) == grpc.StatusCode.UNAVAILABLE
    # The right identity, from another CA (trusting the real one, so only the server decides).
    forged = tls.Tls(ca_pem=real.ca_pem, pair=pki.issue(pki.new_ca(), caller), identity=caller)
    async with _secure(target, forged, peer) as channel:
        assert await _call(channel, f"/{service}/{method}", kind) == grpc.StatusCode.UNAVAILABLE
    async with grpc.aio.insecure_channel(target) as channel:
        assert await _call(channel, f"/{service}/{method}", kind) == grpc.StatusCode.UNAVAILABLE
    # The control: the same call with the real certificate passes the door.
    async with _secure(target, real, peer) as channel:
        assert await _call(channel, f"/{service}/{method}", kind) not in (
            grpc.StatusCode.UNAVAILABLE,
            grpc.StatusCode.PERMISSION_DENIED,
            grpc.StatusCode.UNAUTHENTICATED,
        )


@pytest.mark.parametrize("svc", list(TABLE))
async def test_the_health_port_answers_health_only(suite: devstack.LocalSuite, svc: str) -> None:
    service, methods = TABLE[svc]
    async with grpc.aio.insecure_channel(suite.services[svc].health_target) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=10
        )
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        for method, (kind, _) in methods.items():
            code = await _call(channel, f"/{service}/{method}", kind)
            assert code == grpc.StatusCode.UNAUTHENTICATED, (method, code)
        reflection = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
        assert await _call(channel, reflection, "unary") == grpc.StatusCode.UNAUTHENTICATED


TENANTLESS = [
    ("router", "Decide", "gateway", router_pb2.DecideRequest(agent="demo")),
    (
        "agent",
        "Submit",
        "gateway",
        agent_pb2.RunRequest(task=tasks_pb2.TaskSpec(agent="demo", input="hi")),
    ),
    ("agent", "GetTask", "gateway", agent_pb2.TaskRef(task_id="t")),
    ("agent", "CancelTask", "gateway", agent_pb2.TaskRef(task_id="t")),
    ("agent", "ListAgents", "gateway", agent_pb2.ListAgentsRequest()),
    ("agent", "GetAgent", "gateway", agent_pb2.AgentRef(name="demo")),
    ("agent", "DeregisterAgent", "operator", agent_pb2.AgentRef(name="demo")),
    (
        "knowledge",
        "Search",
        "agent",
        knowledge_pb2.SearchRequest(
            request=public_knowledge_pb2.SearchRequest(knowledge_base="kb", query="q")
        ),
    ),
    (
        "knowledge",
        "ListDocuments",
        "gateway",
        knowledge_pb2.ListDocumentsRequest(
            request=public_knowledge_pb2.ListDocumentsRequest(knowledge_base="kb")
        ),
    ),
]


@pytest.mark.parametrize(
    ("svc", "method", "identity", "request_"),
    TENANTLESS,
    ids=[f"{s}.{m}" for s, m, _, _ in TENANTLESS],
)
async def test_an_empty_tenant_is_invalid_argument(
    suite: devstack.LocalSuite, svc: str, method: str, identity: str, request_: Any
) -> None:
    service, _ = TABLE[svc]
    target, peer = suite.services[svc].target, suite.services[svc].identity
    async with _secure(target, _material(suite, identity), peer) as channel:
        call: Any = channel.unary_unary(f"/{service}/{method}")
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call(request_.SerializeToString(), timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value
    assert "tenant is required" in str(info.value.details())
