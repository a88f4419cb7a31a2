"""The operator's settings come from AION_OPERATOR_* and fail clearly when incomplete."""

from __future__ import annotations

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
