"""External A2A agents as tools: ``a2a:<url>`` in an Agent's ``spec.tools``.

``<url>`` is where the agent's card is served (``<url>/.well-known/agent-card.json``);
the ``a2a-sdk`` client reads it and sends the model's ``input`` as one message
(A2A 1.0, whichever binding the card offers first, without streaming). The
answer is the reply message's text, or the text of the task's artifacts (its
status message when it has none). A card that cannot be read, a call that
fails or takes longer than ``timeout_s``, a task that does not complete and
bad arguments are the call's ``Outcome.error``, for the model to see.

A server named in the Agent's ``spec.toolCredentials`` gets its credential as an
HTTP header (``headers``) on each request to the origin of ``<url>`` (scheme, host,
port), and on no request elsewhere, wherever its card points.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Generator, Mapping
from typing import Any

import httpx
import pydantic
from a2a.client import client as a2a_client
from a2a.client import client_factory
from a2a.types import a2a_pb2 as a2a

from aion.agent import tools

PREFIX = "a2a:"


class OriginHeaders(httpx.Auth):
    """Adds ``headers`` to the requests to ``url``'s origin, and to no other."""

    def __init__(self, url: str, headers: Mapping[str, str]) -> None:
        self._origin = _origin(httpx.URL(url))
        self._headers = dict(headers)

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        if _origin(request.url) == self._origin:
            request.headers.update(self._headers)
        yield request


def _origin(url: httpx.URL) -> tuple[str, str, int | None]:
    default = {"http": 80, "https": 443}.get(url.scheme)
    return url.scheme, url.host, url.port or default


def tool(url: str, *, timeout_s: float, headers: Mapping[str, str] | None = None) -> tools.Tool:
    """The tool that asks the A2A agent at ``url``, sending ``headers`` (its credential)."""
    name = "a2a_" + "".join(c if c.isalnum() else "_" for c in url.rstrip("/").rsplit("/", 1)[-1])

    async def call(arguments: Any) -> tools.Outcome:
        try:
            args = tools.AgentArgs.model_validate(arguments)
        except pydantic.ValidationError as exc:
            return tools.Outcome(
                "", error=f"the arguments do not match the tool's schema: {exc.errors()[0]['msg']}"
            )
        try:
            async with asyncio.timeout(timeout_s):
                return await ask(url, args.input, timeout_s=timeout_s, headers=headers)
        except TimeoutError:
            return tools.Outcome("", error=f"the A2A agent did not answer within {timeout_s:g}s")
        except Exception as exc:
            return tools.Outcome(
                "", error=f"the A2A agent at {url} failed: {str(exc) or type(exc).__name__}"
            )

    return tools.Tool(
        name=name,
        arguments=None,
        input_schema=tools.AgentArgs.model_json_schema(),
        description=f"Asks the A2A agent at {url} and returns its answer.",
        call=call,
    )


async def ask(
    url: str, text: str, *, timeout_s: float, headers: Mapping[str, str] | None = None
) -> tools.Outcome:
    """Send ``text`` to the A2A agent at ``url``; its answer. ``headers`` go to ``url``'s
    origin only."""
    auth = OriginHeaders(url, headers) if headers else None
    async with httpx.AsyncClient(timeout=timeout_s, auth=auth) as http:
        client = await client_factory.create_client(
            url, client_config=a2a_client.ClientConfig(streaming=False, httpx_client=http)
        )
        async with client:
            request = a2a.SendMessageRequest(
                message=a2a.Message(
                    message_id=str(uuid.uuid4()), role=a2a.ROLE_USER, parts=[a2a.Part(text=text)]
                )
            )
            answers = [response async for response in client.send_message(request)]
    last = answers[-1] if answers else None
    if last is None:
        return tools.Outcome("", error="the A2A agent sent no answer")
    if last.HasField("message"):
        return tools.Outcome(_text(last.message.parts) or "(no text)")
    task = last.task
    status = task.status
    said = _text(status.message.parts)
    if status.state != a2a.TASK_STATE_COMPLETED:
        state = a2a.TaskState.Name(status.state).removeprefix("TASK_STATE_")
        return tools.Outcome("", error=f"the A2A task ended {state}: {said or 'no reason given'}")
    answer = "\n".join(_text(artifact.parts) for artifact in task.artifacts)
    return tools.Outcome(answer or said or "(no text)")


def _text(parts: Any) -> str:
    return "".join(part.text for part in parts if part.text)
