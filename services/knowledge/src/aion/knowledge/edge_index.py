"""Chunks in Qdrant Edge: Qdrant's own engine inside the process, on disk.

The same layout as ``qdrant_index`` (one shard for every tenant and knowledge
base, partitioned by payload; the named ``dense`` and sparse ``text`` vectors;
IDF measured within the tenant and knowledge base; points written inactive and
activated per version; hybrid search as two prefetches fused by reciprocal rank
in one query), served by qdrant-edge-py, whose searches run in Qdrant's Rust
code (HNSW, the sparse inverted index, payload indexes) where qdrant-client's
local mode computes each one in Python.

Differences the code below answers for:

- A shard is a folder (``<QDRANT_PATH>/<prefix>-knowledge``) with a write-ahead
  log; without ``QDRANT_PATH`` it lives in a temporary folder removed on close.
- ``active`` is stored as 1 or 0: qdrant-edge-py 0.9 matches ``MatchValue(True)``
  as the integer 1, so a boolean payload never matches a boolean filter.
- The shape is checked by loading the shard with the expected configuration,
  which the engine validates against the stored segments.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import qdrant_edge as qe

from aion.core import errors
from aion.knowledge import settings as knowledge_settings
from aion.knowledge import sparse
from aion.knowledge.qdrant_index import (
    DENSE,
    TEXT,
    Chunk,
    Hit,
    Mode,
    OnThreads,
    hit_from_payload,
    metadata_terms,
    payload,
    point_id,
    route,
)

# Reciprocal rank fusion's k, as Qdrant's server and qdrant-client's local mode use.
RRF_K = 2
UPSERT_BATCH = 512


def _match(key: str, value: str | int) -> qe.FieldCondition:
    return qe.FieldCondition(key=key, match=qe.MatchValue(value))


def _document(tenant: str, knowledge_base: str, document_id: str) -> list[Any]:
    return [
        _match("tenant", tenant),
        _match("knowledge_base", knowledge_base),
        _match("document_id", document_id),
    ]


def _sparse(text: Any) -> qe.SparseVector:
    return qe.SparseVector(indices=list(text.indices), values=list(text.values))


class EdgeIndex(OnThreads):
    """Chunks of every tenant in one Qdrant Edge shard; an async context manager owning it.

    Entering creates the shard when its folder has none, or loads it and checks its
    vectors; leaving flushes and closes it. Calls run on one thread of their own,
    never on the event loop.
    """

    def __init__(self, path: Path | None, *, dimensions: int) -> None:
        super().__init__(workers=1, name="qdrant-edge")
        self._temporary = path is None
        self._path = path or Path(tempfile.mkdtemp(prefix="aion-edge-")) / "shard"
        self._dimensions = dimensions
        self._shard: qe.EdgeShard | None = None

    @classmethod
    def from_settings(cls, cfg: knowledge_settings.KnowledgeSettings) -> EdgeIndex:
        """The shard under ``qdrant_path`` (a temporary folder when empty)."""
        path = (
            Path(cfg.qdrant_path) / f"{cfg.qdrant_collection_prefix}-knowledge"
            if cfg.qdrant_path
            else None
        )
        return cls(path, dimensions=cfg.embedding_dimensions)

    @property
    def path(self) -> Path:
        return self._path

    def _config(self) -> qe.EdgeConfig:
        return qe.EdgeConfig(
            vectors={
                DENSE: qe.EdgeVectorParams(size=self._dimensions, distance=qe.Distance.Cosine)
            },
            sparse_vectors={TEXT: qe.EdgeSparseVectorParams(modifier=qe.Modifier.Idf)},
        )

    @property
    def _open(self) -> qe.EdgeShard:
        if self._shard is None:
            raise errors.FailedPrecondition("the Qdrant Edge shard is not open")
        return self._shard

    def _closing(self) -> None:
        if self._shard is not None:
            shard, self._shard = self._shard, None
            shard.flush()
            shard.close()
        if self._temporary:
            shutil.rmtree(self._path.parent, ignore_errors=True)

    def _opening(self) -> None:
        if (self._path / "segments").is_dir():
            try:
                shard = qe.EdgeShard.load(str(self._path), self._config())
            except Exception as exc:  # the engine says how the stored shard differs
                raise errors.FailedPrecondition(
                    f"the Qdrant Edge shard at {self._path} does not have a {self._dimensions}-"
                    f"dimension cosine vector {DENSE!r} (AION_KNOWLEDGE_EMBEDDING_DIMENSIONS) "
                    f"and the sparse vector {TEXT!r} with modifier IDF ({exc}); delete it or "
                    "choose another AION_KNOWLEDGE_QDRANT_COLLECTION_PREFIX"
                ) from exc
        else:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            shard = qe.EdgeShard.create(str(self._path), self._config())
        self._shard = shard
        present = shard.info().payload_schema
        for field, schema in self._payload_indexes().items():
            if field not in present:
                shard.update(qe.UpdateOperation.create_field_index(field, schema))

    @staticmethod
    def _payload_indexes() -> dict[str, Any]:
        return {
            "tenant": qe.KeywordIndexParams(is_tenant=True),
            "knowledge_base": qe.PayloadSchemaType.Keyword,
            "document_id": qe.PayloadSchemaType.Keyword,
            "version": qe.PayloadSchemaType.Integer,
            "active": qe.PayloadSchemaType.Integer,
            "metadata_terms": qe.PayloadSchemaType.Keyword,
        }

    @staticmethod
    def _point(chunk: Chunk) -> qe.Point:
        text = sparse.document_vector(chunk.text)
        vectors: dict[str, Any] = {DENSE: list(chunk.dense)}
        if text.indices:  # a chunk without words gets no sparse vector: no word finds it
            vectors[TEXT] = _sparse(text)
        return qe.Point(
            id=point_id(
                chunk.tenant, chunk.knowledge_base, chunk.document_id, chunk.version, chunk.index
            ),
            vector=vectors,
            payload=payload(chunk, inactive=0),
        )

    async def put(self, chunks: Sequence[Chunk]) -> None:
        """Store chunks, inactive (invisible to searches) until their version is activated."""
        points = [self._point(c) for c in chunks]
        for start in range(0, len(points), UPSERT_BATCH):
            op = qe.UpdateOperation.upsert_points(points[start : start + UPSERT_BATCH])
            await self._run(lambda op=op: self._open.update(op))

    async def activate(
        self, tenant: str, knowledge_base: str, document_id: str, version: int
    ) -> None:
        """Make the version's chunks searchable and remove every other version's."""
        doc = _document(tenant, knowledge_base, document_id)
        on = qe.UpdateOperation.set_payload_by_filter(
            qe.Filter(must=[*doc, _match("version", version)]), {"active": 1}
        )
        others = qe.UpdateOperation.delete_points_by_filter(
            qe.Filter(must=doc, must_not=[_match("version", version)])
        )

        def both() -> None:
            self._open.update(on)
            self._open.update(others)

        await self._run(both)

    async def drop_version(
        self, tenant: str, knowledge_base: str, document_id: str, version: int
    ) -> None:
        """Remove one version's chunks (a failed or superseded one, or a retry's leftovers)."""
        op = qe.UpdateOperation.delete_points_by_filter(
            qe.Filter(
                must=[*_document(tenant, knowledge_base, document_id), _match("version", version)]
            )
        )
        await self._run(lambda: self._open.update(op))

    async def count(
        self,
        tenant: str,
        knowledge_base: str,
        document_id: str,
        *,
        version: int | None = None,
        active: bool | None = None,
    ) -> int:
        """Chunks stored for the document (of one version, active or not, when given)."""
        must = _document(tenant, knowledge_base, document_id)
        if version is not None:
            must.append(_match("version", version))
        if active is not None:
            must.append(_match("active", int(active)))
        request = qe.CountRequest(exact=True, filter=qe.Filter(must=must))
        return int(await self._run(lambda: self._open.count(request)))

    async def delete_document(self, tenant: str, knowledge_base: str, document_id: str) -> int:
        """Remove every version's chunks; how many active ones there were."""
        active = await self.count(tenant, knowledge_base, document_id, active=True)
        op = qe.UpdateOperation.delete_points_by_filter(
            qe.Filter(must=_document(tenant, knowledge_base, document_id))
        )
        await self._run(lambda: self._open.update(op))
        return active

    async def search(
        self,
        tenant: str,
        knowledge_base: str,
        *,
        mode: Mode,
        dense: Sequence[float] | None,
        text: str,
        top_k: int,
        filters: Mapping[str, str],
        min_similarity: float | None = None,
    ) -> list[Hit]:
        """The best ``top_k`` active chunks of the knowledge base whose metadata has all of
        ``filters``: by embedding (those at least ``min_similarity`` similar), by BM25, or
        both fused by reciprocal rank."""
        scope: list[Any] = [
            _match("tenant", tenant),
            _match("knowledge_base", knowledge_base),
            _match("active", 1),
        ]
        where = qe.Filter(
            must=[*scope, *(_match("metadata_terms", t) for t in metadata_terms(filters))]
        )
        # Rarity is measured within the knowledge base, never across tenants.
        idf = qe.SearchParams(idf=qe.IdfParams(corpus=qe.Filter(must=scope)))
        words = sparse.query_vector(text)
        common: dict[str, Any] = {"limit": top_k, "filter": where, "with_payload": True}
        way = route(mode, dense, words)
        if way is None:
            return []
        if way == "sparse":
            request = qe.QueryRequest(
                query=qe.Query.Nearest(_sparse(words), using=TEXT), params=idf, **common
            )
        elif way == "dense":
            request = qe.QueryRequest(
                query=qe.Query.Nearest(list(dense or ()), using=DENSE),
                score_threshold=min_similarity,
                **common,
            )
        else:
            depth = max(top_k * 4, 20)
            request = qe.QueryRequest(
                prefetches=[
                    qe.Prefetch(
                        limit=depth,
                        query=qe.Query.Nearest(list(dense or ()), using=DENSE),
                        filter=where,
                        score_threshold=min_similarity,
                    ),
                    qe.Prefetch(
                        limit=depth,
                        query=qe.Query.Nearest(_sparse(words), using=TEXT),
                        filter=where,
                        params=idf,
                    ),
                ],
                # The stub types Fusion.Rrf apart from Fusion; the engine takes it.
                query=qe.Fusion.Rrf(k=RRF_K),  # type: ignore[arg-type]
                **common,
            )
        found = await self._run(lambda: self._open.query(request))
        return [hit_from_payload(p.payload or {}, p.score) for p in found]
