"""The five services as processes with the real model, started once for the e2e tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from aion.sdk import testing

REPO = Path(__file__).resolve().parents[2]
DEMO_AGENT = REPO / "deploy" / "examples" / "demo-agent.yaml"


def start_suite(log_dir: Path) -> testing.LocalSuite:
    """Start the suite and wait for it; a service that does not come up fails with its log."""
    # One llama.cpp thread: on a shared two-core machine, two spinning threads
    # slow to a crawl whenever another process (here: the test itself) runs.
    suite = testing.LocalSuite(log_dir=log_dir, agents_file=DEMO_AGENT,
                               extra_env={"AION_EXECUTOR_N_THREADS": "1"})
    suite.start()
    try:
        suite.wait_ready(timeout=180)
    except testing.SuiteError as exc:
        suite.stop()
        pytest.fail(str(exc), pytrace=False)
    return suite


@pytest.fixture(scope="session")
def suite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[testing.LocalSuite]:
    """A running suite shared by the e2e tests."""
    running = start_suite(tmp_path_factory.mktemp("suite"))
    yield running
    running.stop()


@pytest.fixture
def fresh_suite() -> Callable[[Path], testing.LocalSuite]:
    """Start a suite of one's own (for tests that stop services)."""
    return start_suite
