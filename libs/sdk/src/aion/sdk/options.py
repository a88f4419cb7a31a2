"""What both clients share: settings from arguments and the environment, and request messages."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import BinaryIO

import grpc

from aion.api.v1 import common_pb2, knowledge_pb2, tasks_pb2
from aion.sdk import errors, retry

DEFAULT_TARGET = "127.0.0.1:50051"
DEFAULT_TIMEOUT_S = 30.0
DEFAULT_TASK_TIMEOUT_S = 300.0
# Jaeger's UI as `make dev` runs it (``aionctl get TASK --trace``).
DEFAULT_TRACE_UI = "http://127.0.0.1:16686"

CHANNEL_OPTIONS: list[tuple[str, str | int]] = [
    ("grpc.primary_user_agent", "aion-sdk-python"),
    ("grpc.max_receive_message_length", 16 * 1024 * 1024),
    # Reconnect soon after a failure, so a retry finds the gateway once it is back.
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 5_000),
]

# Documents above this size go by Knowledge.IngestStream, in pieces of UPLOAD_CHUNK_BYTES
# (far below any gateway's largest message); files always do.
STREAM_ABOVE_BYTES = 1024 * 1024
UPLOAD_CHUNK_BYTES = 32 * 1024
# The document types the knowledge service reads, by file suffix.
CONTENT_TYPES = {
    ".txt": "text/plain",
    ".text": "text/plain",
    ".md": "text/markdown",
    ".markdown": "text/markdown",
    ".html": "text/html",
    ".htm": "text/html",
    ".pdf": "application/pdf",
}

_PRIVACY = {
    "local-only": common_pb2.PRIVACY_LOCAL_ONLY,
    "allow-api": common_pb2.PRIVACY_ALLOW_API,
    "hybrid": common_pb2.PRIVACY_HYBRID,
}


@dataclasses.dataclass(frozen=True, kw_only=True)
class Settings:
    """A client's settings, resolved once at construction."""

    target: str
    metadata: tuple[tuple[str, str], ...]
    timeout_s: float
    task_timeout_s: float
    retry_policy: retry.RetryPolicy
    credentials: grpc.ChannelCredentials | None

    def attempts(
        self, timeout: float | None, *, task: bool = False, idempotent: bool = True
    ) -> retry.Attempts:
        """The attempts of one call; a ``task`` call (Stream, waiting Submit) waits longer."""
        if timeout is None:
            timeout = self.task_timeout_s if task else self.timeout_s
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        return retry.Attempts(self.retry_policy, timeout_s=timeout, idempotent=idempotent)


def settings(
    target: str | None,
    *,
    api_key: str | None,
    token: str | None,
    timeout: float | None,
    task_timeout: float | None,
    retries: int | retry.RetryPolicy,
    credentials: grpc.ChannelCredentials | None,
) -> Settings:
    """Resolve a client's arguments; unset ones come from AION_TARGET, AION_API_KEY, AION_TOKEN."""
    if target is None:
        target = os.environ.get("AION_TARGET") or DEFAULT_TARGET
    if api_key is None:
        api_key = os.environ.get("AION_API_KEY")
    if token is None:
        token = os.environ.get("AION_TOKEN")
    for name, value in (("timeout", timeout), ("task_timeout", task_timeout)):
        if value is not None and value <= 0:
            raise ValueError(f"{name} must be positive")
    return Settings(
        target=target,
        metadata=credentials_metadata(api_key=api_key, token=token),
        timeout_s=timeout or DEFAULT_TIMEOUT_S,
        task_timeout_s=task_timeout or DEFAULT_TASK_TIMEOUT_S,
        retry_policy=retries
        if isinstance(retries, retry.RetryPolicy)
        else retry.RetryPolicy(max_attempts=retries),
        credentials=credentials,
    )


def credentials_metadata(*, api_key: str | None, token: str | None) -> tuple[tuple[str, str], ...]:
    """The credentials as call metadata: ``x-api-key`` and ``authorization: Bearer``."""
    pairs: list[tuple[str, str]] = []
    if api_key:
        pairs.append(("x-api-key", api_key))
    if token:
        pairs.append(("authorization", f"Bearer {token.removeprefix('Bearer ')}"))
    return tuple(pairs)


def privacy_value(value: str | None) -> common_pb2.Privacy.ValueType:
    """The Privacy for ``"local-only"``, ``"allow-api"`` or ``"hybrid"`` (unset for None)."""
    if value is None:
        return common_pb2.PRIVACY_UNSPECIFIED
    try:
        return _PRIVACY[value.lower().replace("_", "-")]
    except KeyError:
        raise errors.InvalidArgument(
            f"privacy must be one of {', '.join(_PRIVACY)}, not {value!r}", field="privacy"
        ) from None


def task_spec(
    agent: str,
    input: str,
    *,
    idempotency_key: str | None = None,
    max_tokens: int | None = None,
    temperature: float | None = None,
    budget_usd: float | None = None,
    sla_ms: int | None = None,
    privacy: str | None = None,
    seed: int | None = None,
) -> tasks_pb2.TaskSpec:
    """The TaskSpec for a task; unset knobs stay unset so the agent's defaults apply."""
    knobs = tasks_pb2.TaskOptions(privacy=privacy_value(privacy))
    if max_tokens is not None:
        knobs.max_tokens = max_tokens
    if temperature is not None:
        knobs.temperature = temperature
    if budget_usd is not None:
        knobs.budget_usd = budget_usd
    if sla_ms is not None:
        knobs.sla_ms = sla_ms
    if seed is not None:
        knobs.seed = seed
    return tasks_pb2.TaskSpec(
        agent=agent, input=input, idempotency_key=idempotency_key or "", options=knobs
    )


def ingest_request(
    knowledge_base: str,
    document_id: str,
    *,
    content: bytes | str,
    title: str,
    content_type: str,
    metadata: Mapping[str, str] | None,
    wait: bool = False,
) -> knowledge_pb2.IngestRequest:
    """The IngestRequest for a document; text content is sent as UTF-8."""
    return knowledge_pb2.IngestRequest(
        knowledge_base=knowledge_base,
        document_id=document_id,
        title=title,
        content=content.encode() if isinstance(content, str) else content,
        content_type=content_type,
        metadata=dict(metadata or {}),
        wait=wait,
    )


def content_type_of(path: Path) -> str:
    """The content type of a document file, by its suffix (ValueError for another)."""
    kind = CONTENT_TYPES.get(path.suffix.lower())
    if kind is None:
        raise ValueError(
            f"{path}: unsupported file type (use {', '.join(sorted(CONTENT_TYPES))}) "
            "or name its content_type"
        )
    return kind


def ingest_header(
    knowledge_base: str,
    document_id: str,
    *,
    title: str,
    content_type: str,
    metadata: Mapping[str, str] | None,
    wait: bool,
    size_bytes: int,
) -> knowledge_pb2.IngestChunk:
    """IngestStream's first message: the document without its bytes, and their size."""
    return knowledge_pb2.IngestChunk(
        header=knowledge_pb2.IngestHeader(
            knowledge_base=knowledge_base,
            document_id=document_id,
            title=title,
            content_type=content_type,
            metadata=dict(metadata or {}),
            wait=wait,
            size_bytes=size_bytes,
        )
    )


def ingest_chunks(
    header: knowledge_pb2.IngestChunk,
    read: Callable[[int], bytes],
    *,
    chunk_bytes: int = UPLOAD_CHUNK_BYTES,
) -> Iterator[knowledge_pb2.IngestChunk]:
    """IngestStream's messages: ``header``, then what ``read(chunk_bytes)`` returns until it
    returns nothing, the final piece marked last (read one piece ahead)."""
    yield header
    piece = read(chunk_bytes)
    while True:
        following = read(chunk_bytes) if piece else b""
        yield knowledge_pb2.IngestChunk(data=piece, last=not following)
        if not following:
            return
        piece = following


def reader(source: BinaryIO) -> Callable[[int], bytes]:
    """``source.read``, reading nothing once ``source`` is closed: the upload that reads it
    has ended by then, though grpc's thread that sends its pieces may ask for one more."""

    def read(size: int) -> bytes:
        try:
            return source.read(size)
        except ValueError:  # closed
            return b""

    return read


SEARCH_MODES = {
    "hybrid": knowledge_pb2.SEARCH_MODE_HYBRID,
    "dense": knowledge_pb2.SEARCH_MODE_DENSE,
    "sparse": knowledge_pb2.SEARCH_MODE_SPARSE,
}


def search_request(
    knowledge_base: str,
    query: str,
    *,
    top_k: int,
    filters: Mapping[str, str] | None,
    mode: str = "hybrid",
) -> knowledge_pb2.SearchRequest:
    """The SearchRequest for a query; ``mode`` is hybrid, dense or sparse."""
    if mode not in SEARCH_MODES:
        raise ValueError(f"mode must be one of {', '.join(SEARCH_MODES)}, not {mode!r}")
    return knowledge_pb2.SearchRequest(
        knowledge_base=knowledge_base,
        query=query,
        top_k=top_k,
        filters=dict(filters or {}),
        mode=SEARCH_MODES[mode],
    )


def trace_url(ui: str, trace_id: str) -> str:
    """The address of trace ``trace_id`` in a Jaeger UI at ``ui``."""
    return f"{ui.rstrip('/')}/trace/{trace_id}"
