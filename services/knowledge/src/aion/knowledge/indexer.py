"""Indexing one version: original -> text -> chunks -> embeddings -> Qdrant -> READY.

``Indexer.handle`` is what a document event does. It claims the version in
Postgres under a lease (kept alive by a heartbeat that also records
progress), reads the original from MinIO, extracts and chunks the text,
embeds the chunks in pipelined batches while the previous batch is written
to Qdrant (inactive), and finally, with the document row locked, activates
the version in Qdrant and marks it READY.

What can go wrong, and what follows:

- the bytes hold no text, or too much: FAILED with the reason, its chunks removed;
- a store or the executor is away: the error is noted and the lease left to
  lapse, so the reaper queues the version again; after ``max_attempts``
  claims it ends FAILED with the last error;
- the worker dies: its lease lapses, the reaper queues the version again and
  the next claim starts it over (removing what the dead worker stored);
- the document is deleted, or a newer version wins, meanwhile: the heartbeat
  or the final check notices, and this version's chunks are removed.

``Reaper`` is the loop that queues lost versions again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from aion.core import errors, telemetry
from aion.knowledge import (
    chunking,
    db,
    documents,
    embedder,
    extract,
    objects,
    qdrant_index,
)
from aion.knowledge import settings as knowledge_settings

log = logging.getLogger(__name__)


class _Lost(Exception):
    """The version is no longer this worker's."""


class Indexer:
    """Indexes versions for one replica."""

    def __init__(
        self,
        *,
        pool: db.Pool,
        store: objects.ObjectStore,
        index: qdrant_index.Index,
        embed: embedder.Embedder,
        chunker: chunking.Chunker,
        cfg: knowledge_settings.KnowledgeSettings,
    ) -> None:
        self._pool = pool
        self._store = store
        self._index = index
        self._embed = embed
        self._chunker = chunker
        self._cfg = cfg

    async def handle(self, version_id: int) -> None:
        """Index the version if it is this worker's to index."""
        cfg = self._cfg
        claim = await documents.claim(
            self._pool,
            version_id,
            worker=cfg.worker_id,
            lease_s=cfg.lease_s,
            max_attempts=cfg.max_attempts,
        )
        v = claim.version
        if v is None:
            return
        telemetry.bind_tenant(v.tenant)  # the indexing's log lines and span name it
        if claim.reason in ("exhausted", "superseded"):
            log.info("version %d of %s is %s", v.version, v.document_id, claim.reason)
            await self._index.drop_version(v.tenant, v.knowledge_base, v.document_id, v.version)
            return
        if claim.reason:  # done, or held by a live worker
            return
        await self._with_lease(v)

    async def _with_lease(self, v: documents.Version) -> None:
        progress = {"chunks": 0, "done": 0}
        work = asyncio.ensure_future(self._index_version(v, progress))
        beat = asyncio.ensure_future(self._heartbeat(v, progress, work))
        try:
            await work
        except asyncio.CancelledError:
            if not beat.done() or beat.result() is not False:
                raise
            await self._lost(v)  # the heartbeat cancelled the work: the version was lost
        except _Lost:
            await self._lost(v)
        except extract.ExtractionError as exc:
            await self._fail(v, str(exc))
        except (errors.InvalidArgument, errors.FailedPrecondition) as exc:
            await self._fail(v, exc.message)
        except errors.NotFound as exc:
            if await documents.by_id(self._pool, v.id) is None:
                await self._lost(v)  # deleted meanwhile, original and all
            else:
                await self._fail(v, exc.message)
        except Exception as exc:
            message = (
                exc.message
                if isinstance(exc, errors.AionError)
                else (f"{type(exc).__name__}: {exc}")
            )
            log.warning(
                "indexing version %d of %s failed, to be retried: %s",
                v.version,
                v.document_id,
                message,
            )
            with contextlib.suppress(errors.Unavailable):
                await documents.note_error(
                    self._pool, v.id, worker=self._cfg.worker_id, error=message
                )
        finally:
            beat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beat

    async def _heartbeat(
        self, v: documents.Version, progress: dict[str, int], work: asyncio.Future[None]
    ) -> bool:
        while True:
            await asyncio.sleep(self._cfg.heartbeat_s)
            try:
                held = await documents.heartbeat(
                    self._pool,
                    v.id,
                    worker=self._cfg.worker_id,
                    lease_s=self._cfg.lease_s,
                    chunks_done=progress["done"],
                )
            except errors.Unavailable:
                continue  # the lease may lapse; the final check tells
            if not held:
                work.cancel()
                return False

    async def _index_version(self, v: documents.Version, progress: dict[str, int]) -> None:
        cfg = self._cfg
        content = await self._store.get(v.object_key)
        text = await asyncio.to_thread(extract.text, content, v.content_type)
        pieces = await asyncio.to_thread(self._chunker.split, text)
        if not pieces:
            raise extract.ExtractionError("the document's text has no words to index")
        if len(pieces) > cfg.max_chunks:
            raise extract.ExtractionError(
                f"the document makes {len(pieces)} chunks; the limit is {cfg.max_chunks}"
            )
        # What an earlier, interrupted claim of this version stored.
        await self._index.drop_version(v.tenant, v.knowledge_base, v.document_id, v.version)
        progress["chunks"] = len(pieces)
        await self._progress(v, chunks=len(pieces), done=0)
        window = cfg.embed_batch * cfg.embed_concurrency
        windows = [pieces[i : i + window] for i in range(0, len(pieces), window)]
        first = 0
        pending = asyncio.ensure_future(self._embed.embed([p.text for p in windows[0]]))
        try:
            for n, group in enumerate(windows):
                vectors = await pending
                if n + 1 < len(windows):
                    pending = asyncio.ensure_future(
                        self._embed.embed([p.text for p in windows[n + 1]])
                    )
                await self._index.put(
                    [
                        qdrant_index.Chunk(
                            tenant=v.tenant,
                            knowledge_base=v.knowledge_base,
                            document_id=v.document_id,
                            version=v.version,
                            index=first + i,
                            text=p.text,
                            start=p.start,
                            end=p.end,
                            dense=vec,
                            metadata=v.metadata,
                        )
                        for i, (p, vec) in enumerate(zip(group, vectors, strict=True))
                    ]
                )
                first += len(group)
                progress["done"] = first
                if n + 1 < len(windows):
                    await self._progress(v, chunks=len(pieces), done=first)
        finally:
            if not pending.done():
                pending.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await pending
        await self._finish(v, len(pieces))

    async def _progress(self, v: documents.Version, *, chunks: int, done: int) -> None:
        if not await documents.heartbeat(
            self._pool,
            v.id,
            worker=self._cfg.worker_id,
            lease_s=self._cfg.lease_s,
            chunks=chunks,
            chunks_done=done,
        ):
            raise _Lost

    async def _finish(self, v: documents.Version, chunks: int) -> None:
        unused: list[str] = []
        with db.reachable():
            async with self._pool.connection() as conn, conn.transaction():
                row = await documents.lock_document(conn, v)
                if (
                    row is None
                    or row["state"] != documents.INDEXING
                    or row["worker"] != self._cfg.worker_id
                ):
                    raise _Lost
                if row["ready_version"] > v.version:
                    await documents.supersede(conn, v.id)
                    await self._index.drop_version(
                        v.tenant, v.knowledge_base, v.document_id, v.version
                    )
                    return
                # In Qdrant first: if the commit then fails, the next claim redoes both.
                await self._index.activate(v.tenant, v.knowledge_base, v.document_id, v.version)
                unused = await documents.make_ready(conn, v, chunks=chunks)
        log.info(
            "indexed version %d of %s/%s: %d chunks",
            v.version,
            v.knowledge_base,
            v.document_id,
            chunks,
        )
        try:
            await self._store.remove(unused)
        except errors.AionError as exc:
            log.warning("could not remove replaced originals %s: %s", unused, exc)

    async def _lost(self, v: documents.Version) -> None:
        """Remove this version's chunks unless another worker now holds it."""
        current = await documents.by_id(self._pool, v.id)
        if current is not None and current.state == documents.INDEXING:
            return  # claimed again after our lease lapsed: its worker owns the chunks
        if current is not None and current.state == documents.READY:
            return
        log.info(
            "version %d of %s was deleted or replaced while indexing; removing its chunks",
            v.version,
            v.document_id,
        )
        await self._index.drop_version(v.tenant, v.knowledge_base, v.document_id, v.version)

    async def _fail(self, v: documents.Version, error: str) -> None:
        log.info(
            "version %d of %s/%s FAILED: %s", v.version, v.knowledge_base, v.document_id, error
        )
        if await documents.fail(self._pool, v.id, worker=self._cfg.worker_id, error=error):
            await self._index.drop_version(v.tenant, v.knowledge_base, v.document_id, v.version)


class Reaper:
    """Queues again the versions whose event or worker was lost."""

    def __init__(
        self,
        *,
        pool: db.Pool,
        publish: Callable[[str, int], Awaitable[None]],
        cfg: knowledge_settings.KnowledgeSettings,
    ) -> None:
        self._pool = pool
        self._publish = publish
        self._cfg = cfg

    async def once(self) -> int:
        """One pass; how many versions were queued again."""
        due = await documents.due(
            self._pool, requeue_after_s=self._cfg.requeue_after_s, lease_s=self._cfg.lease_s
        )
        for item in due:
            await self._publish(item.key, item.id)
        if due:
            log.info("queued %d versions again", len(due))
        return len(due)

    async def run(self) -> None:
        """Pass every ``reaper_interval_s`` until cancelled."""
        while True:
            try:
                await self.once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("reaper pass failed: %s", exc)
            await asyncio.sleep(self._cfg.reaper_interval_s)
