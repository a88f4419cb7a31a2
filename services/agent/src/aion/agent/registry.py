"""The agent registry: who may be called, with what model, and where it runs.

``AgentRegistry`` is the seam; ``PostgresRegistry`` keeps agents in the
``agents`` table, and ``CachedRegistry`` keeps the ones tasks look up in memory,
dropping each as Postgres announces its change. ``parse_manifest`` reads Agent
resources (the CRD's YAML, ``aion.dev/v1alpha1``, validated by ``aion.core.agentspec``
as the operator validates them) so a machine without a cluster registers agents the way the
operator does (``aionctl apply -f``, or a file read at start).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import psycopg
import yaml
from psycopg.types import json as pg_json

from aion.agent import db, model
from aion.core import agentspec, errors, privacy

log = logging.getLogger(__name__)


class AgentRegistry(Protocol):
    """Where agents are registered and looked up, per tenant."""

    async def put(self, agent: model.AgentRecord) -> model.AgentRecord:
        """Register or replace an agent; AlreadyExists when ``owned_elsewhere``."""
        ...

    async def put_all(self, agents: Sequence[model.AgentRecord]) -> list[model.AgentRecord]:
        """Register or replace several agents: all of them, or none."""
        ...

    async def get(self, tenant: str, name: str) -> model.AgentRecord:
        """The agent, or NotFound."""
        ...

    async def list(self, tenant: str) -> list[model.AgentRecord]:
        """The tenant's agents, by name."""
        ...

    async def delete(self, tenant: str, name: str, *, owner: str) -> bool:
        """Deregister; False when it was not registered, FailedPrecondition when
        ``owner`` did not register it."""
        ...


def _not_found(name: str) -> errors.NotFound:
    return errors.NotFound(
        f"agent '{name}' not found; `aionctl agents` lists the agents you can call"
    )


def owner_namespace(owner: str) -> str | None:
    """The namespace of an Agent-resource owner (``"<namespace>/<uid>"``); None for the API."""
    namespace, slash, _ = owner.partition("/")
    return namespace if slash else None


def owned_elsewhere(current: str, new: str) -> bool:
    """Whether a registration by ``new`` may not replace the agent ``current`` registered.

    An agent registered for an Agent resource is changed only from that resource's
    namespace (a re-created Agent of the same name there takes it over); one
    registered through the API is replaced by another Apply or by an Agent resource
    (the cluster's declaration wins). The same rule is ``_MAY_REPLACE`` in SQL.
    """
    if owner_namespace(current) is None:
        return False
    return owner_namespace(new) != owner_namespace(current)


def _owner_words(owner: str) -> str:
    namespace = owner_namespace(owner)
    if namespace is None:
        return "through the API (aionctl apply)"
    return f"by the Agent resource in namespace {namespace}"


def _taken(agent: model.AgentRecord, current: str) -> errors.AlreadyExists:
    namespace = owner_namespace(agent.owner)
    if namespace is None:
        fix = (
            f"change it with `kubectl -n {owner_namespace(current)} edit agent "
            f"{agent.name}`, or apply yours under another name"
        )
    else:
        fix = (
            f"the Agent in namespace {namespace} cannot replace it: rename it, or delete "
            "the other one first"
        )
    return errors.AlreadyExists(
        f"agent '{agent.name}' is already registered {_owner_words(current)}; {fix}", field="name"
    )


async def _upsert(conn: psycopg.AsyncConnection[Any], agent: model.AgentRecord) -> None:
    for _ in range(3):  # the other owner's row may go between the two statements
        cur = await conn.execute(
            "INSERT INTO agents (tenant, name, model, model_task, instructions, description,"
            " privacy, knowledge_bases, executor_endpoints, max_tokens, node_pool, tools,"
            " max_steps, owner, budget_usd_per_task, p95_target_ms, tool_credentials)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
            " ON CONFLICT (tenant, name) DO UPDATE SET model = EXCLUDED.model,"
            " model_task = EXCLUDED.model_task, instructions = EXCLUDED.instructions,"
            " description = EXCLUDED.description, privacy = EXCLUDED.privacy,"
            " knowledge_bases = EXCLUDED.knowledge_bases,"
            " executor_endpoints = EXCLUDED.executor_endpoints,"
            " max_tokens = EXCLUDED.max_tokens, node_pool = EXCLUDED.node_pool,"
            " tools = EXCLUDED.tools, max_steps = EXCLUDED.max_steps,"
            " owner = EXCLUDED.owner, budget_usd_per_task = EXCLUDED.budget_usd_per_task,"
            " p95_target_ms = EXCLUDED.p95_target_ms,"
            " tool_credentials = EXCLUDED.tool_credentials, updated_at = now()"
            f" WHERE {_MAY_REPLACE} RETURNING owner",
            (
                agent.tenant,
                agent.name,
                agent.model,
                agent.model_task,
                agent.instructions,
                agent.description,
                agent.privacy.value,
                list(agent.knowledge_bases),
                list(agent.executor_endpoints),
                agent.max_tokens,
                agent.node_pool,
                pg_json.Jsonb(list(agent.tools)),
                agent.max_steps,
                agent.owner,
                agent.budget_usd_per_task,
                agent.p95_target_ms,
                pg_json.Jsonb([dataclasses.asdict(c) for c in agent.tool_credentials]),
            ),
        )
        if await cur.fetchone() is not None:
            return
        cur = await conn.execute(
            "SELECT owner FROM agents WHERE tenant = %s AND name = %s", (agent.tenant, agent.name)
        )
        row = await cur.fetchone()
        if row is not None:  # another owner's
            raise _taken(agent, str(row["owner"]))
    raise errors.Unavailable(
        f"agent '{agent.name}' kept changing while it was registered; retry", retry_after_s=1.0
    )


# SQL twin of ``owned_elsewhere``: may EXCLUDED (the new registration) replace agents?
_MAY_REPLACE = (
    "(position('/' in agents.owner) = 0 OR"
    " (position('/' in EXCLUDED.owner) > 0 AND"
    "  split_part(agents.owner, '/', 1) = split_part(EXCLUDED.owner, '/', 1)))"
)
# May %(owner)s deregister the row: its own registration (same namespace for an Agent
# resource, the API for the API's), never another's.
_MAY_DELETE = (
    "(owner = %(owner)s OR (position('/' in owner) > 0 AND"
    " position('/' in %(owner)s) > 0 AND"
    " split_part(owner, '/', 1) = split_part(%(owner)s, '/', 1)))"
)


def _record(r: dict[str, Any]) -> model.AgentRecord:
    return model.AgentRecord(
        tenant=r["tenant"],
        name=r["name"],
        model=r["model"],
        model_task=r["model_task"],
        instructions=r["instructions"],
        description=r["description"],
        privacy=privacy.Privacy(r["privacy"]),
        knowledge_bases=tuple(r["knowledge_bases"]),
        executor_endpoints=tuple(r["executor_endpoints"]),
        max_tokens=r["max_tokens"],
        node_pool=r["node_pool"],
        tools=tuple(r["tools"]),
        max_steps=r["max_steps"],
        owner=r["owner"],
        budget_usd_per_task=r["budget_usd_per_task"],
        p95_target_ms=r["p95_target_ms"],
        tool_credentials=tuple(
            model.ToolCredential(url=c["url"], header=c["header"], value=c["value"])
            for c in r["tool_credentials"]
        ),
    )


class PostgresRegistry:
    """Agents in the ``agents`` table. Agents registered without executor endpoints
    get ``default_endpoints`` (the one executor of a machine without a cluster)."""

    def __init__(self, pool: db.Pool, *, default_endpoints: tuple[str, ...] = ()) -> None:
        self._pool = pool
        self._default = default_endpoints

    async def put(self, agent: model.AgentRecord) -> model.AgentRecord:
        """Register or replace an agent; AlreadyExists, changing nothing, when another
        owner registered it (``owned_elsewhere``)."""
        [done] = await self.put_all([agent])
        return done

    async def put_all(self, agents: Sequence[model.AgentRecord]) -> list[model.AgentRecord]:
        """Register or replace agents in one transaction: all of them, or (AlreadyExists
        when one was registered by another owner) none."""
        done = [
            with_endpoints(a, self._default) if not a.executor_endpoints and self._default else a
            for a in agents
        ]
        async with self._pool.connection() as conn:
            for agent in done:
                await _upsert(conn, agent)
        return done

    async def get(self, tenant: str, name: str) -> model.AgentRecord:
        """The agent, or NotFound naming it."""
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                "SELECT * FROM agents WHERE tenant = %s AND name = %s", (tenant, name)
            )
            row = await cur.fetchone()
        if row is None:
            raise _not_found(name)
        return _record(row)

    async def list(self, tenant: str) -> list[model.AgentRecord]:
        """The tenant's agents, by name."""
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                "SELECT * FROM agents WHERE tenant = %s ORDER BY name", (tenant,)
            )
            return [_record(r) for r in await cur.fetchall()]

    async def delete(self, tenant: str, name: str, *, owner: str) -> bool:
        """Deregister what ``owner`` registered; False when nothing was registered,
        FailedPrecondition, deleting nothing, when another owner registered it."""
        args = {"tenant": tenant, "name": name, "owner": owner}
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                "DELETE FROM agents WHERE tenant = %(tenant)s AND name = %(name)s"
                f" AND {_MAY_DELETE}",
                args,
            )
            if cur.rowcount > 0:
                return True
            cur = await conn.execute(
                "SELECT owner FROM agents WHERE tenant = %(tenant)s AND name = %(name)s", args
            )
            row = await cur.fetchone()
        if row is None:
            return False
        raise errors.FailedPrecondition(
            f"agent '{name}' was registered {_owner_words(str(row['owner']))}, not "
            f"{_owner_words(owner).removeprefix('by ')}; nothing was deregistered"
        )


class CachedRegistry:
    """``PostgresRegistry`` with the agents tasks look up (``get``) kept in memory, so
    that a task costs no registry round trip. Every change of an agent, by any replica
    or by hand, NOTIFYs ``db.AGENTS_CHANNEL`` when it commits (migration 0009's trigger),
    and this replica drops the agent when it hears it (``changed``): a change is seen
    here as soon as its notification arrives, and at once when made here. Nothing is
    kept while notifications cannot be heard (``live``): then every lookup reads."""

    def __init__(self, stored: PostgresRegistry, *, max_kept: int = 4096) -> None:
        self._stored = stored
        self._max = max_kept
        self._kept: dict[tuple[str, str], model.AgentRecord] = {}
        # Counts the drops: a read that raced one (it may have read the old row) is
        # not kept.
        self._drops = 0
        self._live = False

    def listen(self, listener: db.Listener) -> None:
        """Hear agents' changes on ``listener`` (the replica's notification connection)."""
        listener.on(db.AGENTS_CHANNEL, self.changed, on_connect=self.heard, on_lost=self.lost)

    def changed(self, payload: str) -> None:
        """The agent ``payload`` names (``[tenant, name]``) changed: drop it."""
        try:
            tenant, name = json.loads(payload)
        except (ValueError, TypeError):
            log.warning("agent change notification not understood: %r", payload[:200])
            self._drop()  # whichever it was
            return
        self._drop((str(tenant), str(name)))

    def heard(self) -> None:
        """Notifications come (again): keep records from now on; what was kept before
        may have changed unheard."""
        self._drop()
        self._live = True

    def lost(self) -> None:
        """Notifications stopped: keep nothing until they come again."""
        self._live = False
        self._drop()

    def _drop(self, *keys: tuple[str, str]) -> None:
        """Drop these agents (all without ``keys``); a read in flight is not kept."""
        if keys:
            for key in keys:
                self._kept.pop(key, None)
        else:
            self._kept.clear()
        self._drops += 1

    async def get(self, tenant: str, name: str) -> model.AgentRecord:
        """The agent (kept, else read), or NotFound naming it."""
        key = (tenant, name)
        kept = self._kept.get(key)
        if kept is not None:
            return kept
        drops = self._drops
        agent = await self._stored.get(tenant, name)
        if self._live and drops == self._drops:
            if len(self._kept) >= self._max:
                del self._kept[next(iter(self._kept))]  # the longest kept
            self._kept[key] = agent
        return agent

    async def put(self, agent: model.AgentRecord) -> model.AgentRecord:
        """``PostgresRegistry.put``, seen here at once."""
        try:
            return await self._stored.put(agent)
        finally:
            self._drop((agent.tenant, agent.name))

    async def put_all(self, agents: Sequence[model.AgentRecord]) -> list[model.AgentRecord]:
        """``PostgresRegistry.put_all``, seen here at once."""
        try:
            return await self._stored.put_all(agents)
        finally:
            self._drop(*[(a.tenant, a.name) for a in agents])

    async def list(self, tenant: str) -> list[model.AgentRecord]:
        """``PostgresRegistry.list`` (always read)."""
        return await self._stored.list(tenant)

    async def delete(self, tenant: str, name: str, *, owner: str) -> bool:
        """``PostgresRegistry.delete``, seen here at once."""
        try:
            return await self._stored.delete(tenant, name, owner=owner)
        finally:
            self._drop((tenant, name))


MAX_MANIFEST_BYTES = 256 * 1024
MAX_DOCUMENTS = 64
_DEFAULT_MAX_TOKENS = 256  # an agent's maxTokens when its manifest names none


class _NoAliasLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing anchors and aliases before anything is built: an
    alias is a shared reference, and nested ones expand exponentially (a "billion laughs")."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()  # type: ignore[no-untyped-call]
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            raise yaml.composer.ComposerError(
                None,
                None,
                "YAML anchors and aliases (&name, *name) are not accepted in a "
                "manifest; write each value out",
                event.start_mark,
            )
        return super().compose_node(parent, index)


def parse_manifest(
    text: str, *, tenant: str, executor_target: str | None, max_tokens: int = 2048
) -> list[model.AgentRecord]:
    """The Agent resources of a YAML manifest (one or more documents); InvalidArgument
    naming the problem when it is not one. It is refused before anything is built when it
    is over ``MAX_MANIFEST_BYTES`` or uses YAML anchors or aliases; ``max_tokens`` caps
    each agent's ``spec.maxTokens`` (the service's own limit).

    An Agent with ``spec.toolCredentials`` is refused: its credentials live in Kubernetes
    Secrets that only the operator reads, and a manifest can carry no credential of its
    own (the spec has no field for a value), so a secret never travels through the
    gateway, Agents.Apply or the agents file."""
    size = len(text.encode())
    if size > MAX_MANIFEST_BYTES:
        raise errors.InvalidArgument(
            f"the manifest is {size} bytes; the limit is {MAX_MANIFEST_BYTES} "
            "(apply fewer agents at a time)",
            field="manifest",
        )
    try:
        docs = []
        for d in yaml.load_all(text, Loader=_NoAliasLoader):  # a SafeLoader
            if d:
                docs.append(d)
            if len(docs) > MAX_DOCUMENTS:
                raise errors.InvalidArgument(
                    f"the manifest holds more than {MAX_DOCUMENTS} documents; apply fewer "
                    "agents at a time",
                    field="manifest",
                )
    except yaml.YAMLError as exc:
        raise errors.InvalidArgument(
            f"not a valid Agent manifest: {str(exc)[:500]}", field="manifest"
        ) from None
    resources = []
    for i, d in enumerate(docs):
        try:  # the operator's model: a manifest means what kubectl apply would mean
            resources.append(agentspec.parse_resource(d))
        except errors.InvalidArgument as exc:
            raise errors.InvalidArgument(
                f"not a valid Agent manifest (document {i + 1}): {exc.message}", field="manifest"
            ) from None
    if not resources:
        raise errors.InvalidArgument("the manifest holds no Agent", field="manifest")
    for r in resources:
        if r.spec.tool_credentials:
            raise errors.InvalidArgument(
                f"agent '{r.metadata.name}': spec.toolCredentials is read from Kubernetes "
                "Secrets by the operator, and a manifest applied here has no Secrets to read "
                "from; apply this Agent to the cluster (kubectl apply), or leave "
                "spec.toolCredentials out (its MCP and A2A servers are then called without "
                "credentials)",
                field="manifest",
            )
        if r.spec.max_tokens is not None and r.spec.max_tokens > max_tokens:
            raise errors.InvalidArgument(
                f"agent '{r.metadata.name}': spec.maxTokens is {r.spec.max_tokens}; the limit "
                f"is {max_tokens}",
                field="manifest",
            )
    endpoints = (executor_target,) if executor_target else ()
    return [
        model.AgentRecord(
            tenant=tenant,
            name=r.metadata.name,
            model=r.spec.model.name,
            model_task=r.spec.model.task,
            instructions=r.spec.instructions,
            description=r.spec.description,
            privacy=privacy.Privacy(r.spec.routing.privacy),
            knowledge_bases=tuple(r.spec.knowledge_bases),
            executor_endpoints=endpoints,
            max_tokens=r.spec.max_tokens or min(_DEFAULT_MAX_TOKENS, max_tokens),
            node_pool="local",
            tools=tuple(r.spec.tools),
            budget_usd_per_task=r.spec.routing.budget_usd_per_task,
            p95_target_ms=r.spec.routing.p95_target_ms,
        )
        for r in resources
    ]


def load_file(path: Path, *, tenant: str, executor_target: str | None) -> list[model.AgentRecord]:
    """The Agent resources in a YAML file (one or more documents)."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise errors.InvalidArgument(f"cannot load agents from {path}: {exc}") from exc
    try:
        return parse_manifest(text, tenant=tenant, executor_target=executor_target)
    except errors.InvalidArgument as exc:
        raise errors.InvalidArgument(f"cannot load agents from {path}: {exc.message}") from exc


def with_endpoints(agent: model.AgentRecord, endpoints: tuple[str, ...]) -> model.AgentRecord:
    """A copy of ``agent`` served by ``endpoints``."""
    return dataclasses.replace(agent, executor_endpoints=endpoints)


async def register_file(
    agents: AgentRegistry, path: Path, *, tenant: str, executor_target: str | None
) -> list[model.AgentRecord]:
    """Register the Agent resources of a YAML file (``AION_AGENT_AGENTS_FILE``) at start."""
    registered = []
    for agent in load_file(path, tenant=tenant, executor_target=executor_target):
        registered.append(await agents.put(agent))
        log.info("registered agent from file", extra={"agent": agent.name})
    return registered
