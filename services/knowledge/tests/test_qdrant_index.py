"""The chunk stores on real engines: Qdrant Edge and qdrant-client's local mode, each
in memory (a temporary folder for Edge) and on disk; every behaviour test runs on both.

Dense vectors here are small hand-made ones (4 dimensions), so that which
chunk is nearest is known; the real model is in ``test_service.py``.
"""

from __future__ import annotations

import math
import socket
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import qdrant_edge as qe
from qdrant_client import QdrantClient, models

from aion.core import errors
from aion.core import settings as core_settings
from aion.knowledge import edge_index, qdrant_index, settings, sparse

REQUIRED: dict[str, Any] = {
    "postgres_dsn": "postgresql://u:p@127.0.0.1:1/db",
    "kafka_bootstrap": "127.0.0.1:1",
    "minio_endpoint": "127.0.0.1:1",
    "minio_access_key": "a",
    "minio_secret_key": "s",
    "executor_target": "127.0.0.1:1",
    "embedding_dimensions": 4,
}


def _cfg(**overrides: Any) -> settings.KnowledgeSettings:
    return settings.KnowledgeSettings(**{**REQUIRED, **overrides})


def _vec(i: int) -> list[float]:
    return [1.0 if j == i % 4 else 0.0 for j in range(4)]


async def _put(
    store: qdrant_index.Index,
    tenant: str,
    kb: str,
    doc: str,
    *texts: str,
    version: int = 1,
    activate: bool = True,
    dense: Sequence[list[float]] = (),
    **meta: str,
) -> None:
    await store.put(
        [
            qdrant_index.Chunk(
                tenant=tenant,
                knowledge_base=kb,
                document_id=doc,
                version=version,
                index=i,
                text=t,
                start=10 * i,
                end=10 * i + len(t),
                dense=dense[i] if dense else _vec(i),
                metadata=meta,
            )
            for i, t in enumerate(texts)
        ]
    )
    if activate:
        await store.activate(tenant, kb, doc, version)


async def _search(
    store: qdrant_index.Index,
    query: str,
    *,
    tenant: str = "acme",
    kb: str = "kb",
    top_k: int = 10,
    mode: qdrant_index.Mode = "sparse",
    dense: list[float] | None = None,
    filters: dict[str, str] | None = None,
) -> list[tuple[str, int, float]]:
    hits = await store.search(
        tenant, kb, mode=mode, dense=dense, text=query, top_k=top_k, filters=filters or {}
    )
    return [(h.document_id, h.index, h.score) for h in hits]


# A metadata key no payload path could address: dots and quotes.
ODD = 'odd.key "x"'


def _bm25(*, tf: int, words: int, df: int, n: int) -> float:
    """The score one query term earns, by the textbook formula (fixed average length)."""
    idf = math.log((n - df + 0.5) / (df + 0.5) + 1)
    norm = sparse.K1 * (1 - sparse.B + sparse.B * words / sparse.AVG_WORDS)
    return idf * tf * (sparse.K1 + 1) / (tf + norm)


ENGINES = ["edge", "local"]


@pytest.fixture(params=ENGINES)
async def store(request: pytest.FixtureRequest) -> AsyncIterator[qdrant_index.Index]:
    async with qdrant_index.open_index(_cfg(qdrant_engine=request.param)) as opened:
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
        2 * (sparse.K1 + 1) / (2 + norm)
    )
    monkeypatch.setattr(sparse, "term_index", lambda word: 7)
    merged = sparse.document_vector("a b c")
    assert merged.indices == [7]
    assert merged.values == [pytest.approx(3 * (sparse.K1 + 1) / (3 + norm))]
    assert sparse.query_vector("a b").indices == [7]


async def test_sparse_scores_are_bm25_with_idf_over_the_knowledge_base(
    store: qdrant_index.Index,
) -> None:
    await _put(
        store,
        "acme",
        "kb",
        "d1",
        "GPUs are scarce",
        "Pods run on nodes",
        "Nodes have GPUs and GPUs",
    )
    hits = await _search(store, "scarce GPUs")
    assert [(d, i) for d, i, _ in hits] == [("d1", 0), ("d1", 2)]
    assert hits[0][2] == pytest.approx(
        _bm25(tf=1, words=3, df=1, n=3) + _bm25(tf=1, words=3, df=2, n=3)
    )
    assert hits[1][2] == pytest.approx(_bm25(tf=2, words=5, df=2, n=3))
    assert await _search(store, "kafka") == []
    assert await _search(store, "?!") == []


async def test_dense_hybrid_and_citations(store: qdrant_index.Index) -> None:
    await _put(store, "acme", "kb", "d1", "alpha words", "beta words", "gamma words")
    # Dense: nearest vector first, cosine as the score; a floor drops the unrelated.
    dense = await _search(store, "x", mode="dense", dense=_vec(1))
    assert (dense[0][0], dense[0][1]) == ("d1", 1)
    assert dense[0][2] == pytest.approx(1.0)
    assert (
        len(
            await store.search(
                "acme",
                "kb",
                mode="dense",
                dense=_vec(1),
                text="x",
                top_k=10,
                filters={},
                min_similarity=0.5,
            )
        )
        == 1
    )
    # Hybrid: chunk 2 is first in both lists, chunk 1 only in the dense one.
    near_two = [0.1, 0.5, 1.0, 0.0]
    hybrid = await _search(store, "gamma", mode="hybrid", dense=near_two)
    assert [i for _, i, _ in hybrid][:2] == [2, 1]
    assert hybrid[0][2] == pytest.approx(1.0)  # reciprocal rank: first in both lists
    hit = (
        await store.search(
            "acme", "kb", mode="hybrid", dense=near_two, text="gamma", top_k=1, filters={}
        )
    )[0]
    assert (hit.version, hit.index, hit.start, hit.end, hit.text) == (1, 2, 20, 31, "gamma words")


async def test_inactive_versions_are_invisible_and_activation_replaces(
    store: qdrant_index.Index,
) -> None:
    await _put(store, "acme", "kb", "d1", "old words here", version=1)
    await _put(store, "acme", "kb", "d1", "new words", "more new words", version=2, activate=False)
    assert [(d, i) for d, i, _ in await _search(store, "words")] == [("d1", 0)]
    assert await _search(store, "new") == []
    assert [(d, i) for d, i, _ in await _search(store, "x", mode="dense", dense=_vec(1))] == [
        ("d1", 0)
    ]
    assert await store.count("acme", "kb", "d1", version=2, active=False) == 2
    await store.activate("acme", "kb", "d1", 2)
    assert await store.count("acme", "kb", "d1", version=1) == 0
    assert await store.count("acme", "kb", "d1", active=True) == 2
    assert {i for _, i, _ in await _search(store, "new")} == {0, 1}
    await _put(store, "acme", "kb", "d1", "third", version=3, activate=False)
    await store.drop_version("acme", "kb", "d1", 3)
    assert await store.count("acme", "kb", "d1") == 2


async def test_other_tenants_and_knowledge_bases_neither_show_nor_move_scores(
    store: qdrant_index.Index,
) -> None:
    await _put(store, "acme", "kb", "d1", "GPUs are scarce", "Pods run on nodes")
    before = await _search(store, "scarce")
    await _put(store, "globex", "kb", "d1", "scarce scarce", "scarce too", "scarce")
    await _put(store, "acme", "other", "d1", "scarce", "scarce again")
    assert await _search(store, "scarce") == before
    assert before[0][2] == pytest.approx(_bm25(tf=1, words=3, df=1, n=2))
    assert [(d, i) for d, i, _ in await _search(store, "scarce", tenant="globex")] == [
        ("d1", 0),
        ("d1", 2),
        ("d1", 1),
    ]
    assert await _search(store, "scarce", tenant="initech") == []
    assert await _search(store, "x", tenant="initech", mode="dense", dense=_vec(0)) == []


async def test_metadata_filters_match_every_pair_exactly(store: qdrant_index.Index) -> None:
    await store.put(
        [
            qdrant_index.Chunk(
                tenant="acme",
                knowledge_base="kb",
                document_id="a",
                version=1,
                index=0,
                text="GPU notes",
                start=0,
                end=9,
                dense=_vec(0),
                metadata={"team": "infra", ODD: "1"},
            )
        ]
    )
    await store.activate("acme", "kb", "a", 1)
    await _put(store, "acme", "kb", "b", "GPU notes", team="ml")
    assert {d for d, _, _ in await _search(store, "gpu")} == {"a", "b"}
    assert [d for d, _, _ in await _search(store, "gpu", filters={"team": "infra"})] == ["a"]
    assert [d for d, _, _ in await _search(store, "gpu", filters={ODD: "1"})] == ["a"]
    assert await _search(store, "gpu", filters={"team": "infra", ODD: "2"}) == []
    assert await _search(store, "gpu", filters={"team": "inf"}) == []
    assert [
        d
        for d, _, _ in await _search(
            store, "gpu", mode="hybrid", dense=_vec(0), filters={"team": "ml"}
        )
    ] == ["b"]


async def test_delete_removes_every_version_and_counts_the_active(
    store: qdrant_index.Index,
) -> None:
    await _put(store, "acme", "kb", "d1", "kafka one", "kafka two", "!!!")
    await _put(store, "acme", "kb", "d1", "pending", version=2, activate=False)
    await _put(store, "acme", "kb", "d2", "kafka three")
    await _put(store, "globex", "kb", "d1", "kafka four")
    assert await store.delete_document("acme", "kb", "d1") == 3
    assert await store.count("acme", "kb", "d1") == 0
    assert await store.delete_document("acme", "kb", "d1") == 0
    assert [d for d, _, _ in await _search(store, "kafka")] == ["d2"]
    assert [d for d, _, _ in await _search(store, "kafka", tenant="globex")] == ["d1"]


@pytest.mark.parametrize(
    ("engine", "folder"), [("edge", "aion-knowledge"), ("local", "collection/aion-knowledge")]
)
async def test_a_path_keeps_the_chunks_across_reopening(
    tmp_path: Path, engine: str, folder: str
) -> None:
    cfg = _cfg(qdrant_path=str(tmp_path / "qdrant"), qdrant_engine=engine)
    async with qdrant_index.open_index(cfg) as store:
        await _put(store, "acme", "kb", "d1", "GPUs are scarce", "Pods run on nodes", team="infra")
        await _put(store, "acme", "kb", "d2", "Kafka keeps partitions")
        expected = await _search(store, "scarce pods")
    assert (tmp_path / "qdrant" / folder).is_dir()
    async with qdrant_index.open_index(cfg) as store:
        assert await _search(store, "scarce pods", filters={"team": "infra"}) == expected
        assert await store.delete_document("acme", "kb", "d2") == 1
    async with qdrant_index.open_index(cfg) as store:
        assert await _search(store, "kafka") == []


@pytest.mark.parametrize(
    ("vectors", "sparse_vectors", "match"),
    [
        ({}, {"text": models.SparseVectorParams()}, "modifier IDF"),
        (
            {"dense": models.VectorParams(size=8, distance=models.Distance.COSINE)},
            {"text": models.SparseVectorParams(modifier=models.Modifier.IDF)},
            "4 dimensions",
        ),
    ],
)
async def test_a_collection_of_another_shape_is_refused_at_start(
    tmp_path: Path,
    vectors: dict[str, models.VectorParams],
    sparse_vectors: dict[str, models.SparseVectorParams],
    match: str,
) -> None:
    client = QdrantClient(path=str(tmp_path))
    client.create_collection(
        "aion-knowledge", vectors_config=vectors, sparse_vectors_config=sparse_vectors
    )
    client.close()
    store = qdrant_index.open_index(_cfg(qdrant_path=str(tmp_path), qdrant_engine="local"))
    with pytest.raises(errors.FailedPrecondition, match=match):
        await store.__aenter__()
    # The client was closed on the way out: the folder's lock is free again.
    async with qdrant_index.open_index(
        _cfg(qdrant_path=str(tmp_path), qdrant_engine="local", qdrant_collection_prefix="fresh")
    ) as fresh:
        assert await fresh.count("acme", "kb", "d1") == 0


@pytest.mark.parametrize(
    ("dense_size", "modifier"), [(4, None), (8, qe.Modifier.Idf)], ids=["no-idf", "8-dims"]
)
async def test_an_edge_shard_of_another_shape_is_refused_at_start(
    tmp_path: Path, dense_size: int, modifier: qe.Modifier | None
) -> None:
    shard = qe.EdgeShard.create(
        str(tmp_path / "aion-knowledge"),
        qe.EdgeConfig(
            vectors={"dense": qe.EdgeVectorParams(size=dense_size, distance=qe.Distance.Cosine)},
            sparse_vectors={"text": qe.EdgeSparseVectorParams(modifier=modifier)},
        ),
    )
    shard.close()
    store = qdrant_index.open_index(_cfg(qdrant_path=str(tmp_path)))
    assert isinstance(store, edge_index.EdgeIndex)
    with pytest.raises(errors.FailedPrecondition, match="4-dimension cosine vector 'dense'"):
        await store.__aenter__()
    async with qdrant_index.open_index(
        _cfg(qdrant_path=str(tmp_path), qdrant_collection_prefix="fresh")
    ) as fresh:
        assert await fresh.count("acme", "kb", "d1") == 0


async def test_an_unreachable_server_is_unavailable() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = QdrantClient(url=f"http://127.0.0.1:{port}", check_compatibility=False, timeout=2)
    store = qdrant_index.QdrantIndex(client, collection="aion-knowledge", server=True, dimensions=4)
    with pytest.raises(errors.Unavailable, match="unreachable while opening") as info:
        await store.__aenter__()
    assert info.value.retriable
    await store.close()  # idempotent: __aenter__ closed it already


def test_a_path_with_a_server_url_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in REQUIRED.items():
        monkeypatch.setenv(f"AION_KNOWLEDGE_{key.upper()}", str(value))
    monkeypatch.setenv("AION_KNOWLEDGE_QDRANT_URL", "http://qdrant:6333")
    monkeypatch.setenv("AION_KNOWLEDGE_QDRANT_PATH", "/data")
    with pytest.raises(core_settings.SettingsError, match="AION_KNOWLEDGE_QDRANT_PATH"):
        core_settings.load(settings.KnowledgeSettings)
    monkeypatch.setenv("AION_KNOWLEDGE_QDRANT_PATH", "")
    monkeypatch.setenv("AION_KNOWLEDGE_QDRANT_API_KEY", "")
    cfg = core_settings.load(settings.KnowledgeSettings)
    assert (cfg.qdrant_url, cfg.qdrant_api_key) == ("http://qdrant:6333", None)
    assert cfg.executor_target == "127.0.0.1:1"
    monkeypatch.delenv("AION_KNOWLEDGE_EXECUTOR_TARGET")
    with pytest.raises(core_settings.SettingsError, match="AION_KNOWLEDGE_EXECUTOR_TARGET"):
        core_settings.load(settings.KnowledgeSettings)
