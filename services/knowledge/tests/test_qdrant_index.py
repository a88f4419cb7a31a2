"""QdrantIndex on qdrant-client's real local mode: in memory and on disk."""

from __future__ import annotations

import math
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from qdrant_client import AsyncQdrantClient, models

from aion.core import errors
from aion.core import settings as core_settings
from aion.knowledge import index, qdrant_index, settings, sparse


def _chunks(tenant: str, kb: str, doc: str, *texts: str, **meta: str) -> list[index.Chunk]:
    return [index.Chunk(tenant=tenant, knowledge_base=kb, document_id=doc, index=i, text=t,
                        metadata=meta) for i, t in enumerate(texts)]


async def _put(store: index.Index, tenant: str, kb: str, doc: str, *texts: str,
               **meta: str) -> None:
    await store.replace(tenant, kb, doc, _chunks(tenant, kb, doc, *texts, **meta))


async def _search(store: index.Index, query: str, *, tenant: str = "acme", kb: str = "kb",
                  top_k: int = 10,
                  filters: dict[str, str] | None = None) -> list[tuple[str, int, float]]:
    hits = await store.search(tenant, kb, query, top_k=top_k, filters=filters or {})
    return [(h.chunk.document_id, h.chunk.index, h.score) for h in hits]


# A metadata key no payload path could address: dots and quotes.
ODD = 'odd.key "x"'


def _bm25(*, tf: int, words: int, df: int, n: int) -> float:
    """The score one query term earns, by the textbook formula (fixed average length)."""
    idf = math.log((n - df + 0.5) / (df + 0.5) + 1)
    norm = sparse.K1 * (1 - sparse.B + sparse.B * words / sparse.AVG_WORDS)
    return idf * tf * (sparse.K1 + 1) / (tf + norm)


@pytest.fixture
async def store() -> AsyncIterator[qdrant_index.QdrantIndex]:
    async with qdrant_index.QdrantIndex.from_settings(settings.KnowledgeSettings()) as opened:
        yield opened


def test_term_indices_are_stable_and_collisions_merge(monkeypatch: pytest.MonkeyPatch) -> None:
    # Stored vectors depend on these numbers: changing the hash orphans every index.
    assert sparse.term_index("kubernetes") == 1740568794
    assert sparse.term_index("gpu") == 735657869
    assert sparse.words("GPUs, gpu!") == ["gpus", "gpu"]
    vec = sparse.document_vector("GPU gpu Kafka")
    assert vec.indices == sorted([735657869, sparse.term_index("kafka")])
    norm = sparse.K1 * (1 - sparse.B + sparse.B * 3 / sparse.AVG_WORDS)
    assert dict(zip(vec.indices, vec.values, strict=True))[735657869] == pytest.approx(
        2 * (sparse.K1 + 1) / (2 + norm))
    monkeypatch.setattr(sparse, "term_index", lambda word: 7)
    merged = sparse.document_vector("a b c")
    assert merged.indices == [7]
    assert merged.values == [pytest.approx(3 * (sparse.K1 + 1) / (3 + norm))]
    assert sparse.query_vector("a b").indices == [7]


async def test_scores_are_bm25_with_idf_over_the_knowledge_base(
        store: qdrant_index.QdrantIndex) -> None:
    await _put(store, "acme", "kb", "d1", "GPUs are scarce", "Pods run on nodes",
               "Nodes have GPUs and GPUs")
    hits = await _search(store, "scarce GPUs")
    assert [(d, i) for d, i, _ in hits] == [("d1", 0), ("d1", 2)]
    # chunk 0: "scarce" (1 of 3 chunks) and "gpus" (2 of 3), 3 words each once.
    assert hits[0][2] == pytest.approx(_bm25(tf=1, words=3, df=1, n=3)
                                       + _bm25(tf=1, words=3, df=2, n=3))
    assert hits[1][2] == pytest.approx(_bm25(tf=2, words=5, df=2, n=3))
    assert await _search(store, "kafka") == []
    assert await _search(store, "?!") == []
    assert [d for d, _, _ in await _search(store, "gpus", top_k=1)] == ["d1"]


async def test_a_rare_term_outranks_a_repeated_common_one(
        store: qdrant_index.QdrantIndex) -> None:
    await _put(store, "acme", "kb", "twice", "common common")
    await _put(store, "acme", "kb", "rare", "rare")
    for i in range(5):
        await _put(store, "acme", "kb", f"filler{i}", "common filler")
    # Without IDF the repeated word weighs more: that order is what IDF must reverse.
    twice, rare = sparse.document_vector("common common"), sparse.document_vector("rare")
    assert twice.values[0] > rare.values[0]
    hits = await _search(store, "common rare")
    assert [d for d, _, _ in hits[:2]] == ["rare", "twice"]
    assert hits[0][2] == pytest.approx(_bm25(tf=1, words=1, df=1, n=7))
    assert hits[1][2] == pytest.approx(_bm25(tf=2, words=2, df=6, n=7))


async def test_other_tenants_and_knowledge_bases_neither_show_nor_move_scores(
        store: qdrant_index.QdrantIndex) -> None:
    await _put(store, "acme", "kb", "d1", "GPUs are scarce", "Pods run on nodes")
    before = await _search(store, "scarce")
    await _put(store, "globex", "kb", "d1", "scarce scarce", "scarce too", "scarce")
    await _put(store, "acme", "other", "d1", "scarce", "scarce again")
    assert await _search(store, "scarce") == before
    assert before[0][2] == pytest.approx(_bm25(tf=1, words=3, df=1, n=2))
    assert [(d, i) for d, i, _ in await _search(store, "scarce", tenant="globex")] == [
        ("d1", 0), ("d1", 2), ("d1", 1)]
    assert await _search(store, "scarce", tenant="initech") == []


async def test_metadata_filters_match_every_pair_exactly(
        store: qdrant_index.QdrantIndex) -> None:
    await store.replace("acme", "kb", "a", _chunks("acme", "kb", "a", "GPU notes",
                                                   **{"team": "infra", ODD: "1"}))
    await _put(store, "acme", "kb", "b", "GPU notes", team="ml")
    assert {d for d, _, _ in await _search(store, "gpu")} == {"a", "b"}
    assert [d for d, _, _ in await _search(store, "gpu", filters={"team": "infra"})] == ["a"]
    assert [d for d, _, _ in await _search(store, "gpu", filters={ODD: "1"})] == ["a"]
    assert [d for d, _, _ in await _search(store, "gpu", filters={"team": "infra", ODD: "1"})
            ] == ["a"]
    assert await _search(store, "gpu", filters={"team": "infra", ODD: "2"}) == []
    assert await _search(store, "gpu", filters={"team": "inf"}) == []
    hit = (await store.search("acme", "kb", "gpu", top_k=1, filters={"team": "ml"}))[0]
    assert hit.chunk == _chunks("acme", "kb", "b", "GPU notes", team="ml")[0]


async def test_replacing_a_document_drops_its_old_chunks(
        store: qdrant_index.QdrantIndex) -> None:
    await _put(store, "acme", "kb", "d1", "alpha one", "beta two", "gamma three")
    await _put(store, "acme", "kb", "d2", "gamma elsewhere")
    await _put(store, "acme", "kb", "d1", "delta four")
    assert await _search(store, "alpha beta") == []
    # The dropped chunks left the IDF statistics too: two chunks, each term in one.
    one_each = _bm25(tf=1, words=2, df=1, n=2)
    hits = sorted(await _search(store, "gamma delta"))
    assert [(d, i) for d, i, _ in hits] == [("d1", 0), ("d2", 0)]
    assert [score for _, _, score in hits] == pytest.approx([one_each, one_each])
    assert await store.delete("acme", "kb", "d1") == 1


async def test_delete_removes_only_that_document_and_counts_it(
        store: qdrant_index.QdrantIndex) -> None:
    await _put(store, "acme", "kb", "d1", "kafka one", "kafka two", "!!!")
    await _put(store, "acme", "kb", "d2", "kafka three")
    await _put(store, "globex", "kb", "d1", "kafka four")
    assert await store.delete("acme", "kb", "d1") == 3  # the chunk without words counts too
    assert await store.delete("acme", "kb", "d1") == 0
    assert [d for d, _, _ in await _search(store, "kafka")] == ["d2"]
    assert [d for d, _, _ in await _search(store, "kafka", tenant="globex")] == ["d1"]


async def test_a_path_keeps_the_chunks_across_reopening(tmp_path: Path) -> None:
    cfg = settings.KnowledgeSettings(qdrant_path=str(tmp_path / "qdrant"))
    async with qdrant_index.QdrantIndex.from_settings(cfg) as store:
        await _put(store, "acme", "kb", "d1", "GPUs are scarce", "Pods run on nodes",
                   team="infra")
        await _put(store, "acme", "kb", "d2", "Kafka keeps partitions")
        expected = await _search(store, "scarce pods")
    assert (tmp_path / "qdrant" / "collection" / "aion-chunks").is_dir()
    async with qdrant_index.QdrantIndex.from_settings(cfg) as store:
        assert await _search(store, "scarce pods", filters={"team": "infra"}) == expected
        assert await store.delete("acme", "kb", "d2") == 1
    async with qdrant_index.QdrantIndex.from_settings(cfg) as store:
        assert await _search(store, "kafka") == []
        assert [(d, i) for d, i, _ in await _search(store, "scarce pods")] == [
            ("d1", 0), ("d1", 1)]


async def test_a_collection_without_idf_is_refused_at_start(tmp_path: Path) -> None:
    client = AsyncQdrantClient(path=str(tmp_path))
    await client.create_collection("aion-chunks", vectors_config={}, sparse_vectors_config={
        "text": models.SparseVectorParams()})
    await client.close()
    cfg = settings.KnowledgeSettings(qdrant_path=str(tmp_path))
    store = qdrant_index.QdrantIndex.from_settings(cfg)
    with pytest.raises(errors.FailedPrecondition, match="modifier IDF"):
        await store.__aenter__()
    # The client was closed on the way out: the folder's lock is free again.
    async with qdrant_index.QdrantIndex.from_settings(
            settings.KnowledgeSettings(qdrant_path=str(tmp_path),
                                       qdrant_collection_prefix="fresh")) as fresh:
        assert await fresh.delete("acme", "kb", "d1") == 0


async def test_an_unreachable_server_is_unavailable() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = AsyncQdrantClient(url=f"http://127.0.0.1:{port}", check_compatibility=False)
    store = qdrant_index.QdrantIndex(client, collection="aion-chunks", server=True)
    with pytest.raises(errors.Unavailable, match="unreachable while opening") as info:
        await store.__aenter__()
    assert info.value.retriable
    await store.close()  # idempotent: __aenter__ closed it already


def test_a_path_with_a_server_url_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AION_KNOWLEDGE_QDRANT_URL", "http://qdrant:6333")
    monkeypatch.setenv("AION_KNOWLEDGE_QDRANT_PATH", "/data")
    with pytest.raises(core_settings.SettingsError, match="AION_KNOWLEDGE_QDRANT_PATH"):
        core_settings.load(settings.KnowledgeSettings)
    monkeypatch.setenv("AION_KNOWLEDGE_QDRANT_PATH", "")
    monkeypatch.setenv("AION_KNOWLEDGE_QDRANT_API_KEY", "")
    cfg = core_settings.load(settings.KnowledgeSettings)
    assert (cfg.qdrant_url, cfg.qdrant_api_key) == ("http://qdrant:6333", None)
