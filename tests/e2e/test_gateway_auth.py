"""The gateway's edge against real servers, auth on (no anonymous mode): API keys made with
aionctl and the Keys service, JWTs verified against a JWKS file and a JWKS URL, every public
RPC x role, and rate limits shared by two gateway replicas on one Postgres.

Replica A verifies JWTs with a JWKS file (and HS256 with a secret); replica B with a JWKS
URL served here. Both keep keys and rate limits in the same Postgres database.
"""

from __future__ import annotations

import asyncio
import http.server
import inspect
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import jwt
import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from aion.api.v1 import (
    agents_pb2,
    agents_pb2_grpc,
    keys_pb2,
    keys_pb2_grpc,
    knowledge_pb2,
    knowledge_pb2_grpc,
    tasks_pb2,
    tasks_pb2_grpc,
)
from aion.gateway import db, keys, ratelimit
from aion.infra import devstack
from aion.sdk import AsyncClient, cli

pytestmark = pytest.mark.e2e

AUD, ISS = "aion-edge", "https://issuer.edge.test"
HS_SECRET = "edge-hs256-secret-of-thirty-two-bytes!"
RSA = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC = ec.generate_private_key(ec.SECP256R1())
RSA2 = rsa.generate_private_key(public_exponent=65537, key_size=2048)  # published later
ADMIN = keys.new_key()[0]
# The measured limit: calls/s per tenant, and its burst.
RATE, BURST = 20.0, 20
WINDOW_S = 30.0
TPM = 600  # generated tokens per minute per tenant


def _jwk(key: Any, kid: str, alg: str) -> dict[str, Any]:
    algorithm = jwt.algorithms.RSAAlgorithm if alg == "RS256" else jwt.algorithms.ECAlgorithm
    return {**json.loads(algorithm.to_jwk(key.public_key())), "kid": kid, "alg": alg, "use": "sig"}


class JwksServer:
    """A JWKS URL on a local HTTP server; ``keys`` may change while it serves."""

    def __init__(self) -> None:
        self.keys = [_jwk(RSA, "r1", "RS256"), _jwk(EC, "e1", "ES256")]
        self.fetches = 0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.fetches += 1
                body = json.dumps({"keys": outer.keys}).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/jwks.json"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class Edge:
    """The suite (replica A is its gateway), replica B, and the JWKS URL."""

    def __init__(
        self, suite: devstack.LocalSuite, replica_b: str, jwks: JwksServer, dsn: str
    ) -> None:
        self.suite = suite
        self.a = suite.gateway
        self.b = replica_b
        self.jwks = jwks
        self.dsn = dsn


def _gateway_env(dsn: str, jwks_file: Path) -> dict[str, str]:
    return {
        "AION_GATEWAY_ALLOW_ANONYMOUS": "false",
        "AION_GATEWAY_POSTGRES_DSN": dsn,
        "AION_GATEWAY_API_KEYS": json.dumps(
            [
                {
                    "hash": keys.hash_key(ADMIN),
                    "tenant": "acme",
                    "roles": ["admin"],
                    "name": "bootstrap",
                }
            ]
        ),
        "AION_GATEWAY_JWKS_FILE": str(jwks_file),
        "AION_GATEWAY_JWT_SECRET": HS_SECRET,
        "AION_GATEWAY_JWT_AUDIENCE": AUD,
        "AION_GATEWAY_JWT_ISSUER": ISS,
        "AION_GATEWAY_RATE_PER_S": str(RATE),
        "AION_GATEWAY_RATE_BURST": str(BURST),
        "AION_GATEWAY_KEY_RATE_PER_S": "1000",
        "AION_GATEWAY_KEY_RATE_BURST": "1000",
        "AION_GATEWAY_KEY_CACHE_S": "1",
        "AION_GATEWAY_TOKENS_PER_MINUTE": str(TPM),
        "AION_GATEWAY_AUTH_FAILURES_PER_MIN": "200",
    }


@pytest.fixture(scope="module")
def edge(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Edge]:
    e2e: Any = sys.modules["tests.e2e.conftest"]
    backbone = e2e.Backbone(
        *(request.getfixturevalue(name) for name in inspect.signature(e2e.Backbone).parameters)
    )
    tmp = tmp_path_factory.mktemp("edge")
    jwks_file = tmp / "jwks.json"
    jwks_file.write_text(json.dumps({"keys": [_jwk(RSA, "r1", "RS256"), _jwk(EC, "e1", "ES256")]}))
    jwks = JwksServer()
    replica: subprocess.Popen[bytes] | None = None
    try:
        env = backbone.env()
        dsn = env["AION_AGENT_POSTGRES_DSN"]
        suite = e2e.start_suite(tmp / "suite", {**env, **_gateway_env(dsn, jwks_file)})
        try:
            port, metrics = devstack.free_port(), devstack.free_port()
            b_env = {
                **os.environ,
                **env,
                **_gateway_env(dsn, jwks_file),
                "AION_GATEWAY_PORT": str(port),
                "AION_GATEWAY_METRICS_PORT": str(metrics),
                "AION_GATEWAY_ROUTER_TARGET": suite.services["router"].target,
                "AION_GATEWAY_AGENT_TARGET": suite.services["agent"].target,
                "AION_GATEWAY_KNOWLEDGE_TARGET": suite.services["knowledge"].target,
                **suite.tls_env("gateway"),
            }
            b_env.pop("AION_GATEWAY_JWKS_FILE")
            b_env.pop("AION_GATEWAY_JWT_SECRET")
            b_env.pop("AION_GATEWAY_HTTP_PORT", None)
            b_env["AION_GATEWAY_JWKS_URL"] = jwks.url
            b_env["AION_GATEWAY_JWKS_REFRESH_COOLDOWN_S"] = "1"
            log = tmp / "gateway-b.log"
            with log.open("wb") as out:
                replica = subprocess.Popen(
                    [sys.executable, "-m", "aion.gateway"],
                    env=b_env,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            target = f"127.0.0.1:{port}"
            deadline = time.monotonic() + 60
            while devstack.health_status(target) != "SERVING":
                if replica.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"replica B did not start:\n{log.read_text()[-3000:]}")
                time.sleep(0.2)
            yield Edge(suite, target, jwks, dsn)
        finally:
            if replica is not None:
                replica.terminate()
                replica.wait(timeout=15)
            suite.stop()
    finally:
        jwks.close()
        backbone.drop_all()


# --- helpers ---------------------------------------------------------------------------


def _claims(**kw: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "sub": "alice",
        "tenant": "acme",
        "roles": ["user"],
        "aud": AUD,
        "iss": ISS,
        "exp": int(time.time()) + 600,
    }
    body.update(kw)
    return {k: v for k, v in body.items() if v is not None}


def rs256(kid: str = "r1", key: Any = RSA, **kw: Any) -> str:
    return jwt.encode(_claims(**kw), key, algorithm="RS256", headers={"kid": kid})


def _bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def _key(key: str) -> tuple[tuple[str, str], ...]:
    return (("x-api-key", key),)


async def _status(
    target: str, call: Callable[[grpc.aio.Channel, Any], Awaitable[Any]], metadata: Any
) -> grpc.StatusCode:
    """The status of one call; a RESOURCE_EXHAUSTED from the tenant's limit is waited out
    (the table is about roles, not rates)."""
    async with grpc.aio.insecure_channel(target) as chan:
        for _ in range(20):
            try:
                await call(chan, metadata)
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                    await asyncio.sleep(0.5)
                    continue
                return exc.code()
            return grpc.StatusCode.OK
    raise AssertionError("rate limited 20 times in a row")


# --- API keys --------------------------------------------------------------------------


def _aionctl(target: str, key: str, *args: str) -> Any:
    return CliRunner().invoke(
        cli.main, ["--target", target, "--api-key", key, *args], catch_exceptions=False
    )


async def test_api_keys_are_created_used_listed_and_revoked_with_aionctl(edge: Edge) -> None:
    made = _aionctl(edge.a, ADMIN, "keys", "create", "--role", "viewer", "--name", "ci", "--json")
    assert made.exit_code == 0, made.output
    created = json.loads(made.stdout)
    secret, key_id = created["secret"], created["id"]
    assert secret.startswith(f"aion_{key_id}_")
    assert created["tenant"] == "acme"
    assert created["roles"] == ["viewer"]

    async def list_agents(target: str, key: str) -> grpc.StatusCode:
        return await _status(
            target,
            lambda ch, md: agents_pb2_grpc.AgentsStub(ch).List(
                agents_pb2.ListAgentsRequest(), metadata=md, timeout=10
            ),
            _key(key),
        )

    # It works on both replicas (one database), with its role only.
    assert await list_agents(edge.a, secret) == grpc.StatusCode.OK
    assert await list_agents(edge.b, secret) == grpc.StatusCode.OK
    assert (
        await _status(
            edge.b,
            lambda ch, md: agents_pb2_grpc.AgentsStub(ch).Apply(
                agents_pb2.ApplyAgentsRequest(manifest="x"), metadata=md, timeout=10
            ),
            _key(secret),
        )
        == grpc.StatusCode.PERMISSION_DENIED
    )

    listed = _aionctl(edge.b, ADMIN, "keys", "list", "--json")
    assert listed.exit_code == 0, listed.output
    mine = [k for k in json.loads(listed.stdout) if k["id"] == key_id]
    assert len(mine) == 1
    assert "last_used_at" in mine[0]
    assert "secret" not in mine[0]
    assert secret not in listed.stdout
    # The database holds the hash only.
    import psycopg

    with psycopg.connect(edge.dsn) as conn:
        stored = conn.execute(
            "SELECT hash FROM gateway_api_keys WHERE id = %s", (key_id,)
        ).fetchone()
    assert stored is not None
    assert secret not in stored[0]
    assert keys.verify(secret, stored[0])

    revoked = _aionctl(edge.a, ADMIN, "keys", "revoke", key_id)
    assert revoked.exit_code == 0, revoked.output
    assert await list_agents(edge.a, secret) == grpc.StatusCode.UNAUTHENTICATED
    # Replica B trusted it for key_cache_s (1 s) at most.
    await asyncio.sleep(1.5)
    assert await list_agents(edge.b, secret) == grpc.StatusCode.UNAUTHENTICATED
    assert await list_agents(edge.b, secret[:-1] + "x") == grpc.StatusCode.UNAUTHENTICATED


async def test_keys_are_scoped_to_the_admins_tenant(edge: Edge) -> None:
    other_admin = rs256(tenant="globex", roles=["admin"])
    async with grpc.aio.insecure_channel(edge.a) as chan:
        stub = keys_pb2_grpc.KeysStub(chan)
        made = await stub.Create(
            keys_pb2.CreateKeyRequest(name="g", roles=["user"]),
            metadata=_bearer(other_admin),
            timeout=10,
        )
        assert made.key.tenant == "globex"
        acme = await stub.List(
            keys_pb2.ListKeysRequest(include_revoked=True), metadata=_key(ADMIN), timeout=10
        )
        assert made.key.id not in [k.id for k in acme.keys]
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Revoke(
                keys_pb2.RevokeKeyRequest(id=made.key.id), metadata=_key(ADMIN), timeout=10
            )
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.aio.AioRpcError) as bad:
            await stub.Create(
                keys_pb2.CreateKeyRequest(name="x", roles=["root"]),
                metadata=_key(ADMIN),
                timeout=10,
            )
        assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT


# --- JWTs ------------------------------------------------------------------------------


def _hs256_with_public_key() -> str:
    pem = RSA.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    header = {"alg": "HS256", "typ": "JWT", "kid": "r1"}
    seg = [jwt.utils.base64url_encode(json.dumps(p).encode()) for p in (header, _claims())]
    import hashlib
    import hmac

    sig = hmac.new(pem, seg[0] + b"." + seg[1], hashlib.sha256).digest()
    return b".".join([*seg, jwt.utils.base64url_encode(sig)]).decode()


BAD_TOKENS: dict[str, Callable[[], str]] = {
    "expired": lambda: rs256(exp=int(time.time()) - 30),
    "not yet valid": lambda: rs256(nbf=int(time.time()) + 600),
    "wrong audience": lambda: rs256(aud="billing"),
    "no audience": lambda: rs256(aud=None),
    "wrong issuer": lambda: rs256(iss="https://evil.test"),
    "alg none": lambda: jwt.encode(_claims(), "", algorithm="none"),
    "HS256 signed with the RSA public key": _hs256_with_public_key,
    "unknown key": lambda: rs256(kid="r1", key=RSA2),
    "non-list roles": lambda: rs256(roles="admin"),
    "numeric roles": lambda: rs256(roles=5),
}


@pytest.mark.parametrize("replica", ["a", "b"])
@pytest.mark.parametrize("case", sorted(BAD_TOKENS))
async def test_bad_tokens_are_unauthenticated_on_a_jwks_file_and_url(
    edge: Edge, replica: str, case: str
) -> None:
    target = edge.a if replica == "a" else edge.b
    async with grpc.aio.insecure_channel(target) as chan:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await agents_pb2_grpc.AgentsStub(chan).List(
                agents_pb2.ListAgentsRequest(), metadata=_bearer(BAD_TOKENS[case]()), timeout=10
            )
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED, info.value.details()
    assert info.value.details()


async def test_good_tokens_and_missing_roles(edge: Edge) -> None:
    for target in (edge.a, edge.b):
        for token in (
            rs256(roles=["viewer"]),
            jwt.encode(_claims(roles=["viewer"]), EC, algorithm="ES256", headers={"kid": "e1"}),
        ):
            assert (
                await _status(
                    target,
                    lambda ch, md: agents_pb2_grpc.AgentsStub(ch).List(
                        agents_pb2.ListAgentsRequest(), metadata=md, timeout=10
                    ),
                    _bearer(token),
                )
                == grpc.StatusCode.OK
            )
        # No roles claim: no role at all.
        assert (
            await _status(
                target,
                lambda ch, md: agents_pb2_grpc.AgentsStub(ch).List(
                    agents_pb2.ListAgentsRequest(), metadata=md, timeout=10
                ),
                _bearer(rs256(roles=None)),
            )
            == grpc.StatusCode.PERMISSION_DENIED
        )
    # HS256 only where a secret is configured (replica A).
    hs = jwt.encode(_claims(roles=["viewer"]), HS_SECRET, algorithm="HS256")
    assert await _status(
        edge.a,
        lambda ch, md: agents_pb2_grpc.AgentsStub(ch).List(
            agents_pb2.ListAgentsRequest(), metadata=md, timeout=10
        ),
        _bearer(hs),
    ) == (grpc.StatusCode.OK)
    assert await _status(
        edge.b,
        lambda ch, md: agents_pb2_grpc.AgentsStub(ch).List(
            agents_pb2.ListAgentsRequest(), metadata=md, timeout=10
        ),
        _bearer(hs),
    ) == (grpc.StatusCode.UNAUTHENTICATED)


async def test_a_key_published_later_is_fetched_on_its_first_token(edge: Edge) -> None:
    token = rs256(kid="r2", key=RSA2, roles=["viewer"])

    async def status() -> grpc.StatusCode:
        return await _status(
            edge.b,
            lambda ch, md: agents_pb2_grpc.AgentsStub(ch).List(
                agents_pb2.ListAgentsRequest(), metadata=md, timeout=10
            ),
            _bearer(token),
        )

    assert await status() == grpc.StatusCode.UNAUTHENTICATED
    edge.jwks.keys.append(_jwk(RSA2, "r2", "RS256"))
    await asyncio.sleep(1.2)  # the refetch cooldown (AION_GATEWAY_JWKS_REFRESH_COOLDOWN_S)
    before = edge.jwks.fetches
    assert await status() == grpc.StatusCode.OK
    assert edge.jwks.fetches == before + 1
    assert await status() == grpc.StatusCode.OK
    assert edge.jwks.fetches == before + 1  # cached


# --- every public RPC x role -----------------------------------------------------------

_TASK_ID = "00000000-0000-4000-8000-000000000000"


async def _stream(ch: grpc.aio.Channel, md: Any) -> None:
    call = tasks_pb2_grpc.TasksStub(ch).Stream(
        tasks_pb2.StreamRequest(task=tasks_pb2.TaskSpec(agent="no-such-agent", input="hi")),
        metadata=md,
        timeout=10,
    )
    async for _ in call:
        pass


async def _ingest_stream(ch: grpc.aio.Channel, md: Any) -> None:
    await knowledge_pb2_grpc.KnowledgeStub(ch).IngestStream(
        iter([knowledge_pb2.IngestChunk()]), metadata=md, timeout=10
    )


RPCS: dict[str, tuple[str, Callable[[grpc.aio.Channel, Any], Awaitable[Any]]]] = {
    "Tasks.Submit": (
        "user",
        lambda ch, md: tasks_pb2_grpc.TasksStub(ch).Submit(
            tasks_pb2.SubmitRequest(task=tasks_pb2.TaskSpec(agent="no-such-agent", input="hi")),
            metadata=md,
            timeout=10,
        ),
    ),
    "Tasks.Stream": ("user", _stream),
    "Tasks.Get": (
        "viewer",
        lambda ch, md: tasks_pb2_grpc.TasksStub(ch).Get(
            tasks_pb2.GetTaskRequest(task_id=_TASK_ID), metadata=md, timeout=10
        ),
    ),
    "Tasks.Cancel": (
        "user",
        lambda ch, md: tasks_pb2_grpc.TasksStub(ch).Cancel(
            tasks_pb2.CancelTaskRequest(task_id=_TASK_ID), metadata=md, timeout=10
        ),
    ),
    "Agents.List": (
        "viewer",
        lambda ch, md: agents_pb2_grpc.AgentsStub(ch).List(
            agents_pb2.ListAgentsRequest(), metadata=md, timeout=10
        ),
    ),
    "Agents.Get": (
        "viewer",
        lambda ch, md: agents_pb2_grpc.AgentsStub(ch).Get(
            agents_pb2.GetAgentRequest(name="no-such-agent"), metadata=md, timeout=10
        ),
    ),
    "Agents.Apply": (
        "admin",
        lambda ch, md: agents_pb2_grpc.AgentsStub(ch).Apply(
            agents_pb2.ApplyAgentsRequest(manifest="kind: Pod\n"), metadata=md, timeout=10
        ),
    ),
    "Knowledge.Ingest": (
        "admin",
        lambda ch, md: knowledge_pb2_grpc.KnowledgeStub(ch).Ingest(
            knowledge_pb2.IngestRequest(), metadata=md, timeout=10
        ),
    ),
    "Knowledge.IngestStream": ("admin", _ingest_stream),
    "Knowledge.Search": (
        "viewer",
        lambda ch, md: knowledge_pb2_grpc.KnowledgeStub(ch).Search(
            knowledge_pb2.SearchRequest(knowledge_base="none", query="x"), metadata=md, timeout=10
        ),
    ),
    "Knowledge.Delete": (
        "admin",
        lambda ch, md: knowledge_pb2_grpc.KnowledgeStub(ch).Delete(
            knowledge_pb2.DeleteDocumentRequest(knowledge_base="none", document_id="d"),
            metadata=md,
            timeout=10,
        ),
    ),
    "Knowledge.GetDocument": (
        "viewer",
        lambda ch, md: knowledge_pb2_grpc.KnowledgeStub(ch).GetDocument(
            knowledge_pb2.GetDocumentRequest(knowledge_base="none", document_id="d"),
            metadata=md,
            timeout=10,
        ),
    ),
    "Knowledge.ListDocuments": (
        "viewer",
        lambda ch, md: knowledge_pb2_grpc.KnowledgeStub(ch).ListDocuments(
            knowledge_pb2.ListDocumentsRequest(), metadata=md, timeout=10
        ),
    ),
    "Knowledge.Embed": (
        "user",
        lambda ch, md: knowledge_pb2_grpc.KnowledgeStub(ch).Embed(
            knowledge_pb2.EmbedRequest(texts=["x"]), metadata=md, timeout=10
        ),
    ),
    "Keys.Create": (
        "admin",
        lambda ch, md: keys_pb2_grpc.KeysStub(ch).Create(
            keys_pb2.CreateKeyRequest(name="table", roles=[]), metadata=md, timeout=10
        ),
    ),
    "Keys.List": (
        "admin",
        lambda ch, md: keys_pb2_grpc.KeysStub(ch).List(
            keys_pb2.ListKeysRequest(), metadata=md, timeout=10
        ),
    ),
    "Keys.Revoke": (
        "admin",
        lambda ch, md: keys_pb2_grpc.KeysStub(ch).Revoke(
            keys_pb2.RevokeKeyRequest(id="000000000000"), metadata=md, timeout=10
        ),
    ),
}
_RANK = {"none": -1, "viewer": 0, "user": 1, "admin": 2}
_AUTH_REFUSALS = {
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.UNKNOWN,
}


@pytest.mark.parametrize("role", ["none", "viewer", "user", "admin"])
@pytest.mark.parametrize("rpc", sorted(RPCS))
async def test_every_public_rpc_by_role(edge: Edge, rpc: str, role: str) -> None:
    needed, call = RPCS[rpc]
    roles = None if role == "none" else [role]
    # Its own tenant, so the table does not spend the other tests' rate limit.
    token = rs256(tenant="table", sub=f"table-{role}", roles=roles)
    code = await _status(edge.a, call, _bearer(token))
    if _RANK[role] >= _RANK[needed]:
        assert code not in _AUTH_REFUSALS, (rpc, role, code)
    else:
        assert code == grpc.StatusCode.PERMISSION_DENIED, (rpc, role, code)


@pytest.mark.parametrize("rpc", sorted(RPCS))
async def test_every_public_rpc_without_credentials_is_unauthenticated(
    edge: Edge, rpc: str
) -> None:
    assert await _status(edge.b, RPCS[rpc][1], ()) == grpc.StatusCode.UNAUTHENTICATED


# --- bad input -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        (
            tasks_pb2.TaskSpec(agent="demo", input="hi", idempotency_key="k" * 257),
            "task.idempotency_key",
        ),
        (
            tasks_pb2.TaskSpec(agent="demo", input="hi", options=tasks_pb2.TaskOptions(privacy=7)),  # type: ignore[arg-type]
            "task.options.privacy",
        ),
    ],
)
async def test_bad_task_options_are_invalid_argument(
    edge: Edge, spec: tasks_pb2.TaskSpec, field: str
) -> None:
    async with grpc.aio.insecure_channel(edge.a) as chan:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await tasks_pb2_grpc.TasksStub(chan).Submit(
                tasks_pb2.SubmitRequest(task=spec), metadata=_key(ADMIN), timeout=10
            )
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in (info.value.details() or "")


# --- rate limits across two replicas ---------------------------------------------------


async def test_open_streams_are_shared_by_replicas_through_postgres(edge: Edge) -> None:
    policy = ratelimit.Policy(tenant_streams=2, key_streams=2)
    async with db.pool(edge.dsn) as pool_a, db.pool(edge.dsn) as pool_b:
        a = ratelimit.RateLimiter(ratelimit.PostgresBuckets(pool_a), policy)
        b = ratelimit.RateLimiter(ratelimit.PostgresBuckets(pool_b), policy)
        async with a.stream("streams", None, 60), b.stream("streams", None, 60):
            with pytest.raises(Exception, match="too many open streams"):
                async with a.stream("streams", None, 60):
                    pass
        async with b.stream("streams", None, 60):  # ended streams free their places
            pass


async def test_the_rate_limit_holds_across_two_replicas(edge: Edge) -> None:
    """Callers on both replicas hammer one tenant for WINDOW_S; the calls accepted must be
    the configured rate x the window + the burst, within 5%."""
    token = rs256(tenant="measured", roles=["viewer"])
    accepted = refused = 0
    other = 0

    async def hammer(target: str, stop: float) -> None:
        nonlocal accepted, refused, other
        async with grpc.aio.insecure_channel(target) as chan:
            stub = agents_pb2_grpc.AgentsStub(chan)
            while time.monotonic() < stop:
                try:
                    await stub.List(
                        agents_pb2.ListAgentsRequest(), metadata=_bearer(token), timeout=10
                    )
                    accepted += 1
                except grpc.aio.AioRpcError as exc:
                    if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                        refused += 1
                        # The answer carries RetryInfo; a real client would wait. Here the
                        # callers keep the limiter busy to measure it under load.
                        await asyncio.sleep(0.01)
                    else:
                        other += 1

    start = time.monotonic()
    stop = start + WINDOW_S
    await asyncio.gather(*(hammer(t, stop) for t in (edge.a, edge.b) for _ in range(4)))
    elapsed = time.monotonic() - start
    expected = BURST + RATE * elapsed
    error = (accepted - expected) / expected
    print(
        f"\nrate limit across 2 replicas: {accepted} accepted, {refused} refused in "
        f"{elapsed:.1f}s; expected {expected:.0f} ({RATE:g}/s + burst {BURST}); "
        f"error {error:+.2%}; {(accepted + refused) / elapsed:.0f} decisions/s"
    )
    assert other == 0
    assert refused > accepted, "the callers must have pushed past the limit"
    assert abs(error) <= 0.05


async def test_a_refusal_carries_retry_info(edge: Edge) -> None:
    from google.rpc import error_details_pb2
    from grpc_status import rpc_status

    token = rs256(tenant="retryinfo", roles=["viewer"])
    async with grpc.aio.insecure_channel(edge.b) as chan:
        stub = agents_pb2_grpc.AgentsStub(chan)

        async def spend_the_burst_and_more() -> None:
            # At once: one after the other, a loaded machine may not outrun the refill.
            await asyncio.gather(
                *(
                    stub.List(agents_pb2.ListAgentsRequest(), metadata=_bearer(token), timeout=10)
                    for _ in range(BURST * 3)
                )
            )

        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await spend_the_burst_and_more()
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    status = rpc_status.from_call(refused.value)
    assert status is not None
    infos = [d for d in status.details if d.Is(error_details_pb2.RetryInfo.DESCRIPTOR)]
    assert len(infos) == 1
    info = error_details_pb2.RetryInfo()
    infos[0].Unpack(info)
    assert 0 < info.retry_delay.ToTimedelta().total_seconds() <= 1 / RATE + 0.01


async def test_an_asynchronous_task_is_charged_its_ceiling_when_accepted(edge: Edge) -> None:
    """Its tokens are not known when Submit answers: its max_tokens are charged then, so a
    tenant cannot queue work past its tokens per minute."""
    import psycopg

    token = rs256(tenant="default", roles=["user"])
    with psycopg.connect(edge.dsn, autocommit=True) as conn:
        # A known level, far from the cap, so that refill cannot hide the charge.
        conn.execute(
            "INSERT INTO gateway_rate_buckets (key, tokens, updated_at) "
            "VALUES ('tpm:default', %s, now()) ON CONFLICT (key) DO UPDATE "
            "SET tokens = EXCLUDED.tokens, updated_at = now()",
            (TPM / 2,),
        )
        async with grpc.aio.insecure_channel(edge.b) as chan:
            accepted = await tasks_pb2_grpc.TasksStub(chan).Submit(
                tasks_pb2.SubmitRequest(
                    task=tasks_pb2.TaskSpec(
                        agent="demo", input="Say hi.", options=tasks_pb2.TaskOptions(max_tokens=100)
                    ),
                    asynchronous=True,
                ),
                metadata=_bearer(token),
                timeout=30,
            )
        row = conn.execute(
            "SELECT tokens, extract(epoch FROM now() - updated_at) "
            "FROM gateway_rate_buckets WHERE key = 'tpm:default'"
        ).fetchone()
        # Full again for the tests after this one (a missing bucket starts full).
        conn.execute("DELETE FROM gateway_rate_buckets WHERE key = 'tpm:default'")
    assert accepted.task_id
    assert row is not None
    level, age_s = float(row[0]), float(row[1])
    # TPM/2 - 100, plus what refilled between the reset and the charge.
    assert TPM / 2 - 100 <= level <= TPM / 2 - 100 + TPM / 60 * (30 + age_s), level


async def test_streamed_tokens_are_charged_and_a_tenant_in_debt_gets_no_task(edge: Edge) -> None:
    import psycopg

    # The demo agent belongs to tenant "default".
    token = rs256(tenant="default", roles=["user"])
    async with AsyncClient(edge.a, token=token, api_key="") as client:
        events = [e async for e in client.stream("demo", "Say hi.", max_tokens=8)]
    assert events[-1].WhichOneof("event") == "done", events[-1]
    streamed = sum(1 for e in events if e.WhichOneof("event") == "token")
    charged = max(streamed, events[-1].done.result.usage.tokens)
    assert charged > 0
    with psycopg.connect(edge.dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT tokens FROM gateway_rate_buckets WHERE key = %s", ("tpm:default",)
        ).fetchone()
        assert row is not None
        # The bucket started full (TPM) and refills at TPM/60 a second, capped at TPM.
        assert TPM - charged <= row[0] < TPM - charged + 1 + TPM / 60 * 120
        # Put the tenant in debt, as a burst of streams would.
        conn.execute(
            "SELECT gateway_spend('tpm:default', %s, %s, %s)", (TPM / 60, float(TPM), 10.0 * TPM)
        )
    async with grpc.aio.insecure_channel(edge.b) as chan:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await tasks_pb2_grpc.TasksStub(chan).Submit(
                tasks_pb2.SubmitRequest(task=tasks_pb2.TaskSpec(agent="demo", input="hi")),
                metadata=_bearer(token),
                timeout=10,
            )
        # Reading needs no tokens.
        await agents_pb2_grpc.AgentsStub(chan).List(
            agents_pb2.ListAgentsRequest(), metadata=_bearer(token), timeout=10
        )
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "tokens per minute" in (info.value.details() or "")


# Last: it leaves this test process's address refused on both replicas for a while.
async def test_failed_authentications_are_limited_per_peer_across_replicas(edge: Edge) -> None:
    """Bad keys alternate between the two replicas: the failures of one address count in one
    shared bucket, so the two together admit the limit once, not twice."""
    codes = []
    start = time.monotonic()
    async with (
        grpc.aio.insecure_channel(edge.a) as chan_a,
        grpc.aio.insecure_channel(edge.b) as chan_b,
    ):
        stubs = [agents_pb2_grpc.AgentsStub(chan_a), agents_pb2_grpc.AgentsStub(chan_b)]
        for i in range(1000):
            try:
                await stubs[i % 2].List(
                    agents_pb2.ListAgentsRequest(), metadata=_key("aion_nope"), timeout=10
                )
            except grpc.aio.AioRpcError as exc:
                codes.append(exc.code())
                if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                    break
        elapsed = time.monotonic() - start
        # Refused before its credentials are looked at, a good key too, on either replica.
        refused = []
        for stub in stubs:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.List(agents_pb2.ListAgentsRequest(), metadata=_key(ADMIN), timeout=10)
            refused.append(info.value)
    assert codes[-1] == grpc.StatusCode.RESOURCE_EXHAUSTED
    # 200 a minute for both replicas together (the bucket starts full), plus what refilled
    # while the test ran.
    assert 200 <= codes.count(grpc.StatusCode.UNAUTHENTICATED) <= 201 + elapsed * 200 / 60
    for error in refused:
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error
        assert "failed authentications" in (error.details() or "")
