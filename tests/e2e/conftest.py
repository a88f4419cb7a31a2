"""The five services as processes with the real model, started once for the e2e tests."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from aion.gateway import keys
from aion.infra import devstack
from aion.infra.kafka import Kafka
from aion.infra.minio import MinIO
from aion.infra.postgres import Postgres

REPO = Path(__file__).resolve().parents[2]
DEMO_AGENT = REPO / "deploy" / "examples" / "demo-agent.yaml"
# Auth is on (no anonymous mode): the suites' gateways take this admin key of tenant
# "default", configured by its hash; clients and aionctl find it in AION_API_KEY.
ADMIN_KEY = keys.new_key()[0]
os.environ.setdefault("AION_API_KEY", ADMIN_KEY)
GATEWAY_AUTH = {
    "AION_GATEWAY_ALLOW_ANONYMOUS": "false",
    "AION_GATEWAY_API_KEYS": json.dumps(
        [
            {
                "hash": keys.hash_key(os.environ["AION_API_KEY"]),
                "tenant": "default",
                "roles": ["admin"],
                "name": "e2e-admin",
            }
        ]
    ),
}


class Backbone:
    """Databases and topic prefixes of their own for suites, on the real servers; each
    database is dropped by ``drop_all`` (the topics stay, under their unique prefix)."""

    def __init__(self, postgres: Postgres, kafka: Kafka, minio: MinIO) -> None:
        self._postgres = postgres
        self._kafka = kafka
        self._minio = minio
        self._names: list[str] = []

    def env(self) -> dict[str, str]:
        """A new database and topic prefix, as the agent service's settings (the knowledge
        service shares them), and where MinIO is."""
        name = f"e2e_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(self._postgres.dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        self._names.append(name)
        return {
            "AION_AGENT_POSTGRES_DSN": self._postgres.dsn.rsplit("/", 1)[0] + "/" + name,
            "AION_AGENT_KAFKA_BOOTSTRAP": self._kafka.bootstrap,
            "AION_AGENT_TOPIC_PREFIX": f"{name}.",
            **self._minio.endpoints(),
        }

    def drop_all(self) -> None:
        """Drop every database made here (FORCE: a killed service may hold connections)."""
        with psycopg.connect(self._postgres.dsn, autocommit=True) as conn:
            while self._names:
                conn.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                        sql.Identifier(self._names.pop())
                    )
                )


def start_suite(log_dir: Path, env: dict[str, str]) -> devstack.LocalSuite:
    """Start the suite and wait for it; a service that does not come up fails with its log."""
    # One llama.cpp thread: on a shared two-core machine, two spinning threads
    # slow to a crawl whenever another process (here: the test itself) runs.
    suite = devstack.LocalSuite(
        log_dir=log_dir,
        agents_file=DEMO_AGENT,
        allow_anonymous=False,
        extra_env={"AION_EXECUTOR_N_THREADS": "1", **GATEWAY_AUTH, **env},
    )
    suite.start()
    try:
        suite.wait_ready(timeout=180)
    except devstack.SuiteError as exc:
        suite.stop()
        pytest.fail(str(exc), pytrace=False)
    return suite


@pytest.fixture(scope="session")
def suite(
    tmp_path_factory: pytest.TempPathFactory, postgres: Postgres, kafka: Kafka, minio: MinIO
) -> Iterator[devstack.LocalSuite]:
    """A running suite shared by the e2e tests; its database is dropped at the end."""
    backbone = Backbone(postgres, kafka, minio)
    try:
        running = start_suite(tmp_path_factory.mktemp("suite"), backbone.env())
        try:
            yield running
        finally:
            running.stop()
    finally:
        backbone.drop_all()


@pytest.fixture
def fresh_suite(
    postgres: Postgres, kafka: Kafka, minio: MinIO
) -> Iterator[Callable[..., devstack.LocalSuite]]:
    """Start a suite of one's own (for tests that stop services, or that need settings of
    their own, given as ``env``); the test stops it, and its database is dropped after the
    test (stopping it first if the test did not)."""
    backbone = Backbone(postgres, kafka, minio)
    started: list[devstack.LocalSuite] = []

    def start(log_dir: Path, env: Mapping[str, str] | None = None) -> devstack.LocalSuite:
        started.append(start_suite(log_dir, {**backbone.env(), **(env or {})}))
        return started[-1]

    try:
        yield start
    finally:
        for running in started:
            running.stop()  # stopping a stopped suite is harmless
        backbone.drop_all()
