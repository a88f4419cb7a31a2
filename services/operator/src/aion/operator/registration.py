"""Registering Ready Agents with the agent service, and deregistering deleted ones.

``request`` is pure: what the agent service is told about an Agent (its model,
instructions, description, maxTokens, tools, privacy, knowledge bases, pool, the gRPC address of
its executor Service, whose DNS name resolves to every ready executor pod (the
agent service spreads calls over them), and the credentials of its tool servers
that ``credentials`` read from its Secrets). ``Registrar`` makes the calls on one channel; it raises
``errors.Unavailable`` while the agent service is down, and the handlers retry.

The platform team, not the Agent, decides tenancy: an Agent's tenant is the one its
namespace maps to (``tenant_of``: the operator's ``tenants`` setting, else the
Namespace's ``tenant_label`` label, which only cluster admins can set, else the
namespace's name). An Agent's own ``tenant_label`` label is only a claim: one
naming another tenant is refused (``mismatch``). Each registration names its owner,
``"<namespace>/<uid>"`` of the Agent, so the agent service refuses a registration or
deregistration of the same agent from another namespace.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from aion.api.agent.v1 import agent_pb2, agent_pb2_grpc
from aion.api.v1 import agents_pb2
from aion.core import agentspec, channels, errors
from aion.core import privacy as privacy_mod
from aion.core import tls as tls_mod
from aion.operator import conventions, render

CALL_TIMEOUT_S = 5.0


def tenant_of(
    namespace: str, *, labels: Mapping[str, str], tenants: Mapping[str, str], label: str
) -> str:
    """The tenant the platform maps ``namespace`` (whose labels are ``labels``) to."""
    return tenants.get(namespace) or labels.get(label) or namespace


def mismatch(body: Mapping[str, Any], tenant: str, *, label: str) -> str | None:
    """Why the Agent may not register, when its ``label`` claims another tenant than
    ``tenant`` (its namespace's); None when it claims none or that one."""
    meta = body["metadata"]
    claimed = (meta.get("labels") or {}).get(label)
    if not claimed or claimed == tenant:
        return None
    return (
        f"the Agent's label {label}={claimed} claims tenant {claimed}, but namespace "
        f"{meta['namespace']} belongs to tenant {tenant}; remove the label (or set it "
        f"to {tenant}), or ask a cluster admin to map the namespace to {claimed} "
        f"(Namespace label {label}, or the chart's operator.tenants)"
    )


def owner(body: Mapping[str, Any]) -> str:
    """Who registers the Agent, as the agent service records it: ``<namespace>/<uid>``."""
    meta = body["metadata"]
    return f"{meta['namespace']}/{meta['uid']}"


def executor_target(name: str, namespace: str) -> str:
    """The gRPC address of an Agent's executor Service, as the agent service dials it."""
    return f"{render.executor_name(name)}.{namespace}.svc:{render.EXECUTOR_PORT}"


def request(
    body: Mapping[str, Any],
    spec: agentspec.AgentSpec,
    *,
    tenant_name: str,
    pool: str,
    credentials: Sequence[agent_pb2.ToolCredential] = (),
) -> agent_pb2.RegisterAgentRequest:
    """What the agent service is told about a Ready Agent (``credentials``: its tool
    servers', as ``credentials.resolve`` read them)."""
    meta = body["metadata"]
    privacy = privacy_mod.to_pb(spec.routing.privacy)
    # spec.description, else the older aion.dev/description annotation.
    description = spec.description or str(
        (meta.get("annotations") or {}).get(conventions.DESCRIPTION_ANNOTATION, "")
    )
    agent = agents_pb2.Agent(
        name=meta["name"],
        description=description,
        model=spec.model.name,
        model_task=spec.model.task,
        privacy=privacy,
        knowledge_bases=list(spec.knowledge_bases),
        ready=True,
        node_pool=pool,
        max_tokens=spec.max_tokens or 0,
        # Recorded for the router (the routing issue consumes them); unset stays unset.
        budget_usd_per_task=spec.routing.budget_usd_per_task,
        p95_target_ms=spec.routing.p95_target_ms,
    )
    return agent_pb2.RegisterAgentRequest(
        tenant=tenant_name,
        agent=agent,
        instructions=spec.instructions,
        executor_endpoints=[executor_target(meta["name"], meta["namespace"])],
        privacy=privacy,
        tools=list(spec.tools),
        owner=owner(body),
        tool_credentials=list(credentials),
    )


class Registrar:
    """The agent service's RegisterAgent and DeregisterAgent, on a channel to ``target``."""

    def __init__(self, target: str, *, tls: tls_mod.Tls) -> None:
        self.target = target
        self._channel = channels.connect(target, tls=tls, peer="agent")
        self._stub = agent_pb2_grpc.AgentServiceStub(self._channel)

    async def register(self, req: agent_pb2.RegisterAgentRequest) -> None:
        """Register (or re-register) an Agent; ``errors.Unavailable`` while the service is down."""
        with errors.remote("agent"):
            await self._stub.RegisterAgent(req, timeout=CALL_TIMEOUT_S)

    async def deregister(self, *, tenant_name: str, name: str, owner: str) -> bool:
        """Deregister an Agent; False when the agent service did not have it, and
        ``errors.FailedPrecondition`` when another owner registered it."""
        with errors.remote("agent"):
            reply = await self._stub.DeregisterAgent(
                agent_pb2.DeregisterAgentRequest(tenant=tenant_name, name=name, owner=owner),
                timeout=CALL_TIMEOUT_S,
            )
        return bool(reply.deregistered)

    async def close(self) -> None:
        """Close the channel."""
        await self._channel.close()
