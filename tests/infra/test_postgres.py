"""The local Postgres: transactions commit and roll back, a pool serves concurrently."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql
from psycopg_pool import AsyncConnectionPool

from aion.infra.podnet import HOST_IP
from aion.infra.postgres import Postgres

pytestmark = pytest.mark.postgres


@pytest.fixture
def table(postgres: Postgres) -> Iterator[sql.Identifier]:
    """A fresh table (id int primary key, note text), dropped afterwards."""
    name = sql.Identifier(f"smoke_{uuid.uuid4().hex[:12]}")
    with psycopg.connect(postgres.dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, note text NOT NULL)").format(name)
        )
    yield name
    with psycopg.connect(postgres.dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP TABLE {}").format(name))


Row = tuple[object, ...]


def _notes(conn: psycopg.Connection[Row], table: sql.Identifier) -> list[Row]:
    return conn.execute(sql.SQL("SELECT id, note FROM {} ORDER BY id").format(table)).fetchall()


@pytest.mark.parametrize("endpoint", ["AION_POSTGRES_DSN", "AION_POSTGRES_POD_DSN"])
def test_serves_the_aion_database(postgres: Postgres, endpoint: str) -> None:
    dsn = postgres.endpoints()[endpoint]  # the pods' address too (HOST_IP, a password login)
    assert dsn == postgres.dsn.replace("127.0.0.1", HOST_IP if "POD" in endpoint else "127.0.0.1")
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT current_database(), current_user, "
            "current_setting('server_encoding'), current_setting('fsync')"
        ).fetchone()
    assert row == ("aion", "aion", "UTF8", "on")


def test_committed_rows_are_seen_by_another_connection(
    postgres: Postgres, table: sql.Identifier
) -> None:
    insert = sql.SQL("INSERT INTO {} (id, note) VALUES (%s, %s)").format(table)
    with (
        psycopg.connect(postgres.dsn) as writer,
        psycopg.connect(postgres.dsn, autocommit=True) as reader,
    ):
        with writer.transaction():
            writer.execute(insert, (1, "first"))
            writer.execute(insert, (2, "second"))
            # Not committed yet: the other connection must not see it.
            assert _notes(reader, table) == []
        assert _notes(reader, table) == [(1, "first"), (2, "second")]


def test_a_failing_transaction_rolls_back(postgres: Postgres, table: sql.Identifier) -> None:
    insert = sql.SQL("INSERT INTO {} (id, note) VALUES (%s, %s)").format(table)
    with (
        psycopg.connect(postgres.dsn) as writer,
        psycopg.connect(postgres.dsn, autocommit=True) as reader,
    ):
        with writer.transaction():
            writer.execute(insert, (1, "kept"))

        def insert_then_fail() -> None:
            with writer.transaction():
                writer.execute(insert, (2, "dropped"))
                # Inside the transaction the row is there.
                assert _notes(writer, table) == [(1, "kept"), (2, "dropped")]
                raise RuntimeError("abort")

        with pytest.raises(RuntimeError, match="abort"):
            insert_then_fail()
        assert _notes(reader, table) == [(1, "kept")]

        def insert_then_violate() -> None:
            with writer.transaction():
                writer.execute(insert, (3, "dropped too"))
                writer.execute(insert, (1, "duplicate"))

        # A constraint violation rolls back the rows before it as well.
        with pytest.raises(psycopg.errors.UniqueViolation):
            insert_then_violate()
        assert _notes(reader, table) == [(1, "kept")]
        assert _notes(writer, table) == [(1, "kept")]


async def test_async_pool_runs_queries_concurrently(
    postgres: Postgres, table: sql.Identifier
) -> None:
    insert = sql.SQL(
        "INSERT INTO {} (id, note) SELECT %s, pg_backend_pid()::text FROM pg_sleep(0.3) "
        "RETURNING note"
    ).format(table)

    async with AsyncConnectionPool(postgres.dsn, min_size=4, max_size=4, open=False) as pool:
        await pool.wait(timeout=30)

        async def one(i: int) -> str:
            async with pool.connection() as conn:
                cur = await conn.execute(insert, (i,))
                row = await cur.fetchone()
            assert row is not None
            return str(row[0])

        pids = await asyncio.gather(*(one(i) for i in range(8)))

        async with pool.connection() as conn:
            cur = await conn.execute(
                sql.SQL("SELECT count(*), sum(id), count(DISTINCT note) FROM {}").format(table)
            )
            summary = await cur.fetchone()

    # Eight rows from four connections at once: every connection of the pool took part.
    assert summary == (8, sum(range(8)), 4)
    assert len(set(pids)) == 4
