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


class Aliased(settings.ServiceSettings):
    model_config = pydantic_settings.SettingsConfigDict(env_prefix="AION_DEMO_", frozen=True)

    target: str = ""
    dsn: str = pydantic.Field(
        default="", validation_alias=pydantic.AliasChoices("AION_DEMO_DSN", "AION_SHARED_DSN")
    )


def test_an_unknown_variable_with_the_prefix_stops_start_naming_it_and_the_close_ones(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AION_DEMO_TARGET", "127.0.0.1:1")
    monkeypatch.setenv("AION_DEMO_TRAGET", "127.0.0.1:2")
    with pytest.raises(settings.SettingsError) as info:
        settings.load(NeedsTarget)
    message = str(info.value)
    assert "AION_DEMO_TRAGET: no such setting; did you mean AION_DEMO_TARGET?" in message
    assert "AION_DEMO_TARGET:" not in message  # the known one is not refused


def test_an_unknown_variable_far_from_any_setting_lists_the_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AION_DEMO_ROUTER_ADDRESS_OF_THE_PEER", "x")
    with pytest.raises(settings.SettingsError) as info:
        settings.load(Aliased)
    message = str(info.value)
    assert "AION_DEMO_ROUTER_ADDRESS_OF_THE_PEER: no such setting" in message
    assert "AION_DEMO_GRACE_S" in message
    assert "AION_DEMO_DSN" in message


def test_aliases_and_shared_fields_are_known_and_other_prefixes_are_not_checked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert {
        "AION_DEMO_DSN",
        "AION_SHARED_DSN",
        "AION_DEMO_PORT",
        "AION_DEMO_OTLP_ENDPOINT",
    } <= settings.known_variables(Aliased)
    env = {
        "AION_SHARED_DSN": "postgresql://x",
        "AION_OTHER_FOO": "1",
        "aion_demo_port": "5",
        "AION_DEMOX": "1",
    }
    assert settings.unknown_variables(Aliased, env) == []
    assert settings.unknown_variables(Aliased, {"aion_demo_prot": "5"}) == [
        "  aion_demo_prot: no such setting; did you mean AION_DEMO_PORT?"
    ]
    monkeypatch.setenv("AION_SHARED_DSN", "postgresql://shared")
    assert settings.load(Aliased).dsn == "postgresql://shared"
