"""Through the real gateway (a process, API keys of two tenants) to the knowledge service:
tenant isolation, roles, the SDK's ingest and search with citations, and ``aionctl kb``."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from aion.api.v1 import knowledge_pb2
from aion.gateway import keys as gateway_keys
from aion.infra.devstack import suite as suite_testing
from aion.knowledge import testing
from aion.sdk import AsyncClient, errors

# Tenants of their own: the session's database is shared with the other modules.
ACME, GLOBEX = f"acme-{uuid.uuid4().hex[:6]}", f"globex-{uuid.uuid4().hex[:6]}"
KEYS = {
    "acme-admin": (ACME, ["admin"]),
    "acme-viewer": (ACME, ["viewer"]),
    "globex-admin": (GLOBEX, ["admin"]),
}
AIONCTL = str(Path(sys.executable).with_name("aionctl"))


@pytest.fixture(scope="module")
async def service(new_service: object) -> AsyncIterator[testing.Service]:
    async with new_service() as svc:  # type: ignore[operator]
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
