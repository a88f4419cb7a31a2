"""Oversized ingests and searches are refused INVALID_ARGUMENT, with nothing written anywhere
(Postgres, Qdrant, MinIO), at the service's default limits."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import minio
import pytest

from aion.api.knowledge.v1 import knowledge_pb2
from aion.api.v1 import knowledge_pb2 as public
from aion.core import errors
from aion.knowledge import objects, testing

KB, DOC = "limits", "doc.txt"


@pytest.fixture(scope="module")
async def service(
    new_service: Callable[..., testing.Service],
) -> AsyncIterator[testing.Service]:
    async with new_service() as svc:  # the defaults a deployment gets
        yield svc


def _ingest(tenant: str, **fields: Any) -> knowledge_pb2.IngestRequest:
    values: dict[str, Any] = {
        "knowledge_base": KB,
        "document_id": DOC,
        "content": b"GPUs are advertised by the device plugin.",
        "content_type": "text/plain",
    }
    values.update(fields)
    return knowledge_pb2.IngestRequest(tenant=tenant, request=public.IngestRequest(**values))


def _search(tenant: str, **fields: Any) -> knowledge_pb2.SearchRequest:
    values: dict[str, Any] = {"knowledge_base": KB, "query": "device plugin"}
    values.update(fields)
    return knowledge_pb2.SearchRequest(tenant=tenant, request=public.SearchRequest(**values))


OVERSIZED = [
    ("content", {"content": b"word " * (8 * 1024 * 1024 // 5 + 1)}),
    ("metadata", {"metadata": {f"k{i}": "v" for i in range(33)}}),  # 32 keys at most
    ("metadata", {"metadata": {"k" * 129: "v"}}),  # keys of 128 characters at most
    ("metadata", {"metadata": {"k": "v" * 1025}}),  # values of 1 KiB at most
    ("metadata", {"metadata": {"": "v"}}),
    # Postgres holds no NUL: found by tests/e2e/test_fuzz_public.py, where the original
    # was written to MinIO before the version row failed (INTERNAL).
    ("metadata", {"metadata": {"k": "a\x00b"}}),
    ("metadata", {"metadata": {"k\x00": "v"}}),
    ("title", {"title": "t\x00"}),
]


@pytest.mark.parametrize(
    ("field", "fields"),
    OVERSIZED,
    ids=[
        "content",
        "keys",
        "key-length",
        "value-length",
        "empty-key",
        "nul-value",
        "nul-key",
        "nul-title",
    ],
)
async def test_an_oversized_ingest_writes_nothing(
    service: testing.Service,
    sql_rows: Callable[..., list[tuple[Any, ...]]],
    s3_client: minio.Minio,
    field: str,
    fields: dict[str, Any],
) -> None:
    tenant = f"lim-{field}-{len(str(fields))}"
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await service.stub.Ingest(_ingest(tenant, **fields), timeout=60)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert errors.from_rpc_error(info.value).field == field
    assert sql_rows("SELECT count(*) FROM kb_versions WHERE tenant = %s", tenant) == [(0,)]
    assert sql_rows("SELECT count(*) FROM kb_documents WHERE tenant = %s", tenant) == [(0,)]
    assert (
        list(
            s3_client.list_objects(
                service.cfg.minio_bucket, prefix=objects.prefix(tenant, KB, DOC), recursive=True
            )
        )
        == []
    )
    assert service.index is not None
    assert await service.index.count(tenant, KB, DOC) == 0


@pytest.mark.parametrize(
    ("field", "fields"),
    [
        ("query", {"query": "q" * 2049}),
        ("top_k", {"top_k": 51}),
        ("top_k", {"top_k": -1}),
        ("filters", {"filters": {f"k{i}": "v" for i in range(33)}}),
        ("filters", {"filters": {"k": "v" * 1025}}),
    ],
)
async def test_an_oversized_search_is_invalid_argument(
    service: testing.Service, field: str, fields: dict[str, Any]
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await service.stub.Search(_search("lim-search", **fields), timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert errors.from_rpc_error(info.value).field == field


async def test_an_upload_whose_version_cannot_be_recorded_leaves_no_original(
    service: testing.Service, knowledge_dsn: str, s3_client: minio.Minio
) -> None:
    """Postgres refuses the version row after the original reached MinIO: the bytes this
    upload put there are taken back; bytes a recorded version already holds stay."""
    import psycopg

    kept, lost = "lim-dbfail-kept", "lim-dbfail-lost"
    # Recorded once: its original is in MinIO before the failure below.
    await service.stub.Ingest(_ingest(kept), timeout=60)
    fail = (
        "CREATE OR REPLACE FUNCTION lim_refuse() RETURNS trigger LANGUAGE plpgsql AS $$ "
        "BEGIN RAISE EXCEPTION 'refused by the test' USING ERRCODE = '57P03'; END $$; "
        "CREATE TRIGGER lim_refuse BEFORE INSERT ON kb_versions FOR EACH ROW "
        f"WHEN (NEW.tenant IN ('{kept}', '{lost}')) EXECUTE FUNCTION lim_refuse()"
    )
    # Asynchronously: the trigger waits for the lock on kb_versions, which the service,
    # on this event loop, holds while it indexes the first version.
    async with await psycopg.AsyncConnection.connect(knowledge_dsn, autocommit=True) as conn:
        await conn.execute(fail)
    try:
        for tenant, fields in ((lost, {}), (kept, {"title": "a new version, same bytes"})):
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await service.stub.Ingest(_ingest(tenant, **fields), timeout=60)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE, info.value
    finally:
        async with await psycopg.AsyncConnection.connect(knowledge_dsn, autocommit=True) as conn:
            await conn.execute("DROP TRIGGER lim_refuse ON kb_versions")

    def originals(tenant: str) -> list[str]:
        return [
            str(o.object_name)
            for o in s3_client.list_objects(
                service.cfg.minio_bucket, prefix=objects.prefix(tenant, KB, DOC), recursive=True
            )
        ]

    assert originals(lost) == []
    assert len(originals(kept)) == 1
