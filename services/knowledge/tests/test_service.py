"""The knowledge service end to end within one process: gRPC in, MinIO, Postgres, Kafka,
the real all-MiniLM-L6-v2 executor and Qdrant's local mode behind it."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import minio
import pytest

from aion.api.knowledge.v1 import knowledge_pb2
from aion.api.v1 import knowledge_pb2 as public
from aion.core import errors
from aion.knowledge import objects, testing

READY, FAILED = public.DOCUMENT_STATE_READY, public.DOCUMENT_STATE_FAILED
HYBRID, DENSE = public.SEARCH_MODE_HYBRID, public.SEARCH_MODE_DENSE
SPARSE = public.SEARCH_MODE_SPARSE
Rows = Callable[..., list[tuple[Any, ...]]]

TXT = (
    "Kubernetes schedules pods onto nodes. The scheduler filters nodes that lack "
    "resources and scores the rest.\n\nGPUs are advertised by the NVIDIA device plugin as "
    "nvidia.com/gpu, and a pod asks for them in its resource limits."
)
MD = "# Kafka\n\nKafka keeps events in ordered partitions. Consumers in a group share them."
HTML = (
    "<html><head><style>body{}</style></head><body><h1>MinIO</h1><p>MinIO stores objects "
    "in buckets and speaks the S3 API.</p></body></html>"
)
PDF_TEXT = "Postgres keeps rows in heap pages and indexes them with B-trees."


@pytest.fixture(scope="module")
async def service(
    new_service: Callable[..., testing.Service],
) -> AsyncIterator[testing.Service]:
    async with new_service(
        max_document_bytes=100_000, max_metadata_pairs=4, max_query_chars=300
    ) as svc:
        yield svc


def _index(service: testing.Service) -> Any:
    assert service.index is not None
    return service.index


def _keys(client: minio.Minio, bucket: str, tenant: str, kb: str, doc: str) -> list[str]:
    return sorted(
        str(o.object_name)
        for o in client.list_objects(bucket, prefix=objects.prefix(tenant, kb, doc), recursive=True)
    )


async def test_every_format_is_indexed_and_cited(
    service: testing.Service, pdf: Callable[..., bytes]
) -> None:
    docs = {
        "notes.txt": (TXT.encode(), "text/plain"),
        "kafka.md": (MD.encode(), "text/markdown"),
        "minio.html": (HTML.encode(), "text/html"),
        "postgres.pdf": (pdf(PDF_TEXT), "application/pdf"),
    }
    for doc, (content, kind) in docs.items():
        resp = await service.ingest(
            "acme", "formats", doc, content, content_type=kind, title=f"About {doc}", team="infra"
        )
        assert (resp.state, resp.version, resp.unchanged) == (READY, 1, False), resp
        assert resp.chunks >= 1
        assert resp.content_sha256 == hashlib.sha256(content).hexdigest()
    for query, doc in [
        ("which device plugin advertises GPUs?", "notes.txt"),
        ("ordered partitions of events", "kafka.md"),
        ("object storage with the S3 API", "minio.html"),
        ("B-tree indexes over heap pages", "postgres.pdf"),
    ]:
        hits = await service.search("acme", "formats", query)
        assert hits[0].document_id == doc, (query, [h.document_id for h in hits])
        top = hits[0]
        assert (top.knowledge_base, top.version, top.title) == ("formats", 1, f"About {doc}")
        assert top.metadata == {"team": "infra"}
        assert top.char_end > top.char_start
    # Citations point into the document's text: for plain text, the original itself.
    for hit in await service.search("acme", "formats", "NVIDIA device plugin", top_k=10):
        if hit.document_id == "notes.txt":
            assert TXT[hit.char_start : hit.char_end] == hit.text
            assert "nvidia.com/gpu" in hit.text


async def test_dense_finds_meaning_sparse_finds_words_hybrid_both(service: testing.Service) -> None:
    await service.ingest(
        "acme",
        "modes",
        "gpu",
        b"The NVIDIA device plugin advertises graphics cards to the scheduler.",
    )
    await service.ingest(
        "acme", "modes", "pasta", b"Boil the pasta for ten minutes, then add salt and olive oil."
    )
    await service.ingest("acme", "modes", "part", b"Order spare part ZX81Q from the warehouse.")
    meaning = "GPU accelerators"  # no word in common with any document
    assert await service.search("acme", "modes", meaning, mode=SPARSE) == []
    assert [h.document_id for h in await service.search("acme", "modes", meaning, mode=DENSE)] == [
        "gpu"
    ]
    assert (await service.search("acme", "modes", meaning))[0].document_id == "gpu"
    code = "ZX81Q"
    assert [h.document_id for h in await service.search("acme", "modes", code, mode=SPARSE)] == [
        "part"
    ]
    hybrid = await service.search("acme", "modes", code, mode=HYBRID)
    assert hybrid[0].document_id == "part"
    assert 0 < hybrid[0].score <= 1.0  # a reciprocal-rank score


async def test_metadata_filters_and_listing(service: testing.Service) -> None:
    for i, team in enumerate(["infra", "ml", "infra"]):
        await service.ingest(
            "acme",
            "filters",
            f"doc-{i}",
            f"Runbook {i}: restart the GPU node pool.".encode(),
            team=team,
        )
    hits = await service.search("acme", "filters", "restart GPU nodes", top_k=10, team="infra")
    assert sorted(h.document_id for h in hits) == ["doc-0", "doc-2"]
    assert await service.search("acme", "filters", "restart GPU nodes", team="none") == []
    first = await service.stub.ListDocuments(
        knowledge_pb2.ListDocumentsRequest(
            tenant="acme",
            request=public.ListDocumentsRequest(knowledge_base="filters", page_size=2),
        )
    )
    assert [d.document_id for d in first.documents] == ["doc-0", "doc-1"]
    assert first.documents[0].state == READY
    rest = await service.stub.ListDocuments(
        knowledge_pb2.ListDocumentsRequest(
            tenant="acme",
            request=public.ListDocumentsRequest(
                knowledge_base="filters", page_size=2, page_token=first.next_page_token
            ),
        )
    )
    assert [d.document_id for d in rest.documents] == ["doc-2"]
    assert not rest.next_page_token
    everything = await service.stub.ListDocuments(
        knowledge_pb2.ListDocumentsRequest(
            tenant="acme", request=public.ListDocumentsRequest(page_size=500)
        )
    )
    assert {"filters", "formats"} <= {d.knowledge_base for d in everything.documents}


async def test_same_bytes_are_one_version_and_new_bytes_replace_the_chunks(
    service: testing.Service, sql_rows: Rows, s3_client: minio.Minio
) -> None:
    first = await service.ingest("acme", "versions", "faq", b"Alpha answers the first question.")
    again = await service.ingest("acme", "versions", "faq", b"Alpha answers the first question.")
    assert (again.version, again.unchanged, again.state) == (1, True, READY)
    assert sql_rows(
        "SELECT count(*) FROM kb_versions WHERE tenant = 'acme' AND document_id = 'faq'"
    ) == [(1,)]
    second = await service.ingest("acme", "versions", "faq", b"Beta answers the second one.")
    assert (second.version, second.unchanged, second.state) == (2, False, READY)
    index = _index(service)
    assert await index.count("acme", "versions", "faq", version=1) == 0
    assert await index.count("acme", "versions", "faq", version=2, active=True) == second.chunks
    assert await service.search("acme", "versions", "Alpha", mode=SPARSE) == []
    hit = (await service.search("acme", "versions", "Beta", mode=SPARSE))[0]
    assert (hit.document_id, hit.version) == ("faq", 2)
    assert sql_rows(
        "SELECT version, state FROM kb_versions WHERE tenant = 'acme' AND "
        "document_id = 'faq' ORDER BY version"
    ) == [(1, "SUPERSEDED"), (2, "READY")]
    # The replaced original left MinIO; the current one is there.
    assert _keys(s3_client, service.cfg.minio_bucket, "acme", "versions", "faq") == [
        objects.key("acme", "versions", "faq", second.content_sha256)
    ]
    assert first.content_sha256 != second.content_sha256
    doc = await service.document("acme", "versions", "faq")
    assert (doc.version, doc.ready_version, doc.state, doc.chunks_done) == (
        2,
        2,
        READY,
        second.chunks,
    )


async def test_delete_removes_the_document_from_every_store(
    service: testing.Service, sql_rows: Rows, s3_client: minio.Minio
) -> None:
    resp = await service.ingest("acme", "deletes", "gone.txt", TXT.encode())
    await service.ingest("acme", "deletes", "kept.txt", b"Another document stays here.")
    bucket = service.cfg.minio_bucket
    assert _keys(s3_client, bucket, "acme", "deletes", "gone.txt")
    deleted = await service.stub.Delete(
        knowledge_pb2.DeleteRequest(
            tenant="acme",
            request=public.DeleteDocumentRequest(knowledge_base="deletes", document_id="gone.txt"),
        )
    )
    assert (deleted.deleted, deleted.chunks_removed) == (True, resp.chunks)
    assert await _index(service).count("acme", "deletes", "gone.txt") == 0
    assert sql_rows("SELECT count(*) FROM kb_versions WHERE document_id = 'gone.txt'") == [(0,)]
    assert sql_rows("SELECT count(*) FROM kb_documents WHERE document_id = 'gone.txt'") == [(0,)]
    assert _keys(s3_client, bucket, "acme", "deletes", "gone.txt") == []
    assert {
        h.document_id for h in await service.search("acme", "deletes", "pods nodes GPUs", top_k=10)
    } <= {"kept.txt"}
    for call in (
        service.document("acme", "deletes", "gone.txt"),
        service.stub.Delete(
            knowledge_pb2.DeleteRequest(
                tenant="acme",
                request=public.DeleteDocumentRequest(
                    knowledge_base="deletes", document_id="gone.txt"
                ),
            )
        ),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert (await service.document("acme", "deletes", "kept.txt")).state == READY


async def test_bad_documents_end_failed_with_the_reason_and_no_chunks(
    service: testing.Service, pdf: Callable[..., bytes]
) -> None:
    cases = [
        (
            "broken.pdf",
            b"%PDF-1.7\n1 0 obj << /Type /Catalog",
            "application/pdf",
            "PDF cannot be read",
        ),
        (
            "scripts.html",
            b"<html><script>x()</script></html>",
            "text/html",
            "no text could be extracted",
        ),
        ("latin1.txt", "caf\xe9".encode("latin-1"), "text/plain", "not valid UTF-8"),
        ("blank.pdf", pdf(" "), "application/pdf", "no text could be extracted"),
    ]
    for doc, content, kind, why in cases:
        resp = await service.ingest("acme", "bad", doc, content, content_type=kind)
        assert resp.state == FAILED, resp
        assert why in resp.error
        assert await _index(service).count("acme", "bad", doc) == 0
        found = await service.document("acme", "bad", doc)
        assert (found.state, found.ready_version) == (FAILED, 0)
        assert why in found.error
    # A failed new version leaves the READY one searchable.
    await service.ingest(
        "acme",
        "bad",
        "kept.pdf",
        pdf("Heap pages hold Postgres rows."),
        content_type="application/pdf",
    )
    failed = await service.ingest(
        "acme", "bad", "kept.pdf", b"%PDF-1.4 junk", content_type="application/pdf"
    )
    assert (failed.state, failed.version) == (FAILED, 2)
    hit = (await service.search("acme", "bad", "Postgres heap pages"))[0]
    assert (hit.document_id, hit.version) == ("kept.pdf", 1)
    assert (await service.document("acme", "bad", "kept.pdf")).ready_version == 1
    # The same bytes after a failure are tried again, as a new version.
    retry = await service.ingest(
        "acme", "bad", "kept.pdf", b"%PDF-1.4 junk", content_type="application/pdf"
    )
    assert (retry.state, retry.version, retry.unchanged) == (FAILED, 3, False)


def _ingest(**fields: Any) -> knowledge_pb2.IngestRequest:
    values: dict[str, Any] = {
        "knowledge_base": "kb",
        "document_id": "d",
        "content": b"text",
        "content_type": "text/plain",
    }
    values.update(fields)
    return knowledge_pb2.IngestRequest(tenant="acme", request=public.IngestRequest(**values))


def _search(**fields: Any) -> knowledge_pb2.SearchRequest:
    values: dict[str, Any] = {"knowledge_base": "kb", "query": "q"}
    values.update(fields)
    return knowledge_pb2.SearchRequest(tenant="acme", request=public.SearchRequest(**values))


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (_ingest(content=b""), "content"),
        (_ingest(content=b"x" * 100_001), "content"),
        (_ingest(content_type="application/msword"), "content_type"),
        (_ingest(document_id="../etc"), "document_id"),
        (_ingest(document_id="a//b"), "document_id"),
        (_ingest(knowledge_base="no/slash"), "knowledge_base"),
        (_ingest(metadata={f"k{i}": "v" for i in range(5)}), "metadata"),
        (_ingest(metadata={"k": "v" * 1025}), "metadata"),
        (_ingest(title="t" * 513), "title"),
        (_search(query="  "), "query"),
        (_search(query="q" * 301), "query"),
        (_search(top_k=51), "top_k"),
        (_search(filters={f"k{i}": "v" for i in range(5)}), "filters"),
    ],
)
async def test_bad_requests_are_invalid_argument_naming_the_field(
    service: testing.Service, request_: Any, field: str
) -> None:
    method = (
        service.stub.Ingest
        if isinstance(request_, knowledge_pb2.IngestRequest)
        else service.stub.Search
    )
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await method(request_)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert errors.from_rpc_error(info.value).field == field


async def test_another_tenant_sees_nothing(service: testing.Service, sql_rows: Rows) -> None:
    await service.ingest("acme", "shared-name", "secret.txt", b"Acme's launch code is 4711.")
    assert (await service.search("acme", "shared-name", "launch code"))[0].document_id == (
        "secret.txt"
    )
    for mode in (HYBRID, DENSE, SPARSE):
        assert await service.search("globex", "shared-name", "launch code 4711", mode=mode) == []
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await service.document("globex", "shared-name", "secret.txt")
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    listed = await service.stub.ListDocuments(
        knowledge_pb2.ListDocumentsRequest(tenant="globex", request=public.ListDocumentsRequest())
    )
    assert list(listed.documents) == []
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await service.stub.Delete(
            knowledge_pb2.DeleteRequest(
                tenant="globex",
                request=public.DeleteDocumentRequest(
                    knowledge_base="shared-name", document_id="secret.txt"
                ),
            )
        )
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    # Globex's own document of the same name is its own.
    await service.ingest("globex", "shared-name", "secret.txt", b"Globex bakes bread.")
    assert (await service.search("acme", "shared-name", "launch code"))[0].text == (
        "Acme's launch code is 4711."
    )
    assert sql_rows("SELECT count(*) FROM kb_documents WHERE document_id = 'secret.txt'") == [(2,)]


async def test_ingest_without_wait_reports_progress_until_ready(service: testing.Service) -> None:
    text = " ".join(f"Paragraph {i} is about scheduling pods on GPU nodes." for i in range(300))
    resp = await service.ingest("acme", "async", "long.txt", text.encode(), wait=False)
    assert resp.state in (public.DOCUMENT_STATE_PENDING, public.DOCUMENT_STATE_INDEXING)
    assert resp.chunks == 0
    seen: set[int] = set()

    def done(doc: public.Document) -> bool:
        seen.add(doc.state)
        return doc.state in testing.TERMINAL

    final = await service.until("acme", "async", "long.txt", done)
    assert final.state == READY
    assert final.chunks == final.chunks_done > 10
    assert READY in seen


# --- IngestStream --------------------------------------------------------------------------


def _header(tenant: str = "acme", **fields: Any) -> knowledge_pb2.IngestChunk:
    values: dict[str, Any] = {
        "knowledge_base": "streams",
        "document_id": "bad.txt",
        "content_type": "text/plain",
    }
    values.update(fields)
    return knowledge_pb2.IngestChunk(
        tenant=tenant, chunk=public.IngestChunk(header=public.IngestHeader(**values))
    )


def _data(data: bytes, *, last: bool = False, tenant: str = "") -> knowledge_pb2.IngestChunk:
    return knowledge_pb2.IngestChunk(tenant=tenant, chunk=public.IngestChunk(data=data, last=last))


def _stored(sql_rows: Rows, s3_client: minio.Minio, bucket: str, kb: str, doc: str) -> Any:
    """What the stores hold of a document of acme: its version rows and its originals."""
    return (
        sql_rows(
            "SELECT count(*) FROM kb_versions WHERE tenant = 'acme' AND knowledge_base = %s "
            "AND document_id = %s",
            kb,
            doc,
        )[0][0],
        _keys(s3_client, bucket, "acme", kb, doc),
    )


async def test_a_streamed_document_is_stored_whole_and_cited(
    service: testing.Service, sql_rows: Rows, s3_client: minio.Minio
) -> None:
    text = TXT.encode()
    pieces = [text[i : i + 40] for i in range(0, len(text), 40)]
    resp = await service.ingest_stream(
        "acme", "streams", "notes.txt", pieces, title="Notes", team="infra"
    )
    assert (resp.state, resp.version, resp.unchanged) == (READY, 1, False), resp
    assert resp.content_sha256 == hashlib.sha256(text).hexdigest()
    doc = await service.document("acme", "streams", "notes.txt")
    assert (doc.size_bytes, doc.title, dict(doc.metadata)) == (
        len(text),
        "Notes",
        {"team": "infra"},
    )
    hit = (await service.search("acme", "streams", "which device plugin advertises GPUs?"))[0]
    assert (hit.document_id, hit.version) == ("notes.txt", 1)
    assert text.decode()[hit.char_start : hit.char_end] == hit.text
    # The same bytes by Ingest, or in other pieces, make no new version.
    again = await service.ingest("acme", "streams", "notes.txt", text, title="Notes", team="infra")
    assert (again.version, again.unchanged) == (1, True)
    split = await service.ingest_stream(
        "acme", "streams", "notes.txt", [text, b""], title="Notes", team="infra"
    )
    assert (split.version, split.unchanged) == (1, True)
    assert _stored(sql_rows, s3_client, service.cfg.minio_bucket, "streams", "notes.txt") == (
        1,
        [objects.key("acme", "streams", "notes.txt", resp.content_sha256)],
    )


LIMIT = 100_000  # the module's max_document_bytes
BAD_STREAMS: dict[str, tuple[list[knowledge_pb2.IngestChunk], str, str]] = {
    "empty": ([], "header", "first message must carry the header"),
    "data first": ([_data(b"x", last=True)], "header", "first message must carry the header"),
    "no tenant": ([_header(tenant=""), _data(b"x", last=True)], "tenant", "tenant is required"),
    "tenant again": (
        [_header(), _data(b"x", last=True, tenant="globex")],
        "tenant",
        "first message only",
    ),
    "two headers": ([_header(), _header(tenant=""), _data(b"x", last=True)], "header", "header"),
    "bad id": (
        [_header(document_id="../etc"), _data(b"x", last=True)],
        "document_id",
        "document_id",
    ),
    "bad type": (
        [_header(content_type="application/msword"), _data(b"x", last=True)],
        "content_type",
        "content_type",
    ),
    "no last": ([_header(), _data(b"half a doc")], "last", "without a message marked last"),
    "after last": (
        [_header(), _data(b"x", last=True), _data(b"y")],
        "last",
        "followed the one marked last",
    ),
    "empty content": ([_header(), _data(b"", last=True)], "content", "content is empty"),
    "over the limit": (
        [_header(), *[_data(b"x" * 30_000) for _ in range(4)], _data(b"", last=True)],
        "content",
        f"over {LIMIT} bytes, the limit (120000 received so far)",
    ),
    "declared over the limit": (
        [_header(size_bytes=LIMIT + 1), _data(b"x", last=True)],
        "size_bytes",
        f"the limit is {LIMIT} bytes",
    ),
    "fewer than declared": (
        [_header(size_bytes=10), _data(b"x" * 9, last=True)],
        "size_bytes",
        "carried 9 bytes; its header said 10",
    ),
    "more than declared": (
        [_header(size_bytes=10), _data(b"x" * 11, last=True)],
        "size_bytes",
        "more bytes than its header said (10",
    ),
}


@pytest.mark.parametrize("case", list(BAD_STREAMS))
async def test_a_bad_stream_is_invalid_argument_naming_the_field_and_stores_nothing(
    service: testing.Service, sql_rows: Rows, s3_client: minio.Minio, case: str
) -> None:
    messages, field, why = BAD_STREAMS[case]
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await service.stub.IngestStream(iter(messages), timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value
    assert errors.from_rpc_error(info.value).field == field
    assert why in str(info.value.details())
    assert _stored(sql_rows, s3_client, service.cfg.minio_bucket, "streams", "bad.txt") == (0, [])


async def test_a_stream_over_the_limit_is_refused_as_its_bytes_pass_it(
    service: testing.Service, sql_rows: Rows, s3_client: minio.Minio
) -> None:
    never = asyncio.Event()

    async def endless() -> AsyncIterator[knowledge_pb2.IngestChunk]:
        yield _header()
        for _ in range(4):
            yield _data(b"x" * 30_000)
        await never.wait()  # no last message, no end: only the limit can end the call

    with pytest.raises(grpc.aio.AioRpcError) as info:
        await service.stub.IngestStream(endless(), timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"over {LIMIT} bytes, the limit" in str(info.value.details())
    assert _stored(sql_rows, s3_client, service.cfg.minio_bucket, "streams", "bad.txt") == (0, [])


async def test_a_stream_broken_off_midway_stores_nothing(
    service: testing.Service, sql_rows: Rows, s3_client: minio.Minio
) -> None:
    sent, never = asyncio.Event(), asyncio.Event()

    async def half() -> AsyncIterator[knowledge_pb2.IngestChunk]:
        yield _header(document_id="half.txt")
        yield _data(TXT.encode())
        sent.set()
        await never.wait()

    before = testing.handled("IngestStream")
    call = service.stub.IngestStream(half(), timeout=30)
    await sent.wait()
    await testing.until(lambda: testing.in_flight() > 0, "the upload reaching the service")
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    # Only once the service has ended the call is "nothing stored" the final word.
    await testing.until(lambda: testing.handled("IngestStream") > before, "the call's end")
    assert _stored(sql_rows, s3_client, service.cfg.minio_bucket, "streams", "half.txt") == (0, [])
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await service.document("acme", "streams", "half.txt")
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
