"""Registering Ready Agents with the agent service, and deregistering deleted ones.

``request`` is pure: what the agent service is told about an Agent (its model,
instructions, tools, privacy, knowledge bases, pool, and the gRPC address of
its executor Service, whose DNS name resolves to every ready executor pod; the
agent service spreads calls over them). ``Registrar`` makes the calls on one channel; it raises
``errors.Unavailable`` while the agent service is down, and the handlers retry.
An Agent's tenant is its ``tenant_label`` label, else its namespace.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aion.api.agent.v1 import agent_pb2, agent_pb2_grpc
from aion.api.v1 import agents_pb2, common_pb2
from aion.core import channels, errors
from aion.core import tls as tls_mod
from aion.operator import render
from aion.operator import spec as spec_mod

PRIVACY = {"local-only": common_pb2.PRIVACY_LOCAL_ONLY,
           "allow-api": common_pb2.PRIVACY_ALLOW_API,
           "hybrid": common_pb2.PRIVACY_HYBRID}
CALL_TIMEOUT_S = 5.0


def tenant(body: Mapping[str, Any], *, label: str) -> str:
    """The Agent's tenant: its ``label`` label when set, else its namespace."""
    meta = body["metadata"]
    return str((meta.get("labels") or {}).get(label) or meta["namespace"])


def executor_target(name: str, namespace: str) -> str:
    """The gRPC address of an Agent's executor Service, as the agent service dials it."""
    return f"{render.executor_name(name)}.{namespace}.svc:{render.EXECUTOR_PORT}"


def request(body: Mapping[str, Any], spec: spec_mod.AgentSpec, *, tenant_name: str,
            pool: str) -> agent_pb2.RegisterAgentRequest:
    """What the agent service is told about a Ready Agent."""
    meta = body["metadata"]
    privacy = PRIVACY[spec.routing.privacy]
    agent = agents_pb2.Agent(
        name=meta["name"],
        description=str((meta.get("annotations") or {}).get("aion.dev/description", "")),
        model=spec.model.name, model_task=spec.model.task, privacy=privacy,
        knowledge_bases=list(spec.knowledge_bases), ready=True, node_pool=pool)
    return agent_pb2.RegisterAgentRequest(
        tenant=tenant_name, agent=agent, instructions=spec.instructions,
        executor_endpoints=[executor_target(meta["name"], meta["namespace"])],
        privacy=privacy, tools=list(spec.tools))


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

    async def deregister(self, *, tenant_name: str, name: str) -> bool:
        """Deregister an Agent; False when the agent service did not have it."""
        with errors.remote("agent"):
            reply = await self._stub.DeregisterAgent(
                agent_pb2.AgentRef(tenant=tenant_name, name=name), timeout=CALL_TIMEOUT_S)
        return bool(reply.deregistered)

    async def close(self) -> None:
        """Close the channel."""
        await self._channel.close()

