"""The llama.cpp generation backend: a GGUF model, continuous batching, asyncio streams.

The same code runs on a GPU when the llama-cpp-python wheel was built with
CUDA (every layer is offloaded) and on the CPU otherwise. Prompts are
rendered with the chat template stored in the model file. Streams are handed
to ``decode_loop.DecodeLoop``, whose thread decodes all of them together and
hands chunks back to the event loop with ``loop.call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import logging
import types
from collections.abc import AsyncGenerator, Sequence
from pathlib import Path
from typing import Self

from aion.core import errors
from aion.executor import backend
from aion.executor.generation import decode_loop, gguf_model

log = logging.getLogger(__name__)


class LlamaBackend:
    """A ``backend.GenerationBackend`` over llama.cpp; a context manager."""

    def __init__(
        self,
        path: Path,
        *,
        n_ctx: int,
        n_threads: int,
        max_streams: int = 1,
        n_batch: int = 512,
        device: str = "auto",
    ) -> None:
        gpu = gguf_model.gpu_offload_supported()
        if device == "cuda" and not gpu:
            log.warning(
                "device cuda was asked for, but this llama.cpp build has no GPU "
                "support; running on the CPU"
            )
        self._gpu = gpu and device != "cpu"
        self._model = gguf_model.GgufModel(
            path,
            n_ctx=n_ctx,
            n_seq=max_streams,
            n_batch=max(n_batch, 32),
            n_threads=n_threads,
            gpu=self._gpu,
            progress=self._log_progress,
        )
        self._loop = decode_loop.DecodeLoop(self._model)
        self._reported = -1
        self._closed = False

    @property
    def device(self) -> str:
        """``"cuda"`` when layers are offloaded to a GPU, else ``"cpu"``."""
        return "cuda" if self._gpu else "cpu"

    @property
    def ready(self) -> bool:
        """Whether the model is loaded."""
        return self._model.loaded

    @property
    def context_size(self) -> int:
        """The context window of one stream, in tokens."""
        return self._model.n_ctx

    @property
    def max_streams(self) -> int:
        """Streams decoded together at most."""
        return self._model.n_seq

    @property
    def path(self) -> Path:
        """The GGUF file served."""
        return self._model.path

    def load(self) -> None:
        """Load the model file and start the decoding loop (blocking)."""
        if self._model.loaded:
            return
        self._model.load()
        self._loop.start()

    def _log_progress(self, fraction: float) -> None:
        quarter = int(fraction * 4)
        if quarter > self._reported:
            self._reported = quarter
            log.info(
                "loading model: %d%%",
                quarter * 25,
                extra={"path": str(self._model.path), "progress": quarter * 25},
            )

    def encode_chat(self, messages: Sequence[backend.ChatMessage]) -> backend.Prompt:
        """Render ``messages`` with the model's chat template and tokenize the result."""
        self._loaded()
        return backend.Prompt(tuple(self._model.encode_chat(messages)))

    def encode_text(self, text: str) -> backend.Prompt:
        """Tokenize raw text (with the model's start token, if it uses one)."""
        self._loaded()
        return backend.Prompt(
            tuple(self._model.tokenize(text, add_special=True, parse_special=False))
        )

    async def stream(
        self, prompt: backend.Prompt, params: backend.SamplingParams
    ) -> AsyncGenerator[backend.Chunk, None]:
        """Join the running batch and yield this stream's chunks; closing leaves the batch."""
        self._loaded()
        loop = asyncio.get_running_loop()
        chunks: asyncio.Queue[backend.Chunk | Exception] = asyncio.Queue()

        def emit(item: backend.Chunk | Exception) -> None:
            try:
                loop.call_soon_threadsafe(chunks.put_nowait, item)
            except RuntimeError:
                job.cancelled = True  # the loop is closed: nobody is listening any more

        job = decode_loop.Job(prompt.tokens, params, emit)
        self._loop.submit(job)
        try:
            while True:
                item = await chunks.get()
                if isinstance(item, Exception):
                    raise item
                yield item
                if item.finish is not None:
                    return
        finally:
            self._loop.cancel(job)

    def close(self) -> None:
        """Stop the loop and free the model; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        self._loop.stop()
        self._model.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: types.TracebackType | None,
    ) -> None:
        self.close()

    def _loaded(self) -> None:
        if not self._model.loaded:
            raise errors.Unavailable("model is loading", retry_after_s=1)
