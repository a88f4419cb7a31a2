"""Tools an agent may call, each described by the JSON schema of its arguments.

A model asks for a tool by replying with one JSON object,
``{"tool": NAME, "arguments": {...}}``; any other reply is its final answer.
A reply that starts like JSON but is not a valid call, or arguments that do
not match a built-in tool's schema, end the task with INVALID_ARGUMENT naming
why. Tools of MCP servers (``mcp:<url>``, see ``mcp_tools``) check their own
arguments against the schema the server lists, and their failures are an
``Outcome`` with an ``error`` the model sees, not the end of the task.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Awaitable, Callable
from typing import Any

import pydantic

from aion.core import errors

KNOWLEDGE_SEARCH = "knowledge_search"
AGENT_PREFIX = "agent:"
MCP_PREFIX = "mcp:"


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What a tool returned, with what it cost (a called agent's tokens); ``error`` says
    why it failed, for the model to see."""

    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    error: str = ""


@dataclasses.dataclass(frozen=True)
class Tool:
    """A callable tool: its name for the model, what it does, its arguments' model (or,
    for a tool that checks its own arguments, their JSON schema)."""

    name: str
    description: str
    arguments: type[pydantic.BaseModel] | None
    call: Callable[[Any], Awaitable[Outcome]]
    input_schema: dict[str, Any] | None = None

    def schema(self) -> dict[str, Any]:
        """The JSON schema of the arguments."""
        if self.arguments is None:
            return self.input_schema or {"type": "object"}
        return self.arguments.model_json_schema()


class SearchArgs(pydantic.BaseModel):
    """Arguments of knowledge_search."""

    model_config = pydantic.ConfigDict(extra="forbid")
    query: str = pydantic.Field(min_length=1, description="what to look for")
    knowledge_base: str | None = pydantic.Field(
        default=None, description="one of the agent's knowledge bases; all of them if unset"
    )
    top_k: int = pydantic.Field(default=4, ge=1, le=20)


class AgentArgs(pydantic.BaseModel):
    """Arguments of a call to another agent."""

    model_config = pydantic.ConfigDict(extra="forbid")
    input: str = pydantic.Field(min_length=1, description="the task for the other agent")


class Call(pydantic.BaseModel):
    """A tool call as the model writes it."""

    model_config = pydantic.ConfigDict(extra="forbid")
    tool: str = pydantic.Field(min_length=1)
    arguments: dict[str, Any] = pydantic.Field(default_factory=dict)


def _short(exc: pydantic.ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or 'reply'}: {e['msg']}" for e in exc.errors()[:3]
    )


def parse_call(reply: str) -> Call | None:
    """The tool call ``reply`` makes, or None when it is a final answer."""
    text = reply.strip()
    if text.startswith("```"):
        text = text.strip("`").removeprefix("json").strip()
    if not text.startswith("{"):
        return None
    try:
        return Call.model_validate(json.loads(text))
    except json.JSONDecodeError as exc:
        raise errors.InvalidArgument(
            f"the model's reply is not valid tool JSON ({exc.msg} at character {exc.pos}); "
            'a tool call is one object: {"tool": NAME, "arguments": {...}}',
            field="reply",
        ) from exc
    except pydantic.ValidationError as exc:
        raise errors.InvalidArgument(
            f"the model's reply is not a valid tool call: {_short(exc)}", field="reply"
        ) from exc


def arguments(tool: Tool, raw: dict[str, Any]) -> pydantic.BaseModel | dict[str, Any]:
    """``raw`` checked against the tool's schema (as it is, for a tool that checks them)."""
    if tool.arguments is None:
        return raw
    try:
        return tool.arguments.model_validate(raw)
    except pydantic.ValidationError as exc:
        raise errors.InvalidArgument(
            f"the arguments of tool '{tool.name}' do not match its schema: {_short(exc)}",
            field=f"tools.{tool.name}.arguments",
        ) from exc


def prompt(tools: dict[str, Tool]) -> str:
    """The instructions that tell the model which tools it has and how to call them."""
    lines = [
        "You can call tools. To call one, reply with only one JSON object: "
        '{"tool": "<name>", "arguments": {...}}. When you have the answer, reply with '
        "the answer in plain text instead. Tools:"
    ]
    for tool in tools.values():
        lines.append(
            f"- {tool.name}: {tool.description} Arguments (JSON schema): "
            f"{json.dumps(tool.schema(), separators=(',', ':'))}"
        )
    return "\n".join(lines)
