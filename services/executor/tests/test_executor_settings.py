"""Executor settings from the environment."""

from __future__ import annotations

from pathlib import Path

import pytest

from aion.core import settings
from aion.executor import settings as executor_settings


def test_defaults_serve_the_bundled_model(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "PORT",
        "MODEL_PATH",
        "MODEL_SOURCE",
        "MODEL_NAME",
        "MODEL_TASK",
        "N_CTX",
        "N_THREADS",
        "MAX_QUEUE",
        "MAX_STREAMS",
        "HTTP_PORT",
        "KAFKA_BOOTSTRAP",
    ):
        monkeypatch.delenv(f"AION_EXECUTOR_{name}", raising=False)
    cfg = settings.load(executor_settings.ExecutorSettings)
    assert (cfg.port, cfg.http_port, cfg.model_task) == (50055, 0, "generate")
    assert cfg.served_name() == "smollm2-135m-instruct"
    assert (
        cfg.n_ctx,
        cfg.max_queue,
        cfg.max_streams,
        cfg.default_max_tokens,
        cfg.max_tokens_limit,
    ) == (2048, 64, 8, 256, 2048)
    assert cfg.kafka_bootstrap is None
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


def test_a_missing_model_file_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("AION_EXECUTOR_MODEL_PATH", str(tmp_path / "absent.gguf"))
    with pytest.raises(settings.SettingsError, match="AION_EXECUTOR_MODEL_PATH"):
        settings.load(executor_settings.ExecutorSettings)


def test_the_default_max_tokens_must_fit_the_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AION_EXECUTOR_DEFAULT_MAX_TOKENS", "512")
    monkeypatch.setenv("AION_EXECUTOR_MAX_TOKENS_LIMIT", "128")
    with pytest.raises(settings.SettingsError, match="max_tokens_limit"):
        settings.load(executor_settings.ExecutorSettings)


def test_the_embed_task_serves_the_bundled_minilm(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("MODEL_PATH", "MODEL_SOURCE", "MODEL_NAME"):
        monkeypatch.delenv(f"AION_EXECUTOR_{name}", raising=False)
    monkeypatch.setenv("AION_EXECUTOR_MODEL_TASK", "embed")
    cfg = settings.load(executor_settings.ExecutorSettings)
    assert cfg.served_name() == "all-minilm-l6-v2"
    assert (cfg.model_file() / "modules.json").is_file()


def test_the_operator_model_source_is_a_local_path(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("AION_EXECUTOR_MODEL_PATH", raising=False)
    monkeypatch.setenv("AION_EXECUTOR_MODEL_TASK", "embed")
    monkeypatch.setenv("AION_EXECUTOR_MODEL_SOURCE", str(tmp_path))
    assert settings.load(executor_settings.ExecutorSettings).model_file() == tmp_path
    monkeypatch.setenv("AION_EXECUTOR_MODEL_SOURCE", str(tmp_path / "absent"))
    with pytest.raises(settings.SettingsError, match="does not exist"):
        settings.load(executor_settings.ExecutorSettings)


@pytest.mark.parametrize(
    ("task", "kind", "message"),
    [
        ("generate", "folder", "GGUF"),
        ("embed", "file", "sentence-transformers folder"),
    ],
)
def test_the_model_path_must_suit_the_task(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, task: str, kind: str, message: str
) -> None:
    path = tmp_path
    if kind == "file":
        path = tmp_path / "m.gguf"
        path.write_bytes(b"GGUF")
    monkeypatch.setenv("AION_EXECUTOR_MODEL_TASK", task)
    monkeypatch.setenv("AION_EXECUTOR_MODEL_PATH", str(path))
    with pytest.raises(settings.SettingsError, match=message):
        settings.load(executor_settings.ExecutorSettings)
