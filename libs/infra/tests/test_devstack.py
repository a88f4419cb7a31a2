"""``aion.infra.devstack``: where the local suite points its services (no process started)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from aion.infra import devstack
from aion.infra.paths import Layout
from aion.infra.prometheus import Prometheus

_INFRA_VARIABLES = (
    "AION_POSTGRES_DSN",
    "AION_KAFKA_BOOTSTRAP",
    "AION_MINIO_ENDPOINT",
    "AION_MINIO_ACCESS_KEY",
    "AION_MINIO_SECRET_KEY",
)


@pytest.fixture
def bare_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in _INFRA_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    for prefix in ("AION_AGENT_", "AION_KNOWLEDGE_"):
        for name in (
            "POSTGRES_DSN",
            "KAFKA_BOOTSTRAP",
            "TOPIC_PREFIX",
            "MINIO_ENDPOINT",
            "MINIO_ACCESS_KEY",
            "MINIO_SECRET_KEY",
        ):
            monkeypatch.delenv(prefix + name, raising=False)


def _env(local: devstack.LocalSuite) -> dict[str, str]:
    return local._env  # what start() hands every process


@pytest.mark.usefixtures("bare_env")
def test_by_default_the_services_use_make_infra_ups_servers(tmp_path: Path) -> None:
    env = _env(devstack.LocalSuite(log_dir=tmp_path))
    assert env["AION_AGENT_POSTGRES_DSN"] == "postgresql://aion:aion@127.0.0.1:55432/aion"
    assert env["AION_AGENT_KAFKA_BOOTSTRAP"] == "127.0.0.1:9092"
    assert env["AION_KNOWLEDGE_POSTGRES_DSN"] == env["AION_AGENT_POSTGRES_DSN"]
    assert env["AION_KNOWLEDGE_KAFKA_BOOTSTRAP"] == env["AION_AGENT_KAFKA_BOOTSTRAP"]
    assert env["AION_KNOWLEDGE_MINIO_ENDPOINT"] == "127.0.0.1:9000"
    assert env["AION_KNOWLEDGE_MINIO_ACCESS_KEY"] == "aion"
    assert env["AION_KNOWLEDGE_MINIO_SECRET_KEY"] == "aion-dev-secret"


@pytest.mark.usefixtures("bare_env")
def test_the_knowledge_service_follows_the_agent_services_overrides(tmp_path: Path) -> None:
    local = devstack.LocalSuite(
        log_dir=tmp_path,
        extra_env={
            "AION_AGENT_POSTGRES_DSN": "postgresql://u:p@db:5432/e2e_1",
            "AION_AGENT_KAFKA_BOOTSTRAP": "broker:9092",
            "AION_AGENT_TOPIC_PREFIX": "e2e_1.",
        },
    )
    env = _env(local)
    assert env["AION_KNOWLEDGE_POSTGRES_DSN"] == "postgresql://u:p@db:5432/e2e_1"
    assert env["AION_KNOWLEDGE_KAFKA_BOOTSTRAP"] == "broker:9092"
    assert env["AION_KNOWLEDGE_TOPIC_PREFIX"] == "e2e_1."
    assert env["AION_KNOWLEDGE_EXECUTOR_TARGET"] == local.services["embedder"].target
    assert env["AION_AGENT_EXECUTOR_TARGET"] == local.services["executor"].target


def test_free_port_never_hands_out_the_same_port_twice_while_it_may_be_in_use() -> None:
    # A suite asks for 17 ports at once and binds them later: each must be distinct,
    # and distinct from the ones the suites before it were given and may still hold.
    ports = [devstack.suite.free_port() for _ in range(2000)]
    assert len(set(ports)) == len(ports)


def test_a_suites_ports_are_all_distinct(tmp_path: Path) -> None:
    for _ in range(50):
        local = devstack.LocalSuite(log_dir=tmp_path)
        taken = [local.gateway_http_port]
        for svc in local.services.values():
            taken += [svc.port, svc.metrics_port]
            if svc.health_port is not None:
                taken.append(svc.health_port)
        assert len(set(taken)) == len(taken)


def test_otlp_endpoint_goes_to_every_service_and_is_absent_by_default(tmp_path: Path) -> None:
    prefixes = ("GATEWAY", "ROUTER", "AGENT", "KNOWLEDGE", "EXECUTOR")
    env = _env(devstack.LocalSuite(log_dir=tmp_path, otlp_endpoint="127.0.0.1:14317"))
    assert {p: env[f"AION_{p}_OTLP_ENDPOINT"] for p in prefixes} == dict.fromkeys(
        prefixes, "127.0.0.1:14317"
    )
    plain = _env(devstack.LocalSuite(log_dir=tmp_path))
    assert [p for p in prefixes if f"AION_{p}_OTLP_ENDPOINT" in plain] == [
        p for p in prefixes if f"AION_{p}_OTLP_ENDPOINT" in os.environ
    ]


def test_register_targets_writes_one_file_sd_group_per_service_and_stop_removes_them(
    tmp_path: Path,
) -> None:
    prometheus = Prometheus(Layout(home=tmp_path / "infra", cache=tmp_path / "cache"))
    local = devstack.LocalSuite(log_dir=tmp_path / "logs", scrape_tag="t1")
    local.register_targets(prometheus)
    assert prometheus.target_groups() == sorted(f"t1-{n}" for n in local.services)
    groups = json.loads((prometheus.targets_dir / "t1-gateway.json").read_text())
    assert groups == [
        {
            "targets": [f"127.0.0.1:{local.services['gateway'].metrics_port}"],
            "labels": {"job": "gateway", "service": "gateway", "suite": "t1"},
        }
    ]
    prometheus.add_targets("other", ["127.0.0.1:1"])
    local.stop()  # no process started: only the targets to remove
    assert prometheus.target_groups() == ["other"]
