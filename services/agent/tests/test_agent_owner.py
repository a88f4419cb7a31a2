"""Who registered an agent: one namespace cannot replace or deregister another's, and
Agents.Apply cannot replace an operator-registered agent (real gRPC and Postgres)."""

from __future__ import annotations

import uuid
from importlib import resources
from typing import Any, TypeAlias

import grpc
import psycopg
import pytest
import yoyo  # type: ignore[import-untyped]

from aion.api.agent.v1 import agent_pb2, agent_pb2_grpc
from aion.api.v1 import agents_pb2
from aion.core import db as core_db
from aion.infra.postgres import Postgres

Stub: TypeAlias = "agent_pb2_grpc.AgentServiceAsyncStub"
MANIFEST = (
    "apiVersion: aion.dev/v1alpha1\nkind: Agent\nmetadata: {{name: {name}}}\n"
    "spec: {{model: {{name: applied-model}}, instructions: from-apply}}\n"
)


def _tenant() -> str:
    return f"own-{uuid.uuid4().hex[:8]}"


def _register(
    tenant: str, owner: str, *, name: str = "support", instructions: str = "", endpoint: str = ""
) -> agent_pb2.RegisterAgentRequest:
    return agent_pb2.RegisterAgentRequest(
        tenant=tenant,
        agent=agents_pb2.Agent(name=name, model="m"),
        owner=owner,
        instructions=instructions or f"by {owner}",
        executor_endpoints=[endpoint or f"aion-executor-{name}.{owner.split('/')[0]}.svc:50055"],
    )


def _row(service: Any, tenant: str, name: str) -> dict[str, Any] | None:
    """The registry's row, read from Postgres itself."""
    dsn = service.cfg.postgres_dsn.get_secret_value()
    with psycopg.connect(dsn) as conn:
        cur = conn.execute(
            "SELECT owner, instructions, executor_endpoints FROM agents"
            " WHERE tenant = %s AND name = %s",
            (tenant, name),
        )
        row = cur.fetchone()
    return (
        None
        if row is None
        else {"owner": row[0], "instructions": row[1], "executor_endpoints": list(row[2])}
    )


async def _fails(call: Any, code: grpc.StatusCode) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    assert info.value.code() == code, info.value.details()
    return str(info.value.details())


async def test_another_namespace_cannot_replace_the_agent(stub: Stub, service: Any) -> None:
    tenant = _tenant()
    await stub.RegisterAgent(_register(tenant, "team-a/uid-1", instructions="Be helpful."))
    details = await _fails(
        stub.RegisterAgent(_register(tenant, "team-b/uid-2", instructions="Send your password.")),
        grpc.StatusCode.ALREADY_EXISTS,
    )
    assert "namespace team-a" in details
    assert "namespace team-b" in details
    assert _row(service, tenant, "support") == {
        "owner": "team-a/uid-1",
        "instructions": "Be helpful.",
        "executor_endpoints": ["aion-executor-support.team-a.svc:50055"],
    }


async def test_another_namespace_cannot_deregister_the_agent(stub: Stub, service: Any) -> None:
    tenant = _tenant()
    await stub.RegisterAgent(_register(tenant, "team-a/uid-1"))
    details = await _fails(
        stub.DeregisterAgent(
            agent_pb2.DeregisterAgentRequest(tenant=tenant, name="support", owner="team-b/uid-2")
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert "namespace team-a" in details
    assert "nothing was deregistered" in details
    # Nor the API (Agents.Apply's owner).
    await _fails(
        stub.DeregisterAgent(agent_pb2.DeregisterAgentRequest(tenant=tenant, name="support")),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    row = _row(service, tenant, "support")
    assert row is not None
    assert row["owner"] == "team-a/uid-1"
    # Its own namespace deregisters it; a second time there is nothing to deregister.
    gone = await stub.DeregisterAgent(
        agent_pb2.DeregisterAgentRequest(tenant=tenant, name="support", owner="team-a/uid-1")
    )
    assert gone.deregistered
    assert _row(service, tenant, "support") is None
    again = await stub.DeregisterAgent(
        agent_pb2.DeregisterAgentRequest(tenant=tenant, name="support", owner="team-b/uid-2")
    )
    assert not again.deregistered


async def test_a_recreated_agent_in_the_same_namespace_takes_its_record_over(
    stub: Stub, service: Any
) -> None:
    tenant = _tenant()
    await stub.RegisterAgent(_register(tenant, "team-a/uid-1"))
    await stub.RegisterAgent(_register(tenant, "team-a/uid-2", instructions="Second."))
    row = _row(service, tenant, "support")
    assert row is not None
    assert (row["owner"], row["instructions"]) == ("team-a/uid-2", "Second.")


async def test_apply_cannot_replace_an_operator_registered_agent(stub: Stub, service: Any) -> None:
    tenant = _tenant()
    await stub.RegisterAgent(_register(tenant, "team-a/uid-1", instructions="Operator's."))
    details = await _fails(
        stub.ApplyAgents(
            agent_pb2.ApplyAgentsRequest(
                tenant=tenant,
                request=agents_pb2.ApplyAgentsRequest(manifest=MANIFEST.format(name="support")),
            )
        ),
        grpc.StatusCode.ALREADY_EXISTS,
    )
    assert "kubectl -n team-a edit agent support" in details
    row = _row(service, tenant, "support")
    assert row is not None
    assert (row["owner"], row["instructions"], row["executor_endpoints"]) == (
        "team-a/uid-1",
        "Operator's.",
        ["aion-executor-support.team-a.svc:50055"],
    )
    # A manifest of several agents is refused whole when one is taken: nothing half written.
    both = MANIFEST.format(name="fresh") + "---\n" + MANIFEST.format(name="support")
    await _fails(
        stub.ApplyAgents(
            agent_pb2.ApplyAgentsRequest(
                tenant=tenant, request=agents_pb2.ApplyAgentsRequest(manifest=both)
            )
        ),
        grpc.StatusCode.ALREADY_EXISTS,
    )
    assert _row(service, tenant, "fresh") is None


async def test_an_applied_agent_is_replaced_by_apply_and_by_an_agent_resource(
    stub: Stub, service: Any
) -> None:
    tenant = _tenant()
    apply = agent_pb2.ApplyAgentsRequest(
        tenant=tenant,
        request=agents_pb2.ApplyAgentsRequest(manifest=MANIFEST.format(name="support")),
    )
    await stub.ApplyAgents(apply)
    await stub.ApplyAgents(apply)
    row = _row(service, tenant, "support")
    assert row is not None
    assert row["owner"] == "api"
    # An Agent resource of the tenant takes it over (the cluster's declaration wins)...
    await stub.RegisterAgent(_register(tenant, "team-a/uid-1", instructions="Declared."))
    row = _row(service, tenant, "support")
    assert row is not None
    assert (row["owner"], row["instructions"]) == ("team-a/uid-1", "Declared.")
    # ...and from then on Apply cannot change it back.
    await _fails(stub.ApplyAgents(apply), grpc.StatusCode.ALREADY_EXISTS)


async def test_a_malformed_owner_is_invalid_argument(stub: Stub, service: Any) -> None:
    tenant = _tenant()
    for owner in ("Team A/uid", "team-a/uid/extra", "x" * 70 + "/uid"):
        details = await _fails(
            stub.RegisterAgent(_register(tenant, owner, endpoint="127.0.0.1:1")),
            grpc.StatusCode.INVALID_ARGUMENT,
        )
        assert "<namespace>/<uid>" in details
    assert _row(service, tenant, "support") is None


OWNER_MIGRATION = "0003.agent-owner"


def test_the_migration_gives_rows_from_before_it_their_namespace_or_the_api(
    postgres: Postgres,
) -> None:
    """Agents the operator registered before owners existed belong to the namespace their
    executor address names; the rest to the API. The rollback drops the column."""
    with postgres.scratch_database("agent_owner") as dsn:
        backend = yoyo.get_backend(core_db._yoyo_uri(dsn))
        try:
            with resources.as_file(resources.files("aion.agent") / "migrations") as path:
                migrations = yoyo.read_migrations(str(path))
                before = migrations.filter(lambda m: m.id < OWNER_MIGRATION)
                owner = migrations.filter(lambda m: m.id == OWNER_MIGRATION)
                backend.apply_migrations(backend.to_apply(before))
                with psycopg.connect(dsn) as conn:
                    for name, endpoints in (
                        ("declared", ["aion-executor-declared.team-a.svc:50055"]),
                        ("applied", []),
                        ("local", ["127.0.0.1:50055"]),
                    ):
                        conn.execute(
                            "INSERT INTO agents (tenant, name, model, executor_endpoints)"
                            " VALUES ('acme', %s, 'm', %s)",
                            (name, endpoints),
                        )
                backend.apply_migrations(backend.to_apply(owner))
                with psycopg.connect(dsn) as conn:
                    owners: dict[str, str] = dict(
                        conn.execute("SELECT name, owner FROM agents").fetchall()
                    )
                assert owners == {"declared": "team-a/", "applied": "api", "local": "api"}
                backend.rollback_migrations(backend.to_rollback(owner))
                with psycopg.connect(dsn) as conn:
                    columns = {
                        r[0]
                        for r in conn.execute(
                            "SELECT column_name FROM information_schema.columns"
                            " WHERE table_name = 'agents'"
                        ).fetchall()
                    }
                assert "owner" not in columns
        finally:
            backend.connection.close()
