"""The credentials of an Agent's tool servers, read from Secrets in its namespace.

``spec.toolCredentials`` names, for an MCP or A2A server of ``spec.tools``, a key of a
Secret in the Agent's own namespace (``agentspec.ToolCredential``). Before each
registration ``resolve`` reads those Secrets (``get``, which the chart's RBAC grants
the operator in every namespace it watches) and makes each key's value the HTTP
header the agent service sends to that server: ``<scheme> <value>``, the value with
surrounding whitespace (the newline of ``echo token > file``) taken off.

``Unavailable`` says why it cannot, naming the Secret, the key and the spec entry,
never a value: a Secret or key that is missing (``SecretNotFound``), one of the
operator's own Secrets (``SecretNotAllowed``), or a value no HTTP header can carry
(``InvalidSecret``). The Agent is then Registered=False with that reason and one
Warning Event, and registering is tried again at each look until it is fixed; an agent
registered before keeps what it had.

A registered Agent's Secrets are read again every ``credentials_interval_s``
(``Recheck``). ``Resolved.version``, a digest of the Secrets' uids and
resourceVersions (never of a value), is kept in ``status.credentialsVersion``; when
it changes the Agent is registered again, so a changed Secret reaches the agent
service within that interval (and the readiness interval of the look that notices).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aion.api.agent.v1 import agent_pb2
from aion.core import agentspec
from aion.operator import conventions

# The Secrets the operator keeps for the executors: never sent to a tool server.
OPERATOR_SECRETS = frozenset({conventions.TLS_SECRET, conventions.HTTP_SECRET})
# The longest header value the agent service takes (its convert.MAX_CREDENTIAL_CHARS).
MAX_VALUE_CHARS = 8192
# What HTTP carries in a header value: visible ASCII, with spaces and tabs inside.
_HEADER_VALUE = re.compile(r"[\x21-\x7e]([\x20-\x7e\t]*[\x21-\x7e])?")

# Reads a Secret of the Agent's namespace by name: the API's dict, None when missing.
ReadSecret = Callable[[str], Awaitable[Mapping[str, Any] | None]]


class Unavailable(Exception):
    """A credential cannot be read: ``reason`` (a condition reason) and ``message``."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclasses.dataclass(frozen=True)
class Resolved:
    """The credentials to register, and the version of the Secrets they came from
    (None when the Agent names none)."""

    credentials: tuple[agent_pb2.ToolCredential, ...] = ()
    version: str | None = None


def header_value(credential: agentspec.ToolCredential, raw: bytes, *, where: str) -> str:
    """The header value that ``raw`` (the Secret key's bytes) makes; ``Unavailable``,
    quoting nothing of it, when HTTP cannot carry it."""
    try:
        text = raw.decode().strip()
    except UnicodeDecodeError:
        text = ""
    value = credential.prefix + text
    if not text or not _HEADER_VALUE.fullmatch(value) or len(value) > MAX_VALUE_CHARS:
        raise Unavailable(
            conventions.INVALID_SECRET,
            f"{where} is not a value an HTTP header can carry (it must be printable ASCII, "
            f"not empty, at most {MAX_VALUE_CHARS} characters with its scheme)",
        )
    return value


def version(secrets: Mapping[str, Mapping[str, Any]]) -> str:
    """A digest of the Secrets' names, uids and resourceVersions: it changes when one of
    them does, and says nothing of their values."""
    parts = sorted(
        f"{name}/{(s.get('metadata') or {}).get('uid', '')}/"
        f"{(s.get('metadata') or {}).get('resourceVersion', '')}"
        for name, s in secrets.items()
    )
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


async def resolve(spec: agentspec.AgentSpec, namespace: str, read: ReadSecret) -> Resolved:
    """The Agent's credentials from its namespace's Secrets (each read once);
    ``Unavailable`` for the first one that cannot be had."""
    if not spec.tool_credentials:
        return Resolved()
    read_already: dict[str, Mapping[str, Any]] = {}
    found: list[agent_pb2.ToolCredential] = []
    for i, credential in enumerate(spec.tool_credentials):
        ref = credential.secret_ref
        entry = f"spec.toolCredentials[{i}], for {credential.url}"
        if ref.name in OPERATOR_SECRETS:
            raise Unavailable(
                conventions.SECRET_NOT_ALLOWED,
                f"Secret {ref.name} ({entry}) is the operator's own, kept for the executors; "
                "put the server's credential in a Secret of yours",
            )
        secret = read_already.get(ref.name)
        if secret is None:
            secret = await read(ref.name)
            if secret is None:
                raise Unavailable(
                    conventions.SECRET_NOT_FOUND,
                    f"Secret {ref.name} ({entry}) not found in namespace {namespace}; create "
                    "it, or correct the secretRef",
                )
            read_already[ref.name] = secret
        data = secret.get("data") or {}
        if ref.key not in data:
            keys = ", ".join(sorted(data)[:20]) or "none"
            raise Unavailable(
                conventions.SECRET_NOT_FOUND,
                f"Secret {ref.name} in namespace {namespace} has no key {ref.key} ({entry}); "
                f"its keys: {keys}",
            )
        try:
            raw = base64.b64decode(data[ref.key] or "", validate=True)
        except binascii.Error:
            raw = b""
        where = f"key {ref.key} of Secret {ref.name} ({entry})"
        found.append(
            agent_pb2.ToolCredential(
                url=credential.url,
                header=credential.header,
                value=header_value(credential, raw, where=where),
            )
        )
    return Resolved(credentials=tuple(found), version=version(read_already))


class Recheck:
    """When a registered Agent's Secrets are read again: at most every ``interval_s``
    for each Agent (by uid), so the API server is not asked at every look."""

    def __init__(self, interval_s: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._interval_s = interval_s
        self._clock = clock
        self._last: dict[str, float] = {}

    def due(self, uid: str) -> bool:
        """Whether to read the Agent's Secrets now (then not again for ``interval_s``)."""
        now = self._clock()
        last = self._last.get(uid)
        if last is not None and now - last < self._interval_s:
            return False
        self._last[uid] = now
        return True

    def forget(self, uid: str) -> None:
        """Drop a deleted Agent."""
        self._last.pop(uid, None)
