"""Through the real gateway (a process, API keys of two tenants) to the knowledge service:
tenant isolation, roles, the SDK's ingest and search with citations, and ``aionctl kb``;
uploads by IngestStream of documents over the gateway's largest message (lowered here to
64 KiB, and the knowledge service's document limit to 128 KiB, so the documents stay small
for the real embedding model), over the limit, and broken off."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import minio
import pytest

from aion.api.v1 import knowledge_pb2, knowledge_pb2_grpc
from aion.gateway import keys as gateway_keys
from aion.infra.devstack import suite as suite_testing
from aion.knowledge import objects, testing
from aion.sdk import AsyncClient, errors

# Tenants of their own: the session's database is shared with the other modules.
ACME, GLOBEX = f"acme-{uuid.uuid4().hex[:6]}", f"globex-{uuid.uuid4().hex[:6]}"
KEYS = {
    "acme-admin": (ACME, ["admin"]),
    "acme-viewer": (ACME, ["viewer"]),
    "globex-admin": (GLOBEX, ["admin"]),
}
AIONCTL = str(Path(sys.executable).with_name("aionctl"))


# The gateway's largest message, and the knowledge service's largest document.
MAX_MESSAGE = 64 * 1024
LIMIT = 128 * 1024


@pytest.fixture(scope="module")
async def service(new_service: object) -> AsyncIterator[testing.Service]:
    async with new_service(max_document_bytes=LIMIT) as svc:  # type: ignore[operator]
        yield svc


@pytest.fixture(scope="module")
def gateway(service: testing.Service, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The gateway as a process in front of the module's knowledge service; its target."""
    port = suite_testing.free_port()
    log = tmp_path_factory.mktemp("gateway") / "gateway.log"
    # The gateway is configured with the keys' hashes (aion.gateway.keys), never the keys.
    keys = [
        {"hash": gateway_keys.hash_key(k), "tenant": t, "roles": r} for k, (t, r) in KEYS.items()
    ]
    env = {
        **os.environ,
        **testing.CA.env(log.parent / "tls", "gateway"),
        "AION_GATEWAY_PORT": str(port),
        "AION_GATEWAY_KNOWLEDGE_TARGET": service.address,
        "AION_GATEWAY_API_KEYS": json.dumps(keys),
        "AION_GATEWAY_ALLOW_ANONYMOUS": "false",
        "AION_GATEWAY_MAX_MESSAGE_BYTES": str(MAX_MESSAGE),
    }
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "aion.gateway"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    target = f"127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while suite_testing.health_status(target) != "SERVING":
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail("the gateway did not start:\n" + log.read_text()[-3000:], pytrace=False)
            time.sleep(0.2)
        yield target
    finally:
        proc.terminate()
        proc.wait(timeout=15)


def _client(gateway: str, key: str) -> AsyncClient:
    return AsyncClient(gateway, api_key=key, timeout=60)


# The knowledge service runs on this process's event loop: the tests are async, and
# aionctl runs on a thread, so that the loop keeps serving while they wait.
async def test_tenants_see_only_their_own_documents(gateway: str) -> None:
    async with _client(gateway, "acme-admin") as acme, _client(gateway, "globex-admin") as globex:
        resp = await acme.ingest(
            "handbook",
            "vacation.md",
            title="Vacation policy",
            content="# Vacation\n\nEmployees get 30 days of paid vacation.",
            content_type="text/markdown",
            metadata={"team": "hr"},
        )
        assert (resp.state, resp.version) == (knowledge_pb2.DOCUMENT_STATE_READY, 1)
        hit = (await acme.search("handbook", "how many vacation days?"))[0]
        assert (hit.document_id, hit.version, hit.title) == ("vacation.md", 1, "Vacation policy")
        assert hit.metadata["team"] == "hr"
        assert "30 days" in hit.text
        for mode in ("hybrid", "dense", "sparse"):
            assert await globex.search("handbook", "how many vacation days?", mode=mode) == []
        with pytest.raises(errors.NotFound):
            await globex.get_document("handbook", "vacation.md")
        assert list((await globex.list_documents()).documents) == []
        with pytest.raises(errors.NotFound):
            await globex.delete_document("handbook", "vacation.md")
        assert (await acme.get_document("handbook", "vacation.md")).state == (
            knowledge_pb2.DOCUMENT_STATE_READY
        )
        assert [d.document_id for d in (await acme.list_documents("handbook")).documents] == [
            "vacation.md"
        ]


async def test_viewers_search_but_do_not_ingest(gateway: str) -> None:
    async with _client(gateway, "acme-viewer") as viewer:
        with pytest.raises(errors.PermissionDenied):
            await viewer.ingest("handbook", "x.txt", content="x")
        with pytest.raises(errors.PermissionDenied):
            await viewer.delete_document("handbook", "vacation.md")
        await viewer.search("handbook", "vacation")  # allowed


async def _aionctl(gateway: str, *args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run,
        [AIONCTL, "--target", gateway, "--api-key", "acme-admin", *args],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


async def test_aionctl_kb_ingests_a_folder_of_every_format(gateway: str, tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    (docs / "guides").mkdir(parents=True)
    (docs / "intro.txt").write_text("Kubernetes schedules pods onto nodes.")
    (docs / "guides" / "kafka.md").write_text("# Kafka\n\nKafka keeps ordered partitions.")
    (docs / "guides" / "minio.html").write_text("<p>MinIO stores objects in buckets.</p>")
    (docs / "postgres.pdf").write_bytes(testing.make_pdf("Postgres stores rows in pages."))
    (docs / "broken.pdf").write_bytes(b"%PDF-1.4 not really")
    (docs / "image.png").write_bytes(b"\x89PNG")  # not a supported type: skipped
    out = await _aionctl(gateway, "kb", "ingest", "--kb", "cli", "-m", "source=cli", str(docs))
    assert out.returncode == 1, out  # one document failed
    assert "5 files: 4 ready" in out.stderr
    assert "broken.pdf: the PDF cannot be read" in out.stderr
    again = await _aionctl(
        gateway, "kb", "ingest", "--kb", "cli", "-m", "source=cli", str(docs / "intro.txt")
    )
    assert again.returncode == 0, again
    assert "1 unchanged" in again.stderr
    status = await _aionctl(gateway, "kb", "status", "--kb", "cli", "--json")
    assert status.returncode == 0, status
    states = {d["document_id"]: d["state"] for d in map(json.loads, status.stdout.splitlines())}
    assert states == {
        "intro.txt": "DOCUMENT_STATE_READY",
        "guides/kafka.md": "DOCUMENT_STATE_READY",
        "guides/minio.html": "DOCUMENT_STATE_READY",
        "postgres.pdf": "DOCUMENT_STATE_READY",
        "broken.pdf": "DOCUMENT_STATE_FAILED",
    }
    table = await _aionctl(gateway, "kb", "status", "--kb", "cli")
    assert "guides/kafka.md" in table.stdout
    assert "READY" in table.stdout
    found = await _aionctl(
        gateway, "kb", "search", "--kb", "cli", "--filter", "source=cli", "ordered partitions"
    )
    assert found.returncode == 0, found
    assert found.stdout.splitlines()[0].split()[1:3] == ["guides/kafka.md", "v1"]
    deleted = await _aionctl(gateway, "kb", "delete", "--kb", "cli", "guides/kafka.md")
    assert deleted.returncode == 0, deleted
    missing = await _aionctl(gateway, "kb", "status", "--kb", "cli", "guides/kafka.md")
    assert missing.returncode == 2


# --- uploads by IngestStream ---------------------------------------------------------------

# Repetitive but real text with one fact in the middle, over the gateway's largest message;
# long words keep its chunks (and so the embedding model's work) few.
SENTENCES = [
    "International organizations require comprehensive documentation of responsibilities.",
    "Infrastructure administration depends on communication between representatives.",
    "Environmental considerations influence transportation recommendations independently.",
    "Understanding requirements approximately determines organizational documentation.",
]
NEEDLE = "The combination of the archive vault is 4711, kept by the night porter."


def _manual() -> bytes:
    lines = [f"{i}. {SENTENCES[i % len(SENTENCES)]}" for i in range(900)]
    lines.insert(450, NEEDLE)
    text = "\n".join(lines).encode()
    assert MAX_MESSAGE < len(text) < LIMIT
    return text


def _stored(sql_rows: Any, s3: minio.Minio, service: testing.Service, kb: str, doc: str) -> Any:
    """What Postgres, MinIO and Qdrant hold of one of acme's documents."""
    assert service.index is not None
    rows = sql_rows(
        "SELECT count(*) FROM kb_versions WHERE tenant = %s AND knowledge_base = %s "
        "AND document_id = %s",
        ACME,
        kb,
        doc,
    )[0][0]
    originals = list(
        s3.list_objects(service.cfg.minio_bucket, prefix=objects.prefix(ACME, kb, doc))
    )
    return rows, originals, service.index.count(ACME, kb, doc)


async def _nothing_stored(
    sql_rows: Any, s3: minio.Minio, service: testing.Service, doc: str
) -> None:
    rows, originals, points = _stored(sql_rows, s3, service, "big", doc)
    assert (rows, originals, await points) == (0, [], 0)


async def test_a_document_over_the_gateways_largest_message_goes_by_stream(
    gateway: str, service: testing.Service, tmp_path: Path
) -> None:
    manual = _manual()
    async with _client(gateway, "acme-admin") as acme:
        with pytest.raises(errors.ResourceExhausted):  # too large for one message
            await acme.ingest("big", "manual.txt", content=manual, stream=False)
        resp = await acme.ingest(
            "big",
            "manual.txt",
            content=manual,
            title="manual.txt",
            metadata={"source": "cli"},
            stream=True,
        )
        assert (resp.state, resp.version, resp.unchanged) == (
            knowledge_pb2.DOCUMENT_STATE_READY,
            1,
            False,
        ), resp
        assert resp.content_sha256 == hashlib.sha256(manual).hexdigest()
        doc = await acme.get_document("big", "manual.txt")
        assert doc.size_bytes == len(manual)
        hit = (await acme.search("big", "what is the combination of the archive vault?"))[0]
        assert (hit.document_id, hit.version) == ("manual.txt", 1)
        assert NEEDLE in hit.text
        assert manual.decode()[hit.char_start : hit.char_end] == hit.text
        # A file, read and sent in pieces: the same bytes, so no new version.
        path = tmp_path / "manual.txt"
        path.write_bytes(manual)
        again = await acme.ingest_file("big", "manual.txt", path, metadata={"source": "cli"})
        assert (again.version, again.unchanged) == (1, True)
    # aionctl streams files too.
    out = await _aionctl(gateway, "kb", "ingest", "--kb", "big", "-m", "source=cli", str(path))
    assert out.returncode == 0, out
    assert "1 files: 1 ready" in out.stderr, out.stderr
    assert "1 unchanged" in out.stderr, out.stderr
    # The other tenant sees none of it; a viewer may not upload.
    async with _client(gateway, "globex-admin") as globex:
        assert await globex.search("big", "archive vault combination") == []
        with pytest.raises(errors.NotFound):
            await globex.get_document("big", "manual.txt")
    async with _client(gateway, "acme-viewer") as viewer:
        with pytest.raises(errors.PermissionDenied):
            await viewer.ingest("big", "viewer.txt", content=manual, stream=True)
        with pytest.raises(errors.PermissionDenied):
            await viewer.ingest_file("big", "viewer.txt", path)


async def _pieces(
    *pieces: knowledge_pb2.IngestChunk, then: asyncio.Event | None = None
) -> AsyncIterator[knowledge_pb2.IngestChunk]:
    for piece in pieces:
        yield piece
    if then is not None:
        await then.wait()  # no last message, and no end


def _header(doc: str, **fields: Any) -> knowledge_pb2.IngestChunk:
    return knowledge_pb2.IngestChunk(
        header=knowledge_pb2.IngestHeader(
            knowledge_base="big", document_id=doc, content_type="text/plain", **fields
        )
    )


async def test_an_upload_over_the_limit_is_invalid_argument_and_stores_nothing(
    gateway: str, service: testing.Service, s3_client: minio.Minio, sql_rows: Any
) -> None:
    huge = b"Repeated words fill this document. " * (LIMIT // 30)
    assert len(huge) > LIMIT
    async with _client(gateway, "acme-admin") as acme:
        # The SDK says the size in the header: refused before the bytes.
        with pytest.raises(errors.InvalidArgument, match=f"the limit is {LIMIT} bytes") as info:
            await acme.ingest("big", "huge.txt", content=huge, stream=True)
        assert info.value.field == "size_bytes"
    # A stream that does not say its size is refused as its bytes pass the limit, though it
    # never ends.
    never = asyncio.Event()
    pieces = [
        knowledge_pb2.IngestChunk(data=huge[i : i + 32_768]) for i in range(0, 163_840, 32_768)
    ]
    async with grpc.aio.insecure_channel(gateway) as channel:
        stub: knowledge_pb2_grpc.KnowledgeAsyncStub = knowledge_pb2_grpc.KnowledgeStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as raw:
            await stub.IngestStream(
                _pieces(_header("huge.txt"), *pieces, then=never),
                metadata=(("x-api-key", "acme-admin"),),
                timeout=60,
            )
    assert raw.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"content is over {LIMIT} bytes, the limit" in str(raw.value.details())
    await _nothing_stored(sql_rows, s3_client, service, "huge.txt")


async def test_an_upload_broken_off_midway_stores_nothing(
    gateway: str, service: testing.Service, s3_client: minio.Minio, sql_rows: Any
) -> None:
    manual = _manual()
    before = testing.handled("IngestStream")
    sent, never = asyncio.Event(), asyncio.Event()

    async def half() -> AsyncIterator[knowledge_pb2.IngestChunk]:
        async for piece in _pieces(
            _header("half.txt"),
            *(
                knowledge_pb2.IngestChunk(data=manual[i : i + 16_384])
                for i in range(0, 49_152, 16_384)
            ),
        ):
            yield piece
        sent.set()
        await never.wait()

    async with grpc.aio.insecure_channel(gateway) as channel:
        stub: knowledge_pb2_grpc.KnowledgeAsyncStub = knowledge_pb2_grpc.KnowledgeStub(channel)
        call = stub.IngestStream(half(), metadata=(("x-api-key", "acme-admin"),), timeout=60)
        await sent.wait()
        await testing.until(lambda: testing.in_flight() > 0, "the upload reaching the service")
        assert testing.handled("IngestStream") == before  # still open there
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
    # The gateway's call to the knowledge service ends too (cancelled, or refused for want
    # of its last message); only then is "nothing stored" the final word.
    await testing.until(
        lambda: testing.handled("IngestStream") > before, "the knowledge service seeing it end"
    )
    await _nothing_stored(sql_rows, s3_client, service, "half.txt")
    async with _client(gateway, "acme-admin") as acme:
        with pytest.raises(errors.NotFound):
            await acme.get_document("big", "half.txt")
