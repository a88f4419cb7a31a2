"""``make bench-knowledge``: ingestion against the raw embedding model, and search latency.

Starts (or reuses) the local Postgres, Kafka and MinIO, the real all-MiniLM-L6-v2
embedding executor as a process, and the knowledge service in this process
(its real composition), on a database, topic prefix and bucket of its own.

- ``raw_embed_per_s``: texts per second straight through the executor's
  ``Embed`` RPC, the best over batch sizes, with the same chunks the service
  makes (the model's best batch throughput in this run).
- ``ingest_chunks_per_s``: chunks per second from the first upload to the
  last document READY, through Ingest -> MinIO -> Postgres -> Kafka ->
  worker -> Embed -> Qdrant; ``ingest_ratio`` is the two divided.
- ``search_p50_ms`` / ``search_p95_ms``: hybrid Search over gRPC against a
  knowledge base of ``BENCH_KNOWLEDGE_CHUNKS`` chunks (real chunk texts and
  their real embeddings, written straight to the index and activated, since
  embedding 100k chunks on a CPU takes longer than a benchmark should), with
  dense and sparse modes too; ``search_index_only_by_mode``: the store's own
  share (the same queries on the index, their embeddings made beforehand).

The speed corpus is the Python documentation's topic texts that every Python
ships (``pydoc_data.topics``).

- ``quality``: recall@5 and nDCG@10 of sparse, dense and hybrid search on a
  labelled retrieval set nobody here wrote: fitz-gov's (the ``fitz-gov`` PyPI
  package, MIT, a dev dependency: its corpus of 5,043 short documents and its
  queries' relevant documents, ``data/queries/query_mappings.json``), ingested
  through the service like any upload (Ingest -> ... -> Qdrant) into a
  knowledge base of its own. Each query's chunk hits become a ranking of
  distinct documents (a document counts at its best chunk's place). Printed,
  never asserted.

Knobs: BENCH_KNOWLEDGE_DOCS (30), BENCH_KNOWLEDGE_CHUNKS (10000; the issue's
target is 100000), BENCH_KNOWLEDGE_QUERIES (30, per mode, for latency),
BENCH_KNOWLEDGE_QUALITY (1; 0 skips the quality part), BENCH_KNOWLEDGE_QUALITY_QUERIES
(600 of fitz-gov's 2,812 judged queries, spread evenly over them),
BENCH_KNOWLEDGE_QUALITY_DOCS (all; N keeps the chosen queries' relevant documents
and N others, for a quick run whose figures flatter),
BENCH_KNOWLEDGE_EXECUTOR_THREADS (2).
AION_KNOWLEDGE_QDRANT_URL (a server) and AION_KNOWLEDGE_QDRANT_ENGINE (edge, the
default, or local) choose the store, as for the service.
Prints one JSON object.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import importlib.resources
import json
import math
import os
import random
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from pydoc_data import topics
from typing import Any, Literal

import psycopg
from psycopg import sql

from aion.api.executor.v1 import executor_pb2, executor_pb2_grpc
from aion.api.knowledge.v1 import knowledge_pb2
from aion.api.v1 import knowledge_pb2 as public
from aion.core import channels
from aion.infra import bench
from aion.infra.devstack import suite as suite_testing
from aion.infra.paths import Layout
from aion.infra.registry import make
from aion.knowledge import chunking, evaluation, qdrant_index, testing
from aion.knowledge import settings as knowledge_settings


def _knob(name: str, default: int) -> int:
    return bench.knob("KNOWLEDGE", name, default)


DOCS = _knob("DOCS", 30)
CHUNKS = _knob("CHUNKS", 10_000)
QUERIES = _knob("QUERIES", 30)
QUALITY = os.environ.get("BENCH_KNOWLEDGE_QUALITY", "1") != "0"
QUALITY_QUERIES = _knob("QUALITY_QUERIES", 600)
QUALITY_DOCS = _knob("QUALITY_DOCS", 1_000_000)
THREADS = _knob("EXECUTOR_THREADS", 2)
TENANT = "bench"
ENGINE: Literal["edge", "local"] = (
    "local" if os.environ.get("AION_KNOWLEDGE_QDRANT_ENGINE") == "local" else "edge"
)


def _log(msg: str) -> None:
    print(f"bench-knowledge: {msg}", file=sys.stderr, flush=True)


_pct = bench.percentile


def _corpus() -> list[tuple[str, str]]:
    """(name, text) of the documentation topics, longest first, DOCS of them."""
    found = sorted(topics.topics.items(), key=lambda kv: -len(kv[1]))
    return [(name, text) for name, text in found[:DOCS] if text.strip()]


def _executor(log: Path) -> tuple[subprocess.Popen[bytes], str]:
    port, health_port = suite_testing.free_port(), suite_testing.free_port()
    env = {
        **os.environ,
        **testing.CA.env(log.parent / "tls", "executor"),
        "AION_EXECUTOR_HEALTH_PORT": str(health_port),
        "AION_EXECUTOR_MODEL_TASK": "embed",
        "AION_EXECUTOR_PORT": str(port),
        "AION_EXECUTOR_N_THREADS": str(THREADS),
        "AION_EXECUTOR_HTTP_PORT": "0",
        "AION_EXECUTOR_EMBED_MAX_BATCH": "64",
        "HF_HUB_OFFLINE": "1",
    }
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "aion.executor"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    target = f"127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while suite_testing.health_status(f"127.0.0.1:{health_port}") != "SERVING":
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise SystemExit(f"the embedding executor did not start; see {log}")
        time.sleep(0.3)
    return proc, target


async def _raw_embed(target: str, texts: list[str]) -> dict[str, float]:
    """Texts/s straight through Embed, per batch size (4 calls in flight, as the service)."""
    rates: dict[str, float] = {}
    async with channels.connect(
        target, tls=testing.CA.tls("knowledge"), peer="executor"
    ) as channel:
        stub = executor_pb2_grpc.ExecutorStub(channel)
        await stub.Embed(executor_pb2.EmbedRequest(texts=texts[:8]))  # warm
        for batch in (16, 32, 64):
            limit = asyncio.Semaphore(4)

            async def one(part: list[str], limit: asyncio.Semaphore = limit) -> None:
                async with limit:
                    await stub.Embed(executor_pb2.EmbedRequest(texts=part), timeout=300)

            started = time.perf_counter()
            await asyncio.gather(*(one(texts[i : i + batch]) for i in range(0, len(texts), batch)))
            rates[str(batch)] = len(texts) / (time.perf_counter() - started)
    return rates


async def _ingest(
    service: testing.Service, kb: str, corpus: list[tuple[str, str, str]]
) -> dict[str, Any]:
    """Upload (document id, title, text) each, then wait until every one is READY or FAILED."""
    started = time.perf_counter()
    for doc, title, text in corpus:
        await service.ingest(TENANT, kb, doc, text.encode(), wait=False, title=title)
    deadline = time.monotonic() + 3600
    while True:
        documents = await _documents(service, kb)
        if all(d.state in testing.TERMINAL for d in documents):
            break
        if time.monotonic() > deadline:
            raise SystemExit("ingestion did not finish in an hour")
        await asyncio.sleep(0.5)
    elapsed = time.perf_counter() - started
    ready = [d for d in documents if d.state == public.DOCUMENT_STATE_READY]
    chunks = sum(d.chunks for d in ready)
    return {
        "documents": len(ready),
        "failed": len(documents) - len(ready),
        "chunks": chunks,
        "seconds": round(elapsed, 2),
        "ingest_chunks_per_s": round(chunks / elapsed, 1),
    }


async def _documents(service: testing.Service, kb: str) -> list[public.Document]:
    """Every document of the knowledge base, page by page."""
    out: list[public.Document] = []
    token = ""
    while True:
        page = await service.stub.ListDocuments(
            knowledge_pb2.ListDocumentsRequest(
                tenant=TENANT,
                request=public.ListDocumentsRequest(
                    knowledge_base=kb, page_size=500, page_token=token
                ),
            )
        )
        out.extend(page.documents)
        token = page.next_page_token
        if not token:
            return out


def _labelled_set() -> tuple[list[tuple[str, str, str]], list[tuple[str, dict[str, int]]]]:
    """fitz-gov's corpus as (id, title, title + text) and its judged queries as
    (query, {relevant document: 1}), QUALITY_QUERIES of them spread evenly."""
    root = importlib.resources.files("fitz_gov") / "data"
    corpus: dict[str, tuple[str, str, str]] = {}
    for line in (root / "corpus" / "documents.jsonl").read_text().splitlines():
        if line.strip():
            doc = json.loads(line)
            title = str(doc.get("title", ""))
            text = f"{title}\n\n{doc['content']}" if title else str(doc["content"])
            if text.strip():  # 14 documents are empty (none judged relevant); 19 ids repeat
                corpus.setdefault(str(doc["id"]), (str(doc["id"]), title, text))
    mappings = json.loads((root / "queries" / "query_mappings.json").read_text())["mappings"]
    judged = [
        (str(q["query"]), {str(d): 1 for d in q["relevant_docs"]})
        for _, queries in sorted(mappings.items())
        for _, q in sorted(queries.items())
        if q.get("relevant_docs")
    ]
    chosen = judged[:: max(1, len(judged) // QUALITY_QUERIES)][:QUALITY_QUERIES]
    docs = list(corpus.values())
    if len(docs) > QUALITY_DOCS:
        wanted = {d for _, relevant in chosen for d in relevant}
        others = [d for d in docs if d[0] not in wanted][:QUALITY_DOCS]
        docs = [d for d in docs if d[0] in wanted] + others
    return docs, chosen


async def _quality(service: testing.Service) -> dict[str, Any]:
    """Ingest the labelled set's corpus, then recall@5 and nDCG@10 per search mode."""
    corpus, judged = _labelled_set()
    _log(f"quality: ingesting {len(corpus)} documents, then {len(judged)} queries per mode")
    ingest = await _ingest(service, "fitz-gov", corpus)
    out: dict[str, Any] = {
        "dataset": f"fitz-gov {importlib.metadata.version('fitz-gov')} (PyPI, MIT): "
        "data/corpus/documents.jsonl, data/queries/query_mappings.json relevant_docs",
        "docs": ingest["documents"],
        "docs_failed": ingest["failed"],
        "chunks": ingest["chunks"],
        "ingest_chunks_per_s": ingest["ingest_chunks_per_s"],
        "queries": len(judged),
    }
    for mode, value in (
        ("sparse", public.SEARCH_MODE_SPARSE),
        ("dense", public.SEARCH_MODE_DENSE),
        ("hybrid", public.SEARCH_MODE_HYBRID),
    ):
        recall, ndcg = [], []
        for query, relevant in judged:
            hits = await service.search(TENANT, "fitz-gov", query, mode=value, top_k=30)
            ranking = evaluation.distinct(h.document_id for h in hits)
            recall.append(evaluation.recall_at(5, ranking, relevant))
            ndcg.append(evaluation.ndcg_at(10, ranking, relevant))
        out[mode] = {
            "recall_at_5": round(evaluation.mean(recall), 4),
            "ndcg_at_10": round(evaluation.mean(ndcg), 4),
        }
    return out


async def _fill(index: qdrant_index.Index, pieces: list[str], vectors: list[list[float]]) -> float:
    """CHUNKS chunks in the knowledge base "bulk": real texts and vectors, cycled, each
    vector nudged so no two points are equal; the seconds it took."""
    rng = random.Random(7)
    started = time.perf_counter()
    batch: list[qdrant_index.Chunk] = []
    for i in range(CHUNKS):
        base = vectors[i % len(vectors)]
        noisy = [v + rng.gauss(0, 0.01) for v in base]
        norm = math.sqrt(sum(v * v for v in noisy))
        batch.append(
            qdrant_index.Chunk(
                tenant=TENANT,
                knowledge_base="bulk",
                document_id=f"doc-{i // 50}",
                version=1,
                index=i % 50,
                text=pieces[i % len(pieces)],
                start=0,
                end=0,
                dense=[v / norm for v in noisy],
                metadata={"shard": str(i % 10)},
            )
        )
        if len(batch) == 1000:
            await index.put(batch)
            batch = []
            if (i + 1) % 20_000 == 0:
                _log(f"stored {i + 1} of {CHUNKS} chunks")
    if batch:
        await index.put(batch)
    for doc in range(math.ceil(CHUNKS / 50)):
        await index.activate(TENANT, "bulk", f"doc-{doc}", 1)
    return time.perf_counter() - started


async def _search(service: testing.Service, queries: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for mode, value in (
        ("hybrid", public.SEARCH_MODE_HYBRID),
        ("dense", public.SEARCH_MODE_DENSE),
        ("sparse", public.SEARCH_MODE_SPARSE),
    ):
        times = []
        for query in queries:
            started = time.perf_counter()
            await service.search(TENANT, "bulk", query, mode=value, top_k=10)
            times.append((time.perf_counter() - started) * 1000)
        out[mode] = {"p50_ms": round(_pct(times, 50), 1), "p95_ms": round(_pct(times, 95), 1)}
    return out


async def _search_index(
    index: qdrant_index.Index,
    cfg: knowledge_settings.KnowledgeSettings,
    queries: list[str],
    vectors: list[list[float]],
) -> dict[str, Any]:
    """The store alone: the same queries, their embeddings computed beforehand (Search's
    time less the query's Embed call and gRPC)."""
    out: dict[str, Any] = {}
    modes: tuple[qdrant_index.Mode, ...] = ("hybrid", "dense", "sparse")
    for mode in modes:
        times = []
        for query, vector in zip(queries, vectors, strict=True):
            started = time.perf_counter()
            await index.search(
                TENANT,
                "bulk",
                mode=mode,
                dense=vector,
                text=query,
                top_k=10,
                filters={},
                min_similarity=cfg.dense_min_similarity,
            )
            times.append((time.perf_counter() - started) * 1000)
        out[mode] = {"p50_ms": round(_pct(times, 50), 1), "p95_ms": round(_pct(times, 95), 1)}
    return out


async def main() -> dict[str, Any]:
    layout = Layout.from_env()
    servers = {name: make(name, layout) for name in ("postgres", "kafka", "minio")}
    for server in servers.values():
        server.up()
    postgres, kafka, minio = servers["postgres"], servers["kafka"], servers["minio"]
    db = f"bench_knowledge_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(postgres.dsn, autocommit=True) as conn:  # type: ignore[attr-defined]
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(db)))
    work = Path(tempfile.mkdtemp(prefix="bench-knowledge-"))
    proc, target = _executor(work / "executor.log")
    corpus = _corpus()
    try:
        cfg = knowledge_settings.KnowledgeSettings(
            postgres_dsn=postgres.dsn.rsplit("/", 1)[0] + "/" + db,  # type: ignore[attr-defined]
            kafka_bootstrap=kafka.bootstrap,  # type: ignore[attr-defined]
            minio_endpoint=minio.endpoint,  # type: ignore[attr-defined]
            minio_access_key=minio.access_key,  # type: ignore[attr-defined]
            minio_secret_key=minio.secret_key,  # type: ignore[attr-defined]
            minio_bucket=f"bench-{uuid.uuid4().hex[:8]}",
            topic_prefix=f"{db}.",
            executor_target=target,
            port=0,
            health_port=0,
            workers=4,
            qdrant_path="",
            qdrant_url=os.environ.get("AION_KNOWLEDGE_QDRANT_URL", ""),
            qdrant_engine=ENGINE,
        )
        chunker = chunking.Chunker(None, size=cfg.chunk_tokens, overlap=cfg.chunk_overlap_tokens)
        pieces = [p.text for _, text in corpus for p in chunker.split(text)]
        _log(f"{len(corpus)} documents, {len(pieces)} chunks; raw embedding")
        raw = await _raw_embed(target, pieces)
        async with testing.Service(cfg) as service:
            _log("ingesting through the service")
            ingest = await _ingest(service, "docs", [(n, n, text) for n, text in corpus])
            quality = await _quality(service) if QUALITY else None
            assert service.index is not None
            rng = random.Random(11)
            queries = [" ".join(rng.choice(pieces).split()[:8]) for _ in range(QUERIES)]
            async with channels.connect(
                target, tls=testing.CA.tls("knowledge"), peer="executor"
            ) as channel:
                stub = executor_pb2_grpc.ExecutorStub(channel)
                resp = await stub.Embed(executor_pb2.EmbedRequest(texts=pieces[:64]))
                vectors = [list(e.values) for e in resp.embeddings]
                resp = await stub.Embed(executor_pb2.EmbedRequest(texts=queries))
                query_vectors = [list(e.values) for e in resp.embeddings]
            _log(f"storing {CHUNKS} chunks for the search benchmark")
            fill_s = await _fill(service.index, pieces, vectors)
            _log(f"{QUERIES} queries per mode")
            latency = await _search(service, queries)
            index_only = await _search_index(service.index, cfg, queries, query_vectors)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        with psycopg.connect(postgres.dsn, autocommit=True) as conn:  # type: ignore[attr-defined]
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(db))
            )
    best = max(raw.values())
    return {
        "corpus": "pydoc_data.topics (the Python documentation's topics)",
        "executor_threads": THREADS,
        "raw_embed_per_s": round(best, 1),
        "raw_embed_per_s_by_batch": {k: round(v, 1) for k, v in raw.items()},
        **ingest,
        "ingest_ratio": round(ingest["ingest_chunks_per_s"] / best, 3),
        "search_chunks": CHUNKS,
        "search_store_seconds": round(fill_s, 1),
        "qdrant": cfg.qdrant_url
        or {
            "edge": "Qdrant Edge (qdrant-edge-py) in the process, a temporary folder",
            "local": "qdrant-client local mode, in memory",
        }[cfg.qdrant_engine],
        "search_p50_ms": latency["hybrid"]["p50_ms"],
        "search_p95_ms": latency["hybrid"]["p95_ms"],
        "search_by_mode": latency,
        "search_index_only_by_mode": index_only,
        "quality": quality,
    }


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main()), indent=2))
