"""Ingest and IngestStream from both clients, against a recording Knowledge server: which
way a document goes, its pieces, its header, and a streamed upload retried from the start."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from aion.api.v1 import knowledge_pb2, knowledge_pb2_grpc
from aion.sdk import client, errors, options, retry, sync_client

FAST = retry.RetryPolicy(max_attempts=3, initial_backoff_s=0.01, max_backoff_s=0.05)


class Recorder(knowledge_pb2_grpc.KnowledgeServicer):
    """Answers Ingest and IngestStream with the SHA-256 of the bytes received, recording
    each request (a stream as its list of messages) and its deadline."""

    def __init__(self) -> None:
        self.unary: list[knowledge_pb2.IngestRequest] = []
        self.streams: list[list[knowledge_pb2.IngestChunk]] = []
        self.deadlines: list[float | None] = []
        self.fail: list[grpc.StatusCode] = []
        self.refuse_at_header = False
        self.stall: asyncio.Event | None = None  # set once a stalled call has ended
        self.stalled = asyncio.Event()  # set once a stalled call has begun

    async def Ingest(
        self, request: knowledge_pb2.IngestRequest, context: Any
    ) -> knowledge_pb2.IngestResponse:
        self.unary.append(request)
        return knowledge_pb2.IngestResponse(
            document_id=request.document_id,
            content_sha256=hashlib.sha256(request.content).hexdigest(),
        )

    async def IngestStream(
        self, request_iterator: AsyncIterator[knowledge_pb2.IngestChunk], context: Any
    ) -> knowledge_pb2.IngestResponse:
        if self.stall is not None:  # never answers
            stall = self.stall
            context.add_done_callback(lambda _: stall.set())
            self.stalled.set()
            await asyncio.Event().wait()
        if self.refuse_at_header:  # while the client still writes
            async for _ in request_iterator:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "size_bytes is over")
        messages = [m async for m in request_iterator]
        self.streams.append(messages)
        self.deadlines.append(context.time_remaining())
        if self.fail:
            await context.abort(self.fail.pop(0), "the knowledge service is restarting")
        return knowledge_pb2.IngestResponse(
            document_id=messages[0].header.document_id,
            content_sha256=hashlib.sha256(b"".join(m.data for m in messages[1:])).hexdigest(),
        )


@pytest.fixture
async def knowledge() -> AsyncIterator[tuple[str, Recorder]]:
    recorder = Recorder()  # type: ignore[abstract]
    server = grpc.aio.server()
    knowledge_pb2_grpc.add_KnowledgeServicer_to_server(recorder, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}", recorder
    finally:
        await server.stop(0)


def _pieces(messages: list[knowledge_pb2.IngestChunk]) -> list[bytes]:
    assert messages[0].WhichOneof("part") == "header"
    assert all(m.WhichOneof("part") == "data" for m in messages[1:])
    assert [m.last for m in messages] == [False] * (len(messages) - 1) + [True]
    return [m.data for m in messages[1:]]


async def test_small_content_goes_in_one_message_and_large_by_stream(
    knowledge: tuple[str, Recorder],
) -> None:
    target, recorder = knowledge
    large = bytes(range(256)) * (options.STREAM_ABOVE_BYTES // 256 + 1)
    async with client.AsyncClient(target, retries=FAST) as api:
        await api.ingest("kb", "small.txt", content="small", metadata={"a": "b"})
        resp = await api.ingest("kb", "large.txt", content=large, title="Large", wait=False)
    assert [r.content for r in recorder.unary] == [b"small"]
    (stream,) = recorder.streams
    header = stream[0].header
    assert (header.knowledge_base, header.document_id, header.title) == ("kb", "large.txt", "Large")
    assert (header.content_type, header.wait, header.size_bytes) == (
        "text/plain",
        False,
        len(large),
    )
    pieces = _pieces(stream)
    assert {len(p) for p in pieces[:-1]} == {options.UPLOAD_CHUNK_BYTES}
    assert b"".join(pieces) == large
    assert resp.content_sha256 == hashlib.sha256(large).hexdigest()
    # An upload has a task's deadline (300 s), not a call's (30 s).
    assert recorder.deadlines[0] == pytest.approx(300, abs=5)


async def test_stream_chooses_the_way_whatever_the_size(knowledge: tuple[str, Recorder]) -> None:
    target, recorder = knowledge
    async with client.AsyncClient(target, retries=FAST) as api:
        await api.ingest("kb", "s.md", content="# small", content_type="text/markdown", stream=True)
    assert recorder.unary == []
    assert _pieces(recorder.streams[0]) == [b"# small"]
    assert recorder.streams[0][0].header.size_bytes == 7


async def test_a_file_is_streamed_in_pieces_named_and_typed_after_it(
    knowledge: tuple[str, Recorder], tmp_path: Path
) -> None:
    target, recorder = knowledge
    path = tmp_path / "Guide.MD"
    content = b"# Guide\n" + b"words " * 20_000
    path.write_bytes(content)
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    async with client.AsyncClient(target, retries=FAST) as api:
        resp = await api.ingest_file("kb", "guide", path, metadata={"team": "docs"})
        await api.ingest_file("kb", "empty", empty, title="Nothing")
        with pytest.raises(ValueError, match="unsupported file type"):
            await api.ingest_file("kb", "image", tmp_path / "x.png")
    first, second = recorder.streams
    header = first[0].header
    assert (header.title, header.content_type, dict(header.metadata)) == (
        "Guide.MD",
        "text/markdown",
        {"team": "docs"},
    )
    assert (header.size_bytes, header.wait) == (len(content), True)
    assert b"".join(_pieces(first)) == content
    assert len(first) == 1 + -(-len(content) // options.UPLOAD_CHUNK_BYTES)
    assert resp.content_sha256 == hashlib.sha256(content).hexdigest()
    assert (second[0].header.title, _pieces(second)) == ("Nothing", [b""])


async def test_a_failed_upload_is_sent_again_from_the_start(
    knowledge: tuple[str, Recorder], tmp_path: Path
) -> None:
    target, recorder = knowledge
    path = tmp_path / "notes.txt"
    path.write_bytes(b"x" * 100_000)
    recorder.fail = [grpc.StatusCode.UNAVAILABLE]
    async with client.AsyncClient(target, retries=FAST) as api:
        await api.ingest_file("kb", "notes.txt", path)
    assert len(recorder.streams) == 2
    assert [b"".join(_pieces(s)) for s in recorder.streams] == [b"x" * 100_000] * 2
    recorder.fail = [grpc.StatusCode.INVALID_ARGUMENT]
    async with client.AsyncClient(target, retries=FAST) as api:
        with pytest.raises(errors.InvalidArgument):
            await api.ingest_file("kb", "notes.txt", path)
    assert len(recorder.streams) == 3  # not retried


async def test_the_sync_client_streams_files_and_large_content_too(
    knowledge: tuple[str, Recorder], tmp_path: Path
) -> None:
    target, recorder = knowledge
    path = tmp_path / "page.html"
    path.write_bytes(b"<p>" + b"text " * 30_000 + b"</p>")
    recorder.fail = [grpc.StatusCode.UNAVAILABLE]

    def run() -> None:
        with sync_client.Client(target, retries=FAST) as api:
            api.ingest_file("kb", "page.html", path, wait=False)
            api.ingest("kb", "small.txt", content=b"small")
            api.ingest("kb", "big.txt", content=b"y" * 70_000, stream=True)

    await asyncio.to_thread(run)
    assert [r.document_id for r in recorder.unary] == ["small.txt"]
    failed, page, big = recorder.streams
    assert failed == page  # the retry read the file again
    assert (page[0].header.content_type, page[0].header.wait) == ("text/html", False)
    assert b"".join(_pieces(page)) == path.read_bytes()
    assert b"".join(_pieces(big)) == b"y" * 70_000


async def test_a_refusal_while_the_client_still_writes_arrives_as_sent(
    knowledge: tuple[str, Recorder], tmp_path: Path
) -> None:
    # grpc.aio can turn it into INTERNAL (grpc/grpc#36066); the async client's uploads go
    # over a blocking channel, which reports the status.
    target, recorder = knowledge
    recorder.refuse_at_header = True
    path = tmp_path / "big.txt"
    path.write_bytes(b"z" * 4 * 1024 * 1024)
    async with client.AsyncClient(target, retries=FAST) as api:
        for _ in range(10):
            with pytest.raises(errors.InvalidArgument, match="size_bytes is over"):
                await api.ingest_file("kb", "big.txt", path)


async def test_cancelling_an_upload_cancels_its_call(
    knowledge: tuple[str, Recorder], tmp_path: Path
) -> None:
    target, recorder = knowledge
    ended = recorder.stall = asyncio.Event()
    path = tmp_path / "notes.txt"
    path.write_bytes(b"notes")
    async with client.AsyncClient(target, retries=FAST) as api:
        upload = asyncio.create_task(api.ingest_file("kb", "notes.txt", path))
        await asyncio.wait_for(recorder.stalled.wait(), 10)
        upload.cancel()
        with pytest.raises(asyncio.CancelledError):
            await upload
        await asyncio.wait_for(ended.wait(), 10)
