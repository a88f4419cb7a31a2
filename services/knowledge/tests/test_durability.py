"""A worker killed in the middle of a document (SIGKILL, the service as a process):
no search sees half of it, and the next worker resumes it, or ends it FAILED, with
no orphan vector left either way."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from aion.api.knowledge.v1 import knowledge_pb2, knowledge_pb2_grpc
from aion.api.v1 import knowledge_pb2 as public
from aion.infra.devstack import suite as suite_testing
from aion.knowledge import qdrant_index, testing
from aion.knowledge import settings as knowledge_settings

Rows = Callable[..., list[tuple[Any, ...]]]
TEXT = " ".join(
    f"Note {i}: the scheduler placed pod number {i} on GPU node {i % 17} after "
    f"filtering {i % 5} tainted nodes."
    for i in range(300)
)


class Process:
    """``python -m aion.knowledge`` with these settings, logging to a file."""

    def __init__(self, values: dict[str, Any], log: Path) -> None:
        self.port = suite_testing.free_port()
        self.health_port = suite_testing.free_port()
        env = {
            **os.environ,
            **testing.CA.env(log.parent / "tls", "knowledge"),
            "AION_KNOWLEDGE_PORT": str(self.port),
            "AION_KNOWLEDGE_HEALTH_PORT": str(self.health_port),
        }
        for key, value in values.items():
            env[f"AION_KNOWLEDGE_{key.upper()}"] = str(value)
        self.log = log
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "aion.knowledge"],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + 60
        while suite_testing.health_status(f"127.0.0.1:{self.health_port}") != "SERVING":
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.proc.kill()
                pytest.fail(
                    "the knowledge service did not start:\n"
                    + log.read_text(errors="replace")[-3000:],
                    pytrace=False,
                )
            time.sleep(0.2)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        self.proc.wait(timeout=30)


@pytest.fixture
def process_settings(base_settings: dict[str, Any], tmp_path: Path) -> dict[str, Any]:
    values = {
        **base_settings,
        "topic_prefix": f"t{uuid.uuid4().hex[:8]}.",
        "qdrant_path": str(tmp_path / "qdrant"),
        "workers": 1,
        "embed_batch": 2,
        "embed_concurrency": 1,
        "lease_s": 3.0,
        "heartbeat_s": 0.5,
        "reaper_interval_s": 0.5,
        "log_level": "INFO",
    }
    values.pop("port")
    values.pop("health_port")
    return values


async def _document(
    stub: knowledge_pb2_grpc.KnowledgeServiceAsyncStub, tenant: str
) -> public.Document:
    return await stub.GetDocument(
        knowledge_pb2.GetDocumentRequest(
            tenant=tenant,
            request=public.GetDocumentRequest(knowledge_base="kb", document_id="big.txt"),
        ),
        timeout=10,
    )


async def _until(
    port: int, tenant: str, done: Callable[[public.Document], bool], timeout: float
) -> public.Document:
    async with testing.channel(f"127.0.0.1:{port}") as channel:
        stub = knowledge_pb2_grpc.KnowledgeServiceStub(channel)
        deadline = time.monotonic() + timeout
        while True:
            doc = await _document(stub, tenant)
            if done(doc):
                return doc
            assert time.monotonic() < deadline, f"still {doc} after {timeout}s"
            await asyncio.sleep(0.05)


@pytest.mark.parametrize("max_attempts", [3, 1], ids=["resumed", "given-up"])
async def test_a_worker_killed_mid_document_leaves_no_orphan_vectors(
    process_settings: dict[str, Any], tmp_path: Path, sql_rows: Rows, max_attempts: int
) -> None:
    tenant = f"t{uuid.uuid4().hex[:8]}"
    cfg = knowledge_settings.KnowledgeSettings(
        **{k: v for k, v in process_settings.items() if k != "log_level"}
    )
    first = Process(process_settings, tmp_path / "first.log")
    try:
        async with testing.channel(f"127.0.0.1:{first.port}") as channel:
            stub = knowledge_pb2_grpc.KnowledgeServiceStub(channel)
            resp = await stub.Ingest(
                knowledge_pb2.IngestRequest(
                    tenant=tenant,
                    request=public.IngestRequest(
                        knowledge_base="kb",
                        document_id="big.txt",
                        content=TEXT.encode(),
                        content_type="text/plain",
                    ),
                ),
                timeout=30,
            )
            assert resp.state == public.DOCUMENT_STATE_PENDING
        mid = await _until(first.port, tenant, lambda d: d.chunks_done >= 10, timeout=60)
        first.stop(signal.SIGKILL)
    finally:
        first.stop(signal.SIGKILL)
    assert mid.state == public.DOCUMENT_STATE_INDEXING
    total = mid.chunks
    assert mid.chunks_done < total, "the document was indexed before the kill; make it longer"
    # What the dead worker wrote is there, and none of it is searchable.
    async with qdrant_index.open_index(cfg) as index:
        partial = await index.count(tenant, "kb", "big.txt", version=1)
        assert 10 <= partial < total
        assert await index.count(tenant, "kb", "big.txt", active=True) == 0
        assert (
            await index.search(
                tenant, "kb", mode="sparse", dense=None, text="scheduler", top_k=5, filters={}
            )
            == []
        )
    # The next worker embeds in big batches: only the first one had to be slow.
    second = Process(
        {
            **process_settings,
            "max_attempts": max_attempts,
            "embed_batch": 32,
            "embed_concurrency": 2,
        },
        tmp_path / "second.log",
    )
    try:
        final = await _until(
            second.port,
            tenant,
            lambda d: d.state in (public.DOCUMENT_STATE_READY, public.DOCUMENT_STATE_FAILED),
            timeout=120,
        )
    finally:
        second.stop()
    assert sql_rows("SELECT attempts FROM kb_versions WHERE tenant = %s", tenant) == [
        (1 if max_attempts == 1 else 2,)
    ]
    async with qdrant_index.open_index(cfg) as index:
        stored = await index.count(tenant, "kb", "big.txt")
        active = await index.count(tenant, "kb", "big.txt", version=1, active=True)
    if max_attempts == 1:
        assert final.state == public.DOCUMENT_STATE_FAILED
        assert "interrupted 1 times" in final.error
        assert stored == 0
    else:
        assert final.state == public.DOCUMENT_STATE_READY, final
        assert final.chunks == final.chunks_done == total
        assert stored == active == total
