"""Executor settings from the environment."""

from __future__ import annotations

from pathlib import Path

import pytest

from aion.core import settings
from aion.executor import settings as executor_settings


def test_defaults_serve_the_bundled_model(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("PORT", "MODEL_PATH", "MODEL_NAME", "N_CTX", "N_THREADS", "MAX_QUEUE"):
        monkeypatch.delenv(f"AION_EXECUTOR_{name}", raising=False)
    cfg = settings.load(executor_settings.ExecutorSettings)
    assert cfg.port == 50055
    assert cfg.model_name == "smollm2-135m-instruct"
    assert (cfg.n_ctx, cfg.max_queue, cfg.default_max_tokens, cfg.max_tokens_limit) == (
        2048, 16, 256, 2048)
    assert cfg.n_threads >= 1
    assert cfg.model_file().name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert cfg.model_file().is_file()


def test_environment_overrides(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF")
    monkeypatch.setenv("AION_EXECUTOR_MODEL_PATH", str(model))
    monkeypatch.setenv("AION_EXECUTOR_N_THREADS", "1")
    monkeypatch.setenv("AION_EXECUTOR_MAX_QUEUE", "3")
    cfg = settings.load(executor_settings.ExecutorSettings)
    assert cfg.model_file() == model
    assert (cfg.n_threads, cfg.max_queue) == (1, 3)


def test_a_missing_model_file_names_the_variable(monkeypatch: pytest.MonkeyPatch,
                                                 tmp_path: Path) -> None:
    monkeypatch.setenv("AION_EXECUTOR_MODEL_PATH", str(tmp_path / "absent.gguf"))
    with pytest.raises(settings.SettingsError, match="AION_EXECUTOR_MODEL_PATH"):
        settings.load(executor_settings.ExecutorSettings)


def test_the_default_max_tokens_must_fit_the_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AION_EXECUTOR_DEFAULT_MAX_TOKENS", "512")
    monkeypatch.setenv("AION_EXECUTOR_MAX_TOKENS_LIMIT", "128")
    with pytest.raises(settings.SettingsError, match="max_tokens_limit"):
        settings.load(executor_settings.ExecutorSettings)
