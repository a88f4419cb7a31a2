"""Chunks in Qdrant: a server, or qdrant-client's local mode in the process.

The layout, and why:

- One collection for every tenant and knowledge base, partitioned by payload
  (``tenant``, with a tenant payload index, and ``knowledge_base``), as Qdrant
  advises for multitenancy. IDF for the sparse vector is measured over the
  same tenant and knowledge base only (``SearchParams.idf``), so one tenant's
  documents never move another's scores.
- Two named vectors per point: ``dense``, the embedding model's (cosine), and
  ``text``, the sparse BM25 term weights (``sparse.py``) with ``Modifier.IDF``.
  Hybrid search prefetches from each and fuses the two rankings with
  reciprocal rank fusion in one ``query_points`` call.
- A point is one chunk of one version; its id is derived from (tenant,
  knowledge base, document, version, chunk), so a worker that retries a
  version overwrites its points in place.
- Points are written with ``active = false`` and searches only see active
  ones. When every chunk of a version is stored, ``activate`` flips the
  version's points to active and deletes the document's other versions: a
  worker killed halfway leaves only inactive points, which the next claim of
  that version (or its failure) removes, so no search sees half a document.
- Metadata is stored as ``["key", "value"]`` JSON strings (``metadata_terms``),
  the form filters match: a key may hold dots or quotes. Titles and metadata
  themselves live once per version in Postgres, not in every chunk.

qdrant-client's calls run on a thread (one for local mode, which is not
thread-safe; a few for a server), never on the event loop: local mode
computes searches itself.
"""

from __future__ import annotations

import abc
import asyncio
import concurrent.futures
import contextlib
import dataclasses
import functools
import json
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any, Literal, Protocol, Self, TypeVar

from qdrant_client import QdrantClient, models
from qdrant_client.http import exceptions as qdrant_errors

from aion.core import errors
from aion.knowledge import settings as knowledge_settings
from aion.knowledge import sparse

DENSE = "dense"
TEXT = "text"
Mode = Literal["hybrid", "dense", "sparse"]
# Points per upsert request, well under a server's request size limit.
UPSERT_BATCH = 128
_POINT_IDS = uuid.UUID("6d2c53a4-3f6e-4f4b-9a53-7b7c2a1e0c5e")
_T = TypeVar("_T")


@dataclasses.dataclass(frozen=True)
class Chunk:
    """A chunk of one version of a document, with its embedding."""

    tenant: str
    knowledge_base: str
    document_id: str
    version: int
    index: int
    text: str
    start: int
    end: int
    dense: Sequence[float]
    metadata: Mapping[str, str]


@dataclasses.dataclass(frozen=True)
class Hit:
    """A stored chunk and how well it matched."""

    knowledge_base: str
    document_id: str
    version: int
    index: int
    text: str
    start: int
    end: int
    score: float


class Index(Protocol):
    """What the service needs of a chunk store (``QdrantIndex``, ``edge_index.EdgeIndex``)."""

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    async def close(self) -> None: ...

    async def put(self, chunks: Sequence[Chunk]) -> None: ...

    async def activate(
        self, tenant: str, knowledge_base: str, document_id: str, version: int
    ) -> None: ...

    async def drop_version(
        self, tenant: str, knowledge_base: str, document_id: str, version: int
    ) -> None: ...

    async def count(
        self,
        tenant: str,
        knowledge_base: str,
        document_id: str,
        *,
        version: int | None = None,
        active: bool | None = None,
    ) -> int: ...

    async def delete_document(self, tenant: str, knowledge_base: str, document_id: str) -> int: ...

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
    ) -> list[Hit]: ...


def open_index(cfg: knowledge_settings.KnowledgeSettings) -> Index:
    """The chunk store ``cfg`` names: a Qdrant server through qdrant-client when
    ``qdrant_url`` is set; else Qdrant Edge in the process (``qdrant_engine`` ``edge``,
    the default) or qdrant-client's local mode (``local``)."""
    if cfg.qdrant_url or cfg.qdrant_engine == "local":
        return QdrantIndex.from_settings(cfg)
    from aion.knowledge import edge_index  # it imports this module

    return edge_index.EdgeIndex.from_settings(cfg)


def point_id(
    tenant: str, knowledge_base: str, document_id: str, version: int, chunk_index: int
) -> str:
    """The chunk's point id: a UUID derived from what names the chunk, so rewrites overwrite."""
    name = json.dumps([tenant, knowledge_base, document_id, version, chunk_index])
    return str(uuid.uuid5(_POINT_IDS, name))


def _match(key: str, value: str | int | bool) -> models.FieldCondition:
    return models.FieldCondition(key=key, match=models.MatchValue(value=value))


def _document(tenant: str, knowledge_base: str, document_id: str) -> list[models.Condition]:
    return [
        _match("tenant", tenant),
        _match("knowledge_base", knowledge_base),
        _match("document_id", document_id),
    ]


def metadata_terms(metadata: Mapping[str, str]) -> list[str]:
    """The payload terms a metadata filter matches."""
    return [json.dumps([k, v]) for k, v in sorted(metadata.items())]


@contextlib.contextmanager
def _unavailable_when_down(what: str) -> Iterator[None]:
    """Qdrant out of reach, or failing on its side, is UNAVAILABLE (retriable)."""
    try:
        yield
    except qdrant_errors.ResponseHandlingException as exc:
        raise errors.Unavailable(f"Qdrant is unreachable while {what}: {exc.source}") from exc
    except qdrant_errors.UnexpectedResponse as exc:
        if exc.status_code is not None and exc.status_code >= 500:
            raise errors.Unavailable(
                f"Qdrant failed while {what}: {exc.status_code} {exc.reason_phrase}"
            ) from exc
        raise


class OnThreads(abc.ABC):
    """An async context manager around a blocking store: its calls run on threads of its
    own (``workers``), never on the event loop. Entering runs ``_opening`` there (closing
    again if it fails); closing runs ``_closing``, once."""

    def __init__(self, *, workers: int, name: str) -> None:
        self._threads = concurrent.futures.ThreadPoolExecutor(
            max_workers=workers, thread_name_prefix=name
        )
        self._closed = False

    @abc.abstractmethod
    def _opening(self) -> None:
        """Open the store (on one of its threads)."""

    @abc.abstractmethod
    def _closing(self) -> None:
        """Close the store (on one of its threads)."""

    async def _run(self, fn: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._threads, functools.partial(fn, *args, **kwargs))

    async def __aenter__(self) -> Self:
        try:
            await self._run(self._opening)
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the store; closing twice is a no-op."""
        if not self._closed:
            self._closed = True
            await self._run(self._closing)
            self._threads.shutdown(wait=True)


def payload(chunk: Chunk, *, inactive: bool | int) -> dict[str, Any]:
    """The point's payload: where the chunk sits and its text, not yet ``active``."""
    return {
        "tenant": chunk.tenant,
        "knowledge_base": chunk.knowledge_base,
        "document_id": chunk.document_id,
        "version": chunk.version,
        "chunk_index": chunk.index,
        "char_start": chunk.start,
        "char_end": chunk.end,
        "text": chunk.text,
        "active": inactive,
        "metadata_terms": metadata_terms(chunk.metadata),
    }


def route(mode: Mode, dense: Sequence[float] | None, words: Any) -> Mode | None:
    """Which search ``mode`` comes to: sparse without a query vector, dense without query
    words, None (no hit) for a sparse search without words."""
    if mode == "sparse" or (mode == "hybrid" and dense is None):
        return "sparse" if words.indices else None
    if mode == "dense" or not words.indices:
        return "dense"
    return "hybrid"


class QdrantIndex(OnThreads):
    """Chunks of every tenant in one collection; an async context manager owning the client.

    Entering creates the collection if it is missing and checks that an
    existing one has both vectors as expected; leaving closes the client.
    """

    def __init__(
        self, client: QdrantClient, *, collection: str, server: bool, dimensions: int
    ) -> None:
        super().__init__(workers=4 if server else 1, name="qdrant")
        self._client = client
        self._collection = collection
        self._server = server
        self._dimensions = dimensions

    @classmethod
    def from_settings(cls, cfg: knowledge_settings.KnowledgeSettings) -> QdrantIndex:
        """The index ``cfg`` describes: a server when ``qdrant_url`` is set, else local mode."""
        collection = f"{cfg.qdrant_collection_prefix}-knowledge"
        if cfg.qdrant_url:
            key = cfg.qdrant_api_key.get_secret_value() if cfg.qdrant_api_key else None
            client = QdrantClient(url=cfg.qdrant_url, api_key=key, timeout=30)
            return cls(
                client, collection=collection, server=True, dimensions=cfg.embedding_dimensions
            )
        client = (
            QdrantClient(path=cfg.qdrant_path)
            if cfg.qdrant_path
            else QdrantClient(location=":memory:")
        )
        return cls(client, collection=collection, server=False, dimensions=cfg.embedding_dimensions)

    def _opening(self) -> None:
        with _unavailable_when_down("opening the collection"):
            self._ensure_collection()

    def _closing(self) -> None:
        self._client.close()

    def _ensure_collection(self) -> None:
        if not self._client.collection_exists(self._collection):
            try:
                self._client.create_collection(
                    self._collection,
                    vectors_config={
                        DENSE: models.VectorParams(
                            size=self._dimensions, distance=models.Distance.COSINE
                        )
                    },
                    sparse_vectors_config={
                        TEXT: models.SparseVectorParams(modifier=models.Modifier.IDF)
                    },
                )
            except qdrant_errors.UnexpectedResponse as exc:
                if exc.status_code != 409:  # another replica created it first
                    raise
        info = self._client.get_collection(self._collection)
        text = (info.config.params.sparse_vectors or {}).get(TEXT)
        vectors = info.config.params.vectors
        dense = vectors.get(DENSE) if isinstance(vectors, dict) else None
        if text is None or text.modifier != models.Modifier.IDF:
            raise errors.FailedPrecondition(
                f"Qdrant collection {self._collection!r} exists without the sparse vector "
                f"{TEXT!r} with modifier IDF; delete it or choose another "
                "AION_KNOWLEDGE_QDRANT_COLLECTION_PREFIX"
            )
        if dense is None or dense.size != self._dimensions:
            raise errors.FailedPrecondition(
                f"Qdrant collection {self._collection!r} has no dense vector {DENSE!r} of "
                f"{self._dimensions} dimensions (AION_KNOWLEDGE_EMBEDDING_DIMENSIONS); delete "
                "it or choose another AION_KNOWLEDGE_QDRANT_COLLECTION_PREFIX"
            )
        if self._server:
            # Only the missing ones: a server may refuse an index that exists already.
            # Local mode scans everything and warns that payload indexes do nothing there.
            for field, schema in self._payload_indexes().items():
                if field not in info.payload_schema:
                    self._client.create_payload_index(self._collection, field, schema)

    @staticmethod
    def _payload_indexes() -> dict[str, models.PayloadSchemaType | models.KeywordIndexParams]:
        return {
            "tenant": models.KeywordIndexParams(
                type=models.KeywordIndexType.KEYWORD, is_tenant=True
            ),
            "knowledge_base": models.PayloadSchemaType.KEYWORD,
            "document_id": models.PayloadSchemaType.KEYWORD,
            "version": models.PayloadSchemaType.INTEGER,
            "active": models.PayloadSchemaType.BOOL,
            "metadata_terms": models.PayloadSchemaType.KEYWORD,
        }

    @staticmethod
    def _point(chunk: Chunk) -> models.PointStruct:
        text = sparse.document_vector(chunk.text)
        vectors: dict[str, Any] = {DENSE: list(chunk.dense)}
        if text.indices:  # a chunk without words gets no sparse vector: no word finds it
            vectors[TEXT] = text
        return models.PointStruct(
            id=point_id(
                chunk.tenant, chunk.knowledge_base, chunk.document_id, chunk.version, chunk.index
            ),
            vector=vectors,
            payload=payload(chunk, inactive=False),
        )

    async def put(self, chunks: Sequence[Chunk]) -> None:
        """Store chunks, inactive (invisible to searches) until their version is activated."""
        points = [self._point(c) for c in chunks]
        with _unavailable_when_down("storing chunks"):
            for start in range(0, len(points), UPSERT_BATCH):
                await self._run(
                    self._client.upsert,
                    self._collection,
                    points=points[start : start + UPSERT_BATCH],
                )

    async def activate(
        self, tenant: str, knowledge_base: str, document_id: str, version: int
    ) -> None:
        """Make the version's chunks searchable and remove every other version's."""
        doc = _document(tenant, knowledge_base, document_id)
        with _unavailable_when_down("activating a version"):
            await self._run(
                self._client.set_payload,
                self._collection,
                {"active": True},
                points=models.Filter(must=[*doc, _match("version", version)]),
            )
            await self._run(
                self._client.delete,
                self._collection,
                points_selector=models.Filter(must=doc, must_not=[_match("version", version)]),
            )

    async def drop_version(
        self, tenant: str, knowledge_base: str, document_id: str, version: int
    ) -> None:
        """Remove one version's chunks (a failed or superseded one, or a retry's leftovers)."""
        with _unavailable_when_down("removing a version"):
            await self._run(
                self._client.delete,
                self._collection,
                points_selector=models.Filter(
                    must=[
                        *_document(tenant, knowledge_base, document_id),
                        _match("version", version),
                    ]
                ),
            )

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
            must.append(_match("active", active))
        with _unavailable_when_down("counting chunks"):
            found = await self._run(
                self._client.count,
                self._collection,
                count_filter=models.Filter(must=must),
                exact=True,
            )
        return int(found.count)

    async def delete_document(self, tenant: str, knowledge_base: str, document_id: str) -> int:
        """Remove every version's chunks; how many active ones there were."""
        selector = models.Filter(must=_document(tenant, knowledge_base, document_id))
        with _unavailable_when_down("deleting a document"):
            active = await self.count(tenant, knowledge_base, document_id, active=True)
            await self._run(self._client.delete, self._collection, points_selector=selector)
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
        scope: list[models.Condition] = [
            _match("tenant", tenant),
            _match("knowledge_base", knowledge_base),
            _match("active", True),
        ]
        where = models.Filter(
            must=[*scope, *(_match("metadata_terms", t) for t in metadata_terms(filters))]
        )
        # Rarity is measured within the knowledge base, never across tenants.
        idf = models.SearchParams(idf=models.IdfCorpusParams(corpus=models.Filter(must=scope)))
        words = sparse.query_vector(text)
        kwargs: dict[str, Any]
        way = route(mode, dense, words)
        if way is None:
            return []
        if way == "sparse":
            kwargs = {"query": words, "using": TEXT, "search_params": idf}
        elif way == "dense":
            kwargs = {"query": list(dense or ()), "using": DENSE, "score_threshold": min_similarity}
        else:
            depth = max(top_k * 4, 20)
            kwargs = {
                "prefetch": [
                    models.Prefetch(
                        query=list(dense or ()),
                        using=DENSE,
                        filter=where,
                        limit=depth,
                        score_threshold=min_similarity,
                    ),
                    models.Prefetch(query=words, using=TEXT, filter=where, limit=depth, params=idf),
                ],
                "query": models.FusionQuery(fusion=models.Fusion.RRF),
            }
        with _unavailable_when_down("searching"):
            found = await self._run(
                self._client.query_points,
                self._collection,
                query_filter=where,
                limit=top_k,
                with_payload=True,
                **kwargs,
            )
        return [hit_from_payload(p.payload or {}, p.score) for p in found.points]


def hit_from_payload(payload: Mapping[str, Any], score: float) -> Hit:
    return Hit(
        knowledge_base=str(payload["knowledge_base"]),
        document_id=str(payload["document_id"]),
        version=int(payload["version"]),
        index=int(payload["chunk_index"]),
        text=str(payload["text"]),
        start=int(payload["char_start"]),
        end=int(payload["char_end"]),
        score=score,
    )
