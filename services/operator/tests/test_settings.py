"""The operator's settings come from AION_OPERATOR_* and fail clearly when incomplete."""

from __future__ import annotations

import json
import pathlib

import pytest

from aion.core import settings as core_settings
from aion.operator import settings


def test_namespaces_are_comma_separated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AION_OPERATOR_EXECUTOR_IMAGE", "aion-executor:dev")
    monkeypatch.setenv("AION_OPERATOR_NAMESPACES", "team-a, team-b,")
    cfg = core_settings.load(settings.AionOperatorSettings)
    assert cfg.namespaces == ("team-a", "team-b")
    assert not cfg.clusterwide


def test_no_namespaces_means_clusterwide(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AION_OPERATOR_EXECUTOR_IMAGE", "aion-executor:dev")
    monkeypatch.setenv("AION_OPERATOR_NAMESPACES", "")  # as the chart sets it by default
    cfg = core_settings.load(settings.AionOperatorSettings)
    assert cfg.clusterwide
    assert cfg.unschedulable_after_s == 120.0
    assert cfg.leader_election


def test_missing_executor_image_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AION_OPERATOR_EXECUTOR_IMAGE", raising=False)
    with pytest.raises(core_settings.SettingsError, match="AION_OPERATOR_EXECUTOR_IMAGE"):
        core_settings.load(settings.AionOperatorSettings)


def test_tenants_come_from_a_json_map(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AION_OPERATOR_EXECUTOR_IMAGE", "aion-executor:dev")
    monkeypatch.setenv("AION_OPERATOR_TENANTS", '{"team-a": "acme", "team-b": "acme"}')
    cfg = core_settings.load(settings.AionOperatorSettings)
    assert cfg.tenants == {"team-a": "acme", "team-b": "acme"}
    monkeypatch.setenv("AION_OPERATOR_TENANTS", '{"team-a": " "}')
    with pytest.raises(core_settings.SettingsError, match="team-a"):
        core_settings.load(settings.AionOperatorSettings)


def test_the_lease_namespace_is_the_pods_own(
    monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path
) -> None:
    monkeypatch.setenv("AION_OPERATOR_EXECUTOR_IMAGE", "aion-executor:dev")
    monkeypatch.delenv("AION_OPERATOR_LEASE_NAMESPACE", raising=False)
    monkeypatch.setenv("POD_NAMESPACE", "aion-system")
    assert core_settings.load(settings.AionOperatorSettings).platform_namespace == "aion-system"
    monkeypatch.delenv("POD_NAMESPACE")
    cfg = core_settings.load(settings.AionOperatorSettings)
    assert cfg.platform_namespace == "default"
    account = tmp_path / "namespace"
    account.write_text("from-account\n")
    assert settings.with_pod_namespace(cfg, path=account).platform_namespace == "from-account"
    assert settings.with_pod_namespace(cfg, path=tmp_path / "absent") is cfg


def test_executor_kafka_comes_from_the_charts_values_as_json(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AION_OPERATOR_EXECUTOR_IMAGE", "aion-executor:dev")
    monkeypatch.setenv(
        "AION_OPERATOR_EXECUTOR_KAFKA",
        json.dumps(
            {
                "securityProtocol": "SASL_SSL",
                "sasl": {
                    "mechanism": "PLAIN",
                    "existingSecret": "kafka-user",
                    "usernameKey": "u",
                    "passwordKey": "p",
                },
                "tls": {
                    "existingSecret": "kafka-ca",
                    "caKey": "ca.crt",
                    "clientCertificate": False,
                    "certKey": "tls.crt",
                    "keyKey": "tls.key",
                },
            }
        ),
    )
    cfg = core_settings.load(settings.AionOperatorSettings)
    assert cfg.executor_kafka.sasl.existing_secret == "kafka-user"
    assert cfg.executor_kafka.tls.ca_key == "ca.crt"
    monkeypatch.setenv("AION_OPERATOR_EXECUTOR_KAFKA", '{"securityProtocol": "SASL_SSL"}')
    with pytest.raises(core_settings.SettingsError, match=r"sasl\.existingSecret"):
        core_settings.load(settings.AionOperatorSettings)
