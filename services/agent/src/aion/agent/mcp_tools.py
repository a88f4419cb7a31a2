"""Tools of MCP servers (Streamable HTTP), offered to an agent for one run.

An Agent names them in ``spec.tools``:

    mcp:<url>            every tool the server lists
    mcp:<url>#<tool>     only that tool (one entry per allowed tool)

A server named in the Agent's ``spec.toolCredentials`` gets its credential as an
HTTP header on every request (``ServerRef.headers``, set on the HTTP client the
``mcp`` client uses; the client follows redirects only within the server's origin,
so the header goes to no other). The header never appears in a log, a failure or
a step.

At the start of a run ``Toolbox`` connects to each server (the ``mcp``
package's client: ``server/discover`` on 2026-07-28 servers, the initialize
handshake on older ones) and lists its tools. Each call is checked against
the input schema the server listed, carries the task's tenant and an
idempotency key in its ``_meta`` (stable across attempts of the task: the
task id and the call's position in the run), and must answer within
``timeout_s``. A server that is down, slow or refuses a call, arguments that
violate the schema, and a tool that reports an error are the call's
``Outcome.error``, for the model to see: they never end the task. A server
that cannot be listed is left out of the run and reported in ``failures``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import types
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Self, cast

import httpx2
import jsonschema  # type: ignore[import-untyped]
import mcp
import mcp_types
from mcp.client import streamable_http

from aion.agent import tools

log = logging.getLogger(__name__)

TENANT_META = "dev.aion/tenant"
IDEMPOTENCY_META = "dev.aion/idempotency-key"
MAX_RESULT_CHARS = 16_000
# The mcp package's own HTTP timeouts; each call is bounded by the toolbox's timeout_s.
HTTP_TIMEOUT_S, HTTP_READ_TIMEOUT_S = 30.0, 300.0


@dataclasses.dataclass(frozen=True)
class ServerRef:
    """One MCP server an agent may use, which of its tools (None: all), and the headers
    sent on each request to it (its credential; left out of the repr)."""

    url: str
    allowed: frozenset[str] | None
    headers: Mapping[str, str] = dataclasses.field(default_factory=dict, repr=False, compare=False)


def _no_headers(url: str) -> dict[str, str]:
    return {}


def servers(
    entries: Iterable[str], *, headers: Callable[[str], Mapping[str, str]] = _no_headers
) -> list[ServerRef]:
    """The MCP servers that ``entries`` (an agent's tool names) name, in order, each with
    the ``headers`` of its URL."""
    allowed: dict[str, set[str] | None] = {}
    for entry in entries:
        if not entry.startswith(tools.MCP_PREFIX):
            continue
        url, _, tool = entry.removeprefix(tools.MCP_PREFIX).partition("#")
        if url in allowed and allowed[url] is None:
            continue
        if not tool:
            allowed[url] = None
        else:
            allowed.setdefault(url, set())
            named = allowed[url]
            if named is not None:
                named.add(tool)
    return [
        ServerRef(url, None if names is None else frozenset(names), headers=headers(url))
        for url, names in allowed.items()
    ]


def check_url(url: str) -> None:
    """Raise ValueError unless ``url`` is an http(s) URL with a host."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"'{url}' is not an http(s) URL; write mcp:http://host:port/mcp")


def _why(exc: BaseException) -> str:
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return str(exc) or type(exc).__name__


def _refusal(ref: ServerRef, status: int) -> str:
    if not ref.headers:
        return "the server wants a credential; give it one in the Agent's spec.toolCredentials"
    if status == 401:
        return "the server did not accept the credential of the Agent's spec.toolCredentials"
    return "the credential of the Agent's spec.toolCredentials may not list its tools"


def _text(result: mcp_types.CallToolResult) -> str:
    parts = [block.text for block in result.content if isinstance(block, mcp_types.TextContent)]
    if not parts and result.structured_content is not None:
        parts = [json.dumps(result.structured_content)]
    text = "\n".join(parts)
    return text[:MAX_RESULT_CHARS]


class Toolbox:
    """The MCP tools of one run; an async context manager that holds the connections."""

    def __init__(
        self, refs: Iterable[ServerRef], *, tenant: str, task_id: str, timeout_s: float
    ) -> None:
        self._refs = list(refs)
        self._tenant = tenant
        self._task_id = task_id
        self._timeout_s = timeout_s
        self._calls = 0
        self._stack = contextlib.AsyncExitStack()
        self.tools: dict[str, tools.Tool] = {}
        self.failures: list[tuple[str, str]] = []  # (server URL, why it is left out)

    async def __aenter__(self) -> Self:
        await self._stack.__aenter__()
        for ref in self._refs:
            refused: list[int] = []  # the HTTP statuses 401 and 403 the server answered
            try:
                check_url(ref.url)
                async with asyncio.timeout(self._timeout_s):
                    client = await self._connect(ref, refused)
                    listed = await self._list(client)
            except (Exception, TimeoutError) as exc:
                why = (
                    f"did not answer within {self._timeout_s:g}s"
                    if isinstance(exc, TimeoutError)
                    else _why(exc)
                )
                if refused:
                    why += f" (HTTP {refused[-1]}: {_refusal(ref, refused[-1])})"
                log.warning("MCP server left out", extra={"url": ref.url, "why": why})
                self.failures.append((ref.url, f"cannot list its tools: {why}"))
                continue
            self._offer(ref, client, listed)
        return self

    async def _connect(self, ref: ServerRef, refused: list[int]) -> mcp.Client:
        """A client of the server, on an HTTP client that sends ``ref.headers`` and notes
        in ``refused`` each 401 or 403 (which the mcp client reports without its status)."""

        async def note(response: httpx2.Response) -> None:
            if response.status_code in (401, 403):
                refused.append(response.status_code)

        http = await self._stack.enter_async_context(
            httpx2.AsyncClient(
                headers=dict(ref.headers),
                timeout=httpx2.Timeout(HTTP_TIMEOUT_S, read=HTTP_READ_TIMEOUT_S),
                event_hooks={"response": [note]},
            )
        )
        transport = streamable_http.streamable_http_client(ref.url, http_client=http)
        return await self._stack.enter_async_context(
            mcp.Client(transport, read_timeout_seconds=self._timeout_s)
        )

    async def _list(self, client: mcp.Client) -> list[mcp_types.Tool]:
        listed: list[mcp_types.Tool] = []
        cursor: str | None = None
        while True:
            page = await client.list_tools(cursor=cursor)
            listed.extend(page.tools)
            cursor = page.next_cursor
            if not cursor:
                return listed

    def _offer(self, ref: ServerRef, client: mcp.Client, listed: list[mcp_types.Tool]) -> None:
        names = {t.name for t in listed}
        for missing in sorted((ref.allowed or frozenset()) - names):
            self.failures.append((ref.url, f"does not list the tool '{missing}'"))
        for tool in listed:
            if ref.allowed is not None and tool.name not in ref.allowed:
                continue
            if tool.name in self.tools:
                self.failures.append((ref.url, f"offers '{tool.name}', a name taken already"))
                continue
            schema = dict(tool.input_schema or {"type": "object"})
            self.tools[tool.name] = tools.Tool(
                name=tool.name,
                arguments=None,
                input_schema=schema,
                description=(tool.description or f"The tool {tool.name} of {ref.url}.").strip(),
                call=_Caller(self, client, tool.name, schema),
            )

    def key(self) -> str:
        """The idempotency key of the next call."""
        self._calls += 1
        return f"{self._task_id}:mcp:{self._calls}"

    async def call(
        self, client: mcp.Client, name: str, schema: dict[str, Any], arguments: dict[str, Any]
    ) -> tools.Outcome:
        """Call ``name``; every failure is the outcome's error."""
        key = self.key()
        try:
            jsonschema.validators.validator_for(schema)(schema).validate(arguments)
        except jsonschema.ValidationError as exc:
            where = "/".join(str(p) for p in exc.absolute_path) or "arguments"
            return tools.Outcome(
                "",
                error=f"the arguments do not match the tool's input "
                f"schema at {where}: {exc.message}",
            )
        except jsonschema.SchemaError as exc:
            return tools.Outcome("", error=f"the server lists an invalid schema: {exc.message}")
        meta = cast(mcp_types.RequestParamsMeta, {TENANT_META: self._tenant, IDEMPOTENCY_META: key})
        try:
            async with asyncio.timeout(self._timeout_s):
                result = await client.call_tool(
                    name, arguments, meta=meta, read_timeout_seconds=self._timeout_s
                )
        except TimeoutError:
            return tools.Outcome(
                "", error=f"the MCP server did not answer within {self._timeout_s:g}s"
            )
        except Exception as exc:
            return tools.Outcome("", error=f"the MCP server failed the call: {_why(exc)}")
        text = _text(result)
        if result.is_error:
            return tools.Outcome("", error=text or "the tool reported an error")
        return tools.Outcome(text or "(no output)")

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: types.TracebackType | None,
    ) -> None:
        try:
            await self._stack.__aexit__(exc_type, exc, tb)
        except Exception as close_error:  # a server gone by now: nothing left to release
            log.info("closing an MCP connection failed", extra={"why": _why(close_error)})


@dataclasses.dataclass(frozen=True)
class _Caller:
    box: Toolbox
    client: mcp.Client
    name: str
    schema: dict[str, Any]

    async def __call__(self, arguments: Any) -> tools.Outcome:
        return await self.box.call(self.client, self.name, self.schema, dict(arguments))
