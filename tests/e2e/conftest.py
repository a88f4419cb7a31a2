"""The five services as processes with the real model, started once for the e2e tests."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from aion.infra.kafka import Kafka
from aion.infra.postgres import Postgres
from aion.sdk import testing

REPO = Path(__file__).resolve().parents[2]
DEMO_AGENT = REPO / "deploy" / "examples" / "demo-agent.yaml"


def backbone(postgres: Postgres, kafka: Kafka) -> dict[str, str]:
    """A database and a topic prefix of their own for one suite, on the real servers."""
    name = f"e2e_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(postgres.dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return {"AION_AGENT_POSTGRES_DSN": postgres.dsn.rsplit("/", 1)[0] + "/" + name,
            "AION_AGENT_KAFKA_BOOTSTRAP": kafka.bootstrap,
            "AION_AGENT_TOPIC_PREFIX": f"{name}."}


def start_suite(log_dir: Path, env: dict[str, str]) -> testing.LocalSuite:
    """Start the suite and wait for it; a service that does not come up fails with its log."""
    # One llama.cpp thread: on a shared two-core machine, two spinning threads
    # slow to a crawl whenever another process (here: the test itself) runs.
    suite = testing.LocalSuite(log_dir=log_dir, agents_file=DEMO_AGENT,
                               extra_env={"AION_EXECUTOR_N_THREADS": "1", **env})
    suite.start()
    try:
        suite.wait_ready(timeout=180)
    except testing.SuiteError as exc:
        suite.stop()
        pytest.fail(str(exc), pytrace=False)
    return suite


@pytest.fixture(scope="session")
def suite(tmp_path_factory: pytest.TempPathFactory, postgres: Postgres,
          kafka: Kafka) -> Iterator[testing.LocalSuite]:
    """A running suite shared by the e2e tests."""
    running = start_suite(tmp_path_factory.mktemp("suite"), backbone(postgres, kafka))
    yield running
    running.stop()


@pytest.fixture
def fresh_suite(postgres: Postgres, kafka: Kafka) -> Callable[[Path], testing.LocalSuite]:
    """Start a suite of one's own (for tests that stop services)."""
    return lambda log_dir: start_suite(log_dir, backbone(postgres, kafka))
