"""Documents and versions in Postgres: uploads, claims by workers, states and progress.

A version moves PENDING -> INDEXING (claimed by a worker under a lease,
``attempts`` counting claims) -> READY, FAILED or SUPERSEDED. The document
row is locked (``FOR UPDATE``) whenever a version is created, made READY or
the document deleted, so these never interleave.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
from collections.abc import Mapping, Sequence
from typing import Any

import psycopg
from psycopg import rows
from psycopg.types.json import Jsonb

from aion.knowledge import db

Conn = psycopg.AsyncConnection[rows.DictRow]

PENDING, INDEXING, READY, FAILED, SUPERSEDED = (
    "PENDING",
    "INDEXING",
    "READY",
    "FAILED",
    "SUPERSEDED",
)
OPEN = (PENDING, INDEXING)


@dataclasses.dataclass(frozen=True)
class Version:
    """One upload of a document, and how far its indexing got."""

    id: int
    tenant: str
    knowledge_base: str
    document_id: str
    version: int
    title: str
    metadata: Mapping[str, str]
    content_type: str
    size_bytes: int
    content_sha256: str
    object_key: str
    state: str
    error: str
    chunks: int
    chunks_done: int
    attempts: int
    worker: str | None
    created_at: datetime.datetime
    updated_at: datetime.datetime
    ready_version: int = 0

    @classmethod
    def of(cls, row: Mapping[str, Any]) -> Version:
        """The version a ``kb_versions`` row (joined or not) describes."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in row.items() if k in names})


_VERSION_OF_DOCUMENT = """
    SELECT v.*, d.ready_version FROM kb_documents d
    JOIN kb_versions v ON v.tenant = d.tenant AND v.knowledge_base = d.knowledge_base
        AND v.document_id = d.document_id AND v.version = d.latest_version
"""


async def record_upload(
    pool: db.Pool,
    *,
    tenant: str,
    knowledge_base: str,
    document_id: str,
    title: str,
    metadata: Mapping[str, str],
    content_type: str,
    size_bytes: int,
    sha256: str,
    object_key: str,
) -> tuple[Version, bool]:
    """The version for these bytes: the latest one when it has the same bytes, title and
    metadata (and did not fail), else a new PENDING one; and whether it is new."""
    with db.reachable():
        async with pool.connection() as conn, conn.transaction():
            await conn.execute(
                "INSERT INTO kb_documents (tenant, knowledge_base, document_id) "
                "VALUES (%s, %s, %s) ON CONFLICT DO NOTHING",
                (tenant, knowledge_base, document_id),
            )
            doc = await (
                await conn.execute(
                    "SELECT latest_version, ready_version FROM kb_documents WHERE tenant = %s "
                    "AND knowledge_base = %s AND document_id = %s FOR UPDATE",
                    (tenant, knowledge_base, document_id),
                )
            ).fetchone()
            assert doc is not None
            latest = await (
                await conn.execute(
                    "SELECT * FROM kb_versions WHERE tenant = %s AND knowledge_base = %s "
                    "AND document_id = %s AND version = %s",
                    (tenant, knowledge_base, document_id, doc["latest_version"]),
                )
            ).fetchone()
            if (
                latest is not None
                and latest["content_sha256"] == sha256
                and latest["state"] != FAILED
                and latest["title"] == title
                and latest["metadata"] == dict(metadata)
            ):
                return Version.of({**latest, "ready_version": doc["ready_version"]}), False
            number = int(doc["latest_version"]) + 1
            row = await (
                await conn.execute(
                    "INSERT INTO kb_versions (tenant, knowledge_base, document_id, version, title, "
                    "metadata, content_type, size_bytes, content_sha256, object_key) "
                    "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING *",
                    (
                        tenant,
                        knowledge_base,
                        document_id,
                        number,
                        title,
                        Jsonb(dict(metadata)),
                        content_type,
                        size_bytes,
                        sha256,
                        object_key,
                    ),
                )
            ).fetchone()
            assert row is not None
            # Older versions nobody started on will never be wanted now.
            await conn.execute(
                "UPDATE kb_versions SET state = 'SUPERSEDED', updated_at = now() "
                "WHERE tenant = %s AND knowledge_base = %s AND document_id = %s "
                "AND state = 'PENDING' AND version < %s",
                (tenant, knowledge_base, document_id, number),
            )
            await conn.execute(
                "UPDATE kb_documents SET latest_version = %s, updated_at = now() "
                "WHERE tenant = %s AND knowledge_base = %s AND document_id = %s",
                (number, tenant, knowledge_base, document_id),
            )
            return Version.of({**row, "ready_version": doc["ready_version"]}), True


async def by_id(pool: db.Pool, version_id: int) -> Version | None:
    """The version with this id (with its document's ready version), if it still exists."""
    with db.reachable():
        async with pool.connection() as conn:
            row = await (
                await conn.execute(
                    "SELECT v.*, d.ready_version FROM kb_versions v JOIN kb_documents d "
                    "USING (tenant, knowledge_base, document_id) WHERE v.id = %s",
                    (version_id,),
                )
            ).fetchone()
    return Version.of(row) if row else None


async def references(pool: db.Pool, object_key: str) -> bool:
    """Whether any version records the original under ``object_key``."""
    with db.reachable():
        async with pool.connection() as conn:
            row = await (
                await conn.execute(
                    "SELECT 1 FROM kb_versions WHERE object_key = %s LIMIT 1", (object_key,)
                )
            ).fetchone()
    return row is not None


async def latest(
    pool: db.Pool, tenant: str, knowledge_base: str, document_id: str
) -> Version | None:
    """The document's latest version, if the document exists."""
    with db.reachable():
        async with pool.connection() as conn:
            row = await (
                await conn.execute(
                    _VERSION_OF_DOCUMENT + " WHERE d.tenant = %s AND d.knowledge_base = %s "
                    "AND d.document_id = %s",
                    (tenant, knowledge_base, document_id),
                )
            ).fetchone()
    return Version.of(row) if row else None


async def listing(
    pool: db.Pool, tenant: str, knowledge_base: str, *, limit: int, after: tuple[str, str] | None
) -> list[Version]:
    """Latest versions of the tenant's documents (of one knowledge base when it is given),
    ordered by knowledge base and document id, those after ``after`` only."""
    where = ["d.tenant = %s"]
    args: list[Any] = [tenant]
    if knowledge_base:
        where.append("d.knowledge_base = %s")
        args.append(knowledge_base)
    if after is not None:
        where.append("(d.knowledge_base, d.document_id) > (%s, %s)")
        args.extend(after)
    with db.reachable():
        async with pool.connection() as conn:
            found = await (
                await conn.execute(
                    _VERSION_OF_DOCUMENT
                    + " WHERE "
                    + " AND ".join(where)
                    + " ORDER BY d.knowledge_base, d.document_id LIMIT %s",
                    (*args, limit),
                )
            ).fetchall()
    return [Version.of(r) for r in found]


@dataclasses.dataclass(frozen=True)
class Claim:
    """What a worker got when it asked for a version."""

    version: Version | None
    # Why not, when version is None: "done", "gone", "held", "exhausted", "superseded".
    reason: str = ""


async def claim(
    pool: db.Pool, version_id: int, *, worker: str, lease_s: float, max_attempts: int
) -> Claim:
    """Take the version for ``worker`` under a lease: when it is PENDING, or INDEXING
    under a lapsed lease with claims left. A lapsed version with none left ends FAILED
    ("exhausted"); one whose document has a newer version ends SUPERSEDED."""
    with db.reachable():
        async with pool.connection() as conn, conn.transaction():
            row = await (
                await conn.execute(
                    "SELECT v.*, d.latest_version, d.ready_version, v.lease_until < now() "
                    "AS lapsed FROM kb_versions v JOIN kb_documents d "
                    "USING (tenant, knowledge_base, document_id) WHERE v.id = %s FOR UPDATE OF v",
                    (version_id,),
                )
            ).fetchone()
            if row is None:
                return Claim(None, "gone")
            if row["state"] not in OPEN:
                return Claim(Version.of(row), "done")
            if row["state"] == INDEXING and not row["lapsed"]:
                return Claim(Version.of(row), "held")
            if row["latest_version"] > row["version"]:
                await _set(conn, version_id, SUPERSEDED, "")
                return Claim(Version.of(row), "superseded")
            if row["attempts"] >= max_attempts:
                error = (
                    f"indexing was interrupted {row['attempts']} times (its worker was "
                    f"lost); gave up. Last error: {row['error'] or 'none'}"
                )
                await _set(conn, version_id, FAILED, error)
                return Claim(Version.of({**row, "state": FAILED, "error": error}), "exhausted")
            claimed = await (
                await conn.execute(
                    "UPDATE kb_versions SET state = 'INDEXING', worker = %s, "
                    "attempts = attempts + 1, lease_until = now() + make_interval(secs => %s), "
                    "chunks_done = 0, updated_at = now() WHERE id = %s RETURNING *",
                    (worker, lease_s, version_id),
                )
            ).fetchone()
            assert claimed is not None
            return Claim(Version.of({**claimed, "ready_version": row["ready_version"]}))


async def _set(conn: Conn, version_id: int, state: str, error: str) -> None:
    await conn.execute(
        "UPDATE kb_versions SET state = %s, error = %s, worker = NULL, lease_until = NULL, "
        "updated_at = now() WHERE id = %s",
        (state, error, version_id),
    )


async def heartbeat(
    pool: db.Pool,
    version_id: int,
    *,
    worker: str,
    lease_s: float,
    chunks: int | None = None,
    chunks_done: int | None = None,
) -> bool:
    """Extend the lease (and record progress); False when the version is no longer this
    worker's (deleted, superseded, or claimed by another after the lease lapsed)."""
    with db.reachable():
        async with pool.connection() as conn, conn.transaction():
            cur = await conn.execute(
                "UPDATE kb_versions SET lease_until = now() + make_interval(secs => %s), "
                "chunks = COALESCE(%s, chunks), chunks_done = COALESCE(%s, chunks_done), "
                "updated_at = now() WHERE id = %s AND worker = %s AND state = 'INDEXING'",
                (lease_s, chunks, chunks_done, version_id, worker),
            )
            return cur.rowcount == 1


async def note_error(pool: db.Pool, version_id: int, *, worker: str, error: str) -> None:
    """Record a retriable error on a version this worker holds, and let its lease lapse
    soon so that another claim retries it."""
    with db.reachable():
        async with pool.connection() as conn, conn.transaction():
            await conn.execute(
                "UPDATE kb_versions SET error = %s, lease_until = now(), updated_at = now() "
                "WHERE id = %s AND worker = %s AND state = 'INDEXING'",
                (error, version_id, worker),
            )


async def fail(pool: db.Pool, version_id: int, *, worker: str, error: str) -> bool:
    """End a version this worker holds FAILED with ``error``; False when it was not held."""
    with db.reachable():
        async with pool.connection() as conn, conn.transaction():
            cur = await conn.execute(
                "UPDATE kb_versions SET state = 'FAILED', error = %s, worker = NULL, "
                "lease_until = NULL, updated_at = now() "
                "WHERE id = %s AND worker = %s AND state = 'INDEXING'",
                (error, version_id, worker),
            )
            return cur.rowcount == 1


async def lock_document(conn: Conn, version: Version) -> Mapping[str, Any] | None:
    """Lock the version's document row and return the version's current row with the
    document's ready version, or None when the document or version is gone."""
    doc = await (
        await conn.execute(
            "SELECT ready_version FROM kb_documents WHERE tenant = %s AND knowledge_base = %s "
            "AND document_id = %s FOR UPDATE",
            (version.tenant, version.knowledge_base, version.document_id),
        )
    ).fetchone()
    if doc is None:
        return None
    row = await (
        await conn.execute("SELECT * FROM kb_versions WHERE id = %s", (version.id,))
    ).fetchone()
    return None if row is None else {**row, "ready_version": doc["ready_version"]}


async def make_ready(conn: Conn, version: Version, *, chunks: int) -> list[str]:
    """Within the caller's transaction (document locked): the version READY and served,
    the one served before SUPERSEDED; returns the object keys no version uses now."""
    await conn.execute(
        "UPDATE kb_versions SET state = 'READY', error = '', chunks = %s, chunks_done = %s, "
        "worker = NULL, lease_until = NULL, updated_at = now() WHERE id = %s",
        (chunks, chunks, version.id),
    )
    await conn.execute(
        "UPDATE kb_versions SET state = 'SUPERSEDED', updated_at = now() "
        "WHERE tenant = %s AND knowledge_base = %s AND document_id = %s AND version < %s "
        "AND state IN ('READY', 'PENDING')",
        (version.tenant, version.knowledge_base, version.document_id, version.version),
    )
    await conn.execute(
        "UPDATE kb_documents SET ready_version = %s, updated_at = now() WHERE tenant = %s "
        "AND knowledge_base = %s AND document_id = %s",
        (version.version, version.tenant, version.knowledge_base, version.document_id),
    )
    unused = await (
        await conn.execute(
            "SELECT DISTINCT object_key FROM kb_versions WHERE tenant = %s AND knowledge_base = %s "
            "AND document_id = %s AND state IN ('SUPERSEDED', 'FAILED') AND object_key NOT IN ("
            "SELECT object_key FROM kb_versions WHERE tenant = %s AND knowledge_base = %s "
            "AND document_id = %s AND state IN ('PENDING', 'INDEXING', 'READY'))",
            (version.tenant, version.knowledge_base, version.document_id) * 2,
        )
    ).fetchall()
    return [str(r["object_key"]) for r in unused]


async def supersede(conn: Conn, version_id: int) -> None:
    """Within the caller's transaction: a version that lost to a newer READY one."""
    await _set(conn, version_id, SUPERSEDED, "")


async def delete(pool: db.Pool, tenant: str, knowledge_base: str, document_id: str) -> bool:
    """Remove the document and its versions; False when there was none."""
    with db.reachable():
        async with pool.connection() as conn, conn.transaction():
            cur = await conn.execute(
                "DELETE FROM kb_documents WHERE tenant = %s AND knowledge_base = %s "
                "AND document_id = %s",
                (tenant, knowledge_base, document_id),
            )
            return cur.rowcount == 1


@dataclasses.dataclass(frozen=True)
class Due:
    """A version to queue again."""

    id: int
    key: str


async def due(
    pool: db.Pool, *, requeue_after_s: float, lease_s: float, limit: int = 100
) -> list[Due]:
    """Versions to queue again, marked as queued now: PENDING ones queued longer than
    ``requeue_after_s`` ago (their event was lost or is stuck), and INDEXING ones whose
    lease lapsed (their worker was lost), at most once per lease."""
    with db.reachable():
        async with pool.connection() as conn, conn.transaction():
            found = await (
                await conn.execute(
                    "UPDATE kb_versions SET queued_at = now() WHERE id IN ("
                    " SELECT id FROM kb_versions WHERE"
                    " (state = 'PENDING' AND queued_at < now() - make_interval(secs => %s))"
                    " OR (state = 'INDEXING' AND lease_until < now()"
                    "     AND queued_at < now() - make_interval(secs => %s))"
                    " ORDER BY queued_at LIMIT %s FOR UPDATE SKIP LOCKED)"
                    " RETURNING id, tenant, knowledge_base, document_id",
                    (requeue_after_s, lease_s, limit),
                )
            ).fetchall()
    return [
        Due(int(r["id"]), event_key(r["tenant"], r["knowledge_base"], r["document_id"]))
        for r in found
    ]


def event_key(tenant: str, knowledge_base: str, document_id: str) -> str:
    """The Kafka key of a document's events: one document's versions share a partition."""
    return json.dumps([tenant, knowledge_base, document_id])


async def details(
    pool: db.Pool, tenant: str, cited: Sequence[tuple[str, str, int]]
) -> dict[tuple[str, str, int], tuple[str, dict[str, str]]]:
    """Title and metadata of each (knowledge base, document, version) of the tenant."""
    if not cited:
        return {}
    kbs, docs, versions = (list(x) for x in zip(*cited, strict=True))
    with db.reachable():
        async with pool.connection() as conn:
            found = await (
                await conn.execute(
                    "SELECT knowledge_base, document_id, version, title, metadata FROM kb_versions "
                    "WHERE tenant = %s AND (knowledge_base, document_id, version) IN ("
                    "SELECT * FROM unnest(%s::text[], %s::text[], %s::int[]))",
                    (tenant, kbs, docs, versions),
                )
            ).fetchall()
    return {
        (r["knowledge_base"], r["document_id"], r["version"]): (
            r["title"],
            {str(k): str(v) for k, v in r["metadata"].items()},
        )
        for r in found
    }
