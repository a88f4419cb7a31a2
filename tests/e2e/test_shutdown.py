"""SIGTERM drains: health flips, an in-flight stream finishes, every process exits quickly."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from aion.api.v1 import common_pb2
from aion.infra import devstack
from aion.sdk import Client

pytestmark = pytest.mark.e2e


def test_sigterm_lets_the_in_flight_stream_finish_and_exits_cleanly(
    tmp_path: Path, fresh_suite: Callable[[Path], devstack.LocalSuite]
) -> None:
    suite = fresh_suite(tmp_path)
    try:
        gateway = suite.services["gateway"]
        assert gateway.process is not None
        with Client(suite.gateway) as client:
            events = client.stream("demo", "Explain GPUs in a few sentences.", max_tokens=48)
            first = next(events)
            assert first.WhichOneof("event") == "started"
            gateway.process.send_signal(signal.SIGTERM)
            rest = list(events)
        assert rest[-1].WhichOneof("event") == "done"
        assert rest[-1].done.result.status == common_pb2.TASK_STATUS_OK
        assert gateway.process.wait(timeout=10) == 0
    finally:
        started = time.monotonic()
        codes = suite.stop(grace=9)
        elapsed = time.monotonic() - started
    assert codes == {name: 0 for name in codes}, codes
    assert elapsed < 10
