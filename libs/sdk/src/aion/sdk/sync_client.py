"""The synchronous client of aion's gateway, over grpc's blocking channel."""

from __future__ import annotations

import io
import os
import time
import types
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import BinaryIO, Self, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from aion.api.v1 import (
    agents_pb2,
    agents_pb2_grpc,
    common_pb2,
    keys_pb2,
    keys_pb2_grpc,
    knowledge_pb2,
    knowledge_pb2_grpc,
    tasks_pb2,
    tasks_pb2_grpc,
)
from aion.sdk import options, retry

_Req = TypeVar("_Req")
_Resp = TypeVar("_Resp")


class Client:
    """Calls agents through the gateway, blocking; use as ``with Client() as client``.

    The same surface and arguments as ``AsyncClient``; ``stream`` and
    ``follow`` return plain iterators.
    """

    def __init__(
        self,
        target: str | None = None,
        *,
        api_key: str | None = None,
        token: str | None = None,
        timeout: float | None = None,
        task_timeout: float | None = None,
        retries: int | retry.RetryPolicy = 3,
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        self._settings = options.settings(
            target,
            api_key=api_key,
            token=token,
            timeout=timeout,
            task_timeout=task_timeout,
            retries=retries,
            credentials=credentials,
        )
        target = self._settings.target
        self._channel = (
            grpc.secure_channel(target, credentials, options=options.CHANNEL_OPTIONS)
            if credentials is not None
            else grpc.insecure_channel(target, options=options.CHANNEL_OPTIONS)
        )
        self._tasks = tasks_pb2_grpc.TasksStub(self._channel)
        self._agents = agents_pb2_grpc.AgentsStub(self._channel)
        self._knowledge = knowledge_pb2_grpc.KnowledgeStub(self._channel)
        self._keys = keys_pb2_grpc.KeysStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)
        self._closed = False

    @property
    def target(self) -> str:
        """The gateway's address."""
        return self._settings.target

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: types.TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the channel, cancelling calls in flight; closing twice is harmless."""
        if not self._closed:
            self._closed = True
            self._channel.close()

    def submit(
        self,
        agent: str,
        input: str,
        *,
        asynchronous: bool = False,
        idempotency_key: str | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
        budget_usd: float | None = None,
        sla_ms: int | None = None,
        privacy: str | None = None,
        seed: int | None = None,
        timeout: float | None = None,
    ) -> tasks_pb2.SubmitResponse:
        """Run a task and wait for its result, or return it QUEUED with ``asynchronous``."""
        request = tasks_pb2.SubmitRequest(
            asynchronous=asynchronous,
            task=options.task_spec(
                agent,
                input,
                idempotency_key=idempotency_key,
                max_tokens=max_tokens,
                temperature=temperature,
                budget_usd=budget_usd,
                sla_ms=sla_ms,
                privacy=privacy,
                seed=seed,
            ),
        )
        return self._call(
            self._tasks.Submit,
            request,
            timeout=timeout,
            task=not asynchronous,
            idempotent=bool(idempotency_key),
        )

    def stream(
        self,
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
        timeout: float | None = None,
    ) -> Iterator[tasks_pb2.TaskEvent]:
        """Run a task and iterate over its events: started, tokens, then done or error."""
        request = tasks_pb2.StreamRequest(
            task=options.task_spec(
                agent,
                input,
                idempotency_key=idempotency_key,
                max_tokens=max_tokens,
                temperature=temperature,
                budget_usd=budget_usd,
                sla_ms=sla_ms,
                privacy=privacy,
                seed=seed,
            )
        )
        return self._stream(request, timeout=timeout, idempotent=bool(idempotency_key))

    def follow(
        self, task_id: str, *, timeout: float | None = None
    ) -> Iterator[tasks_pb2.TaskEvent]:
        """Iterate over the events of a task that already exists."""
        return self._stream(
            tasks_pb2.StreamRequest(task_id=task_id), timeout=timeout, idempotent=True
        )

    def get(self, task_id: str, *, timeout: float | None = None) -> common_pb2.TaskResult:
        """A task's result, or its current state."""
        return self._call(
            self._tasks.Get, tasks_pb2.GetTaskRequest(task_id=task_id), timeout=timeout
        )

    def cancel(self, task_id: str, *, timeout: float | None = None) -> common_pb2.TaskResult:
        """Stop a task; returns its result, CANCELED unless it had ended already."""
        return self._call(
            self._tasks.Cancel, tasks_pb2.CancelTaskRequest(task_id=task_id), timeout=timeout
        )

    def list_agents(self, *, timeout: float | None = None) -> list[agents_pb2.Agent]:
        """The agents this caller may use."""
        response = self._call(self._agents.List, agents_pb2.ListAgentsRequest(), timeout=timeout)
        return list(response.agents)

    def apply_agents(
        self, manifest: str, *, timeout: float | None = None
    ) -> list[agents_pb2.Agent]:
        """Register the Agent resources of a YAML manifest (admin); returns them."""
        response = self._call(
            self._agents.Apply,
            agents_pb2.ApplyAgentsRequest(manifest=manifest),
            timeout=timeout,
            idempotent=True,
        )
        return list(response.agents)

    def get_agent(self, name: str, *, timeout: float | None = None) -> agents_pb2.Agent:
        """One agent by name."""
        return self._call(self._agents.Get, agents_pb2.GetAgentRequest(name=name), timeout=timeout)

    def ingest(
        self,
        knowledge_base: str,
        document_id: str,
        *,
        content: bytes | str,
        title: str = "",
        content_type: str = "text/plain",
        metadata: Mapping[str, str] | None = None,
        wait: bool = True,
        stream: bool | None = None,
        timeout: float | None = None,
    ) -> knowledge_pb2.IngestResponse:
        """Add a document to a knowledge base, replacing one with the same id (the same
        bytes again make no new version). With ``wait`` (the default) the answer comes once
        it is indexed (READY or FAILED) or the deadline nears; else once it is queued.

        Content over ``options.STREAM_ABOVE_BYTES`` (1 MiB) goes by IngestStream, in pieces,
        so the gateway's largest message does not bound it (the knowledge service's
        document limit does); ``stream`` chooses one way or the other. A streamed upload
        has the deadline of a task (``task_timeout``) unless ``timeout`` is given."""
        data = content.encode() if isinstance(content, str) else content
        if stream is None:
            stream = len(data) > options.STREAM_ABOVE_BYTES
        if stream:
            header = options.ingest_header(
                knowledge_base,
                document_id,
                title=title,
                content_type=content_type,
                metadata=metadata,
                wait=wait,
                size_bytes=len(data),
            )
            return self._upload(header, lambda: io.BytesIO(data), timeout=timeout)
        request = options.ingest_request(
            knowledge_base,
            document_id,
            content=data,
            title=title,
            content_type=content_type,
            metadata=metadata,
            wait=wait,
        )
        return self._call(self._knowledge.Ingest, request, timeout=timeout)

    def ingest_file(
        self,
        knowledge_base: str,
        document_id: str,
        path: str | os.PathLike[str],
        *,
        title: str | None = None,
        content_type: str | None = None,
        metadata: Mapping[str, str] | None = None,
        wait: bool = True,
        timeout: float | None = None,
    ) -> knowledge_pb2.IngestResponse:
        """Add a file as a document, as ``ingest`` does, always by IngestStream: read and sent
        in pieces, never whole. ``title`` defaults to the file's name, ``content_type`` to
        its suffix's (.txt, .md, .html, .pdf...). A retried upload reads the file again."""
        source = Path(path)
        kind = content_type or options.content_type_of(source)
        header = options.ingest_header(
            knowledge_base,
            document_id,
            title=source.name if title is None else title,
            content_type=kind,
            metadata=metadata,
            wait=wait,
            size_bytes=source.stat().st_size,
        )
        return self._upload(header, lambda: source.open("rb"), timeout=timeout)

    def search(
        self,
        knowledge_base: str,
        query: str,
        *,
        top_k: int = 5,
        filters: Mapping[str, str] | None = None,
        mode: str = "hybrid",
        timeout: float | None = None,
    ) -> list[knowledge_pb2.SearchHit]:
        """The chunks that best match ``query``, best first, each citing its document,
        version and character range; ``mode`` is hybrid, dense or sparse."""
        request = options.search_request(
            knowledge_base, query, top_k=top_k, filters=filters, mode=mode
        )
        return list(self._call(self._knowledge.Search, request, timeout=timeout).hits)

    def delete_document(
        self, knowledge_base: str, document_id: str, *, timeout: float | None = None
    ) -> knowledge_pb2.DeleteDocumentResponse:
        """Remove a document from every store of a knowledge base."""
        request = knowledge_pb2.DeleteDocumentRequest(
            knowledge_base=knowledge_base, document_id=document_id
        )
        return self._call(self._knowledge.Delete, request, timeout=timeout)

    def get_document(
        self, knowledge_base: str, document_id: str, *, timeout: float | None = None
    ) -> knowledge_pb2.Document:
        """A document's latest version: state, progress, error."""
        request = knowledge_pb2.GetDocumentRequest(
            knowledge_base=knowledge_base, document_id=document_id
        )
        return self._call(self._knowledge.GetDocument, request, timeout=timeout)

    def list_documents(
        self,
        knowledge_base: str = "",
        *,
        page_size: int = 100,
        page_token: str = "",
        timeout: float | None = None,
    ) -> knowledge_pb2.ListDocumentsResponse:
        """One page of the tenant's documents (of one knowledge base when it is given)."""
        request = knowledge_pb2.ListDocumentsRequest(
            knowledge_base=knowledge_base, page_size=page_size, page_token=page_token
        )
        return self._call(self._knowledge.ListDocuments, request, timeout=timeout)

    def create_key(
        self, name: str, roles: Sequence[str], *, timeout: float | None = None
    ) -> keys_pb2.CreateKeyResponse:
        """A new API key of the caller's tenant (admin); its ``secret`` is shown only here."""
        return self._call(
            self._keys.Create,
            keys_pb2.CreateKeyRequest(name=name, roles=list(roles)),
            timeout=timeout,
            idempotent=False,
        )

    def list_keys(
        self, *, include_revoked: bool = False, timeout: float | None = None
    ) -> list[keys_pb2.ApiKey]:
        """The API keys of the caller's tenant (admin), without their secrets."""
        response = self._call(
            self._keys.List,
            keys_pb2.ListKeysRequest(include_revoked=include_revoked),
            timeout=timeout,
        )
        return list(response.keys)

    def revoke_key(self, key_id: str, *, timeout: float | None = None) -> keys_pb2.ApiKey:
        """Revoke one of the tenant's API keys by id (admin)."""
        return self._call(self._keys.Revoke, keys_pb2.RevokeKeyRequest(id=key_id), timeout=timeout)

    def health(self, service: str = "", *, timeout: float | None = None) -> str:
        """The gRPC health status of ``service`` (the whole server for ""), e.g. "SERVING"."""
        response = self._call(
            self._health.Check, health_pb2.HealthCheckRequest(service=service), timeout=timeout
        )
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))

    def _call(
        self,
        method: grpc.UnaryUnaryMultiCallable[_Req, _Resp],
        request: _Req,
        *,
        timeout: float | None,
        task: bool = False,
        idempotent: bool = True,
    ) -> _Resp:
        attempts = self._settings.attempts(timeout, task=task, idempotent=idempotent)
        while True:
            try:
                return method(request, timeout=attempts.start(), metadata=self._settings.metadata)
            except grpc.RpcError as exc:
                delay = attempts.failed(exc)
            time.sleep(delay)

    def _upload(
        self,
        header: knowledge_pb2.IngestChunk,
        open_source: Callable[[], BinaryIO],
        *,
        timeout: float | None,
    ) -> knowledge_pb2.IngestResponse:
        """IngestStream: ``header``, then the source's bytes in pieces; each attempt opens the
        source anew (the same bytes again make no new version, so a retry is safe)."""
        attempts = self._settings.attempts(timeout, task=True)
        while True:
            with open_source() as source:
                try:
                    return self._knowledge.IngestStream(
                        options.ingest_chunks(header, options.reader(source)),
                        timeout=attempts.start(),
                        metadata=self._settings.metadata,
                    )
                except grpc.RpcError as exc:
                    delay = attempts.failed(exc)
            time.sleep(delay)

    def _stream(
        self, request: tasks_pb2.StreamRequest, *, timeout: float | None, idempotent: bool
    ) -> Iterator[tasks_pb2.TaskEvent]:
        attempts = self._settings.attempts(timeout, task=True, idempotent=idempotent)
        while True:
            call = self._tasks.Stream(
                request, timeout=attempts.start(), metadata=self._settings.metadata
            )
            yielded = False
            try:
                for event in call:
                    yielded = True
                    yield event
                return
            except grpc.RpcError as exc:
                delay = attempts.failed(exc, retry=not yielded)
            finally:
                call.cancel()
            time.sleep(delay)
