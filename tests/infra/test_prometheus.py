"""The local Prometheus: a target written to its file_sd folder is scraped within
seconds (`up` 1, with the group's labels, and the target's own series), a target
nobody serves is `up` 0, and a removed group leaves the active targets; promtool runs."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from typing import Any

import prometheus_client
import pytest
import yaml

from aion.infra.component import poll
from aion.infra.devstack import free_port
from aion.infra.prometheus import RULES_DIR, Prometheus

pytestmark = pytest.mark.prometheus


@pytest.fixture
def exporter() -> Iterator[tuple[str, prometheus_client.Counter]]:
    """A live /metrics endpoint (host:port) with a counter of its own."""
    registry = prometheus_client.CollectorRegistry()
    counter = prometheus_client.Counter(
        "aion_probe_requests", "Requests the probe served.", ["code"], registry=registry
    )
    port = free_port()
    server, thread = prometheus_client.start_http_server(port, "127.0.0.1", registry=registry)
    try:
        yield f"127.0.0.1:{port}", counter
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def _values(prometheus: Prometheus, expr: str) -> list[tuple[dict[str, str], float]]:
    return [(r["metric"], float(r["value"][1])) for r in prometheus.query(expr)]


def _active(prometheus: Prometheus, job: str) -> list[dict[str, Any]]:
    targets: list[dict[str, Any]] = prometheus.api("targets", state="active")["activeTargets"]
    return [t for t in targets if t["labels"].get("job") == job]


def test_endpoints_and_promtool(prometheus: Prometheus) -> None:
    assert prometheus.endpoints() == {"AION_PROMETHEUS_URL": f"http://127.0.0.1:{prometheus.port}"}
    assert prometheus.status() == "ready"
    # promtool (built beside the server) accepts the configuration the component wrote.
    checked = subprocess.run(
        [str(prometheus.promtool), "check", "config", "--syntax-only", str(prometheus.config_file)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_a_file_sd_target_is_scraped_then_removed(
    prometheus: Prometheus, exporter: tuple[str, prometheus_client.Counter]
) -> None:
    target, counter = exporter
    counter.labels(code="OK").inc(3)
    job = f"probe-{uuid.uuid4().hex[:8]}"
    prometheus.add_targets(job, [target], {"service": "probe"})
    try:
        seen = poll(lambda: _values(prometheus, f'up{{job="{job}"}}'), lambda v: bool(v), 30)
        assert seen, f"{job} never scraped; targets: {_active(prometheus, job)}"
        labels, value = seen[0]
        assert value == 1.0, _active(prometheus, job)
        assert labels["service"] == "probe"
        assert labels["instance"] == target
        # The target's own series, with the group's labels.
        seen = poll(
            lambda: _values(prometheus, f'aion_probe_requests_total{{job="{job}"}}'),
            lambda v: bool(v) and v[0][1] == 3.0,
            30,
        )
        assert [(m["code"], m["service"], v) for m, v in seen] == [("OK", "probe", 3.0)]
    finally:
        prometheus.remove_targets(job)
    assert job not in prometheus.target_groups()
    gone = poll(lambda: _active(prometheus, job), lambda t: not t, 30)
    assert not gone, f"{job} still scraped after its file was removed"


def test_a_target_nobody_serves_is_down(prometheus: Prometheus) -> None:
    job = f"dead-{uuid.uuid4().hex[:8]}"
    prometheus.add_targets(job, [f"127.0.0.1:{free_port()}"])
    try:
        seen = poll(lambda: _values(prometheus, f'up{{job="{job}"}}'), lambda v: bool(v), 30)
        assert [v for _, v in seen] == [0.0], _active(prometheus, job)
    finally:
        prometheus.remove_targets(job)


def test_a_group_name_must_be_a_plain_file_name(prometheus: Prometheus) -> None:
    with pytest.raises(ValueError, match="plain file name"):
        prometheus.add_targets("../escape", ["127.0.0.1:1"])


def test_the_charts_rule_files_are_loaded_and_evaluated(prometheus: Prometheus) -> None:
    files = sorted(RULES_DIR.glob("*.yaml"))
    assert files, f"no rule files in {RULES_DIR}"
    wanted = {
        (group["name"], rule.get("record") or rule["alert"])
        for f in files
        for group in yaml.safe_load(f.read_text())["groups"]
        for rule in group["rules"]
    }

    def rules() -> dict[tuple[str, str], str]:
        groups = prometheus.api("rules")["groups"]
        return {(g["name"], r["name"]): r["health"] for g in groups for r in g["rules"]}

    # Every rule is loaded, and once evaluated (every 5 s) none has an error.
    seen = poll(rules, lambda r: set(r) >= wanted and "unknown" not in r.values(), 30)
    assert set(seen) >= wanted, sorted(wanted - set(seen))
    assert {k: h for k, h in seen.items() if h != "ok"} == {}, prometheus.api("rules")
