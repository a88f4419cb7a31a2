"""The llama.cpp backend's edges that need no loaded model."""

from __future__ import annotations

from pathlib import Path

import pytest

from aion.core import errors
from aion.executor import backend
from aion.executor.generation import llama_backend


def test_a_file_that_is_not_gguf_is_refused_with_the_reason(tmp_path: Path) -> None:
    broken = tmp_path / "model.gguf"
    broken.write_bytes(b"<html>not found</html>")
    with llama_backend.LlamaBackend(broken, n_ctx=256, n_threads=1) as model:
        with pytest.raises(backend.ModelLoadError, match="not a GGUF file"):
            model.load()
        assert not model.ready


def test_a_missing_file_is_refused(tmp_path: Path) -> None:
    model = llama_backend.LlamaBackend(tmp_path / "absent.gguf", n_ctx=256, n_threads=1)
    with model, pytest.raises(backend.ModelLoadError, match="cannot read model"):
        model.load()


def test_an_unloaded_model_is_unavailable(tmp_path: Path) -> None:
    model = llama_backend.LlamaBackend(tmp_path / "m.gguf", n_ctx=256, n_threads=1)
    assert model.device in ("cpu", "cuda")
    assert model.context_size == 256
    with pytest.raises(errors.Unavailable, match="model is loading"):
        model.encode_chat([backend.ChatMessage("user", "hi")])
    model.close()
    model.close()
