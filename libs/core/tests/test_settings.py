"""Settings: a missing or bad value fails at start naming the variable."""

from __future__ import annotations

import pydantic
import pydantic_settings
import pytest

from aion.core import settings


class NeedsTarget(settings.ServiceSettings):
    model_config = pydantic_settings.SettingsConfigDict(env_prefix="AION_DEMO_", frozen=True)

    target: str
    secret: pydantic.SecretStr = pydantic.SecretStr("")


def test_missing_required_value_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AION_DEMO_TARGET", raising=False)
    with pytest.raises(settings.SettingsError, match="AION_DEMO_TARGET"):
        settings.load(NeedsTarget)


def test_malformed_value_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AION_DEMO_TARGET", "x")
    monkeypatch.setenv("AION_DEMO_PORT", "not-a-port")
    with pytest.raises(settings.SettingsError, match="AION_DEMO_PORT"):
        settings.load(NeedsTarget)


def test_values_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AION_DEMO_TARGET", "127.0.0.1:1")
    monkeypatch.setenv("AION_DEMO_SECRET", "hunter2")
    cfg = settings.load(NeedsTarget)
    assert cfg.target == "127.0.0.1:1"
    assert "hunter2" not in repr(cfg)
    assert cfg.secret.get_secret_value() == "hunter2"
