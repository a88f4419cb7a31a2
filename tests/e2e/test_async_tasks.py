"""Asynchronous tasks and the agent registry through the gateway, with aionctl."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from aion.infra import devstack

pytestmark = pytest.mark.e2e
AIONCTL = str(Path(sys.executable).with_name("aionctl"))


def _aionctl(
    suite: devstack.LocalSuite, *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [AIONCTL, "--target", suite.gateway, *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        input=stdin,
    )


def test_submit_async_then_get_shows_the_stored_result(suite: devstack.LocalSuite) -> None:
    submitted = _aionctl(
        suite, "submit", "--async", "--agent", "demo", "--max-tokens", "8", "Name a planet."
    )
    assert submitted.returncode == 0, submitted.stderr
    task_id = submitted.stdout.strip()
    assert task_id
    deadline = time.monotonic() + 120
    while True:
        got = _aionctl(suite, "get", "--json", task_id)
        assert got.returncode == 0, got.stderr
        result = json.loads(got.stdout)
        if result["status"] not in ("QUEUED", "RUNNING") or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert result["status"] == "OK", result
    assert result["task_id"] == task_id
    assert result["output"].strip()
    assert result["usage"]["completion_tokens"] > 0


def test_apply_registers_an_agent_listed_through_the_gateway(suite: devstack.LocalSuite) -> None:
    manifest = (
        "apiVersion: aion.dev/v1alpha1\nkind: Agent\nmetadata: {name: applied}\n"
        "spec:\n  model: {name: smollm2-135m-instruct}\n  description: from a file\n"
    )
    applied = _aionctl(suite, "apply", "-f", "-", stdin=manifest)
    assert applied.returncode == 0, applied.stderr
    assert applied.stdout.strip() == "agent/applied applied"
    shown = _aionctl(suite, "agents", "applied", "--json")
    assert shown.returncode == 0, shown.stderr
    agent = json.loads(shown.stdout)
    assert agent["description"] == "from a file"
    assert agent["ready"] is True
    bad = _aionctl(suite, "apply", "-f", "-", stdin="kind: Pod\n")
    assert bad.returncode == 2
    assert "manifest" in bad.stderr
