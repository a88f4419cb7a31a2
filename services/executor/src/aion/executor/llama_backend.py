"""The llama.cpp backend: one GGUF model, one context, generation in a worker thread.

The same code runs on a GPU when the llama-cpp-python wheel was built with
CUDA (every layer is offloaded) and on the CPU otherwise. Prompts are
rendered with the chat template stored in the model file, the same template
``Llama.create_chat_completion`` uses; generation drives ``Llama.generate``
token by token, so that usage is exact, a cancelled stream stops at the next
token, and the tokens counted against the context are the tokens evaluated.

The worker thread hands chunks to the event loop with
``loop.call_soon_threadsafe``. A single-thread executor serializes every use
of the context, so a cancelled generation finishing its last token can never
overlap the next one.
"""

from __future__ import annotations

import asyncio
import codecs
import concurrent.futures
import random
import threading
import types
from collections.abc import AsyncGenerator, Callable, Sequence
from pathlib import Path
from typing import Any, Self

import llama_cpp
from llama_cpp import llama_chat_format, llama_types

from aion.core import errors
from aion.executor import backend, stop_sequences

_Emit = Callable[[backend.Chunk | Exception], None]


class LlamaBackend:
    """A ``backend.GenerationBackend`` over ``llama_cpp.Llama``; a context manager."""

    def __init__(self, path: Path, *, n_ctx: int, n_threads: int) -> None:
        self._path = path
        self._n_ctx = n_ctx
        self._n_threads = n_threads
        self._gpu = bool(llama_cpp.llama_supports_gpu_offload())
        self._llm: llama_cpp.Llama | None = None
        self._formatter: llama_chat_format.Jinja2ChatFormatter | None = None
        self._vocab: Any = None
        self._worker = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="llama")
        self._closed = False

    @property
    def device(self) -> str:
        """``"cuda"`` when the wheel offloads to a GPU, else ``"cpu"``."""
        return "cuda" if self._gpu else "cpu"

    @property
    def ready(self) -> bool:
        """Whether the model is loaded."""
        return self._llm is not None

    @property
    def context_size(self) -> int:
        """The context window in tokens."""
        return self._llm.n_ctx() if self._llm is not None else self._n_ctx

    @property
    def path(self) -> Path:
        """The GGUF file served."""
        return self._path

    def load(self) -> None:
        """Load the model file (blocking); raise ``backend.ModelLoadError`` saying why not."""
        if self._llm is not None:
            return
        # llama.cpp only says "failed to load" (its own log is off); say what is wrong first.
        try:
            with self._path.open("rb") as file:
                magic = file.read(4)
        except OSError as exc:
            raise backend.ModelLoadError(f"cannot read model {self._path}: {exc}") from exc
        if magic != b"GGUF":
            raise backend.ModelLoadError(
                f"cannot load model {self._path}: not a GGUF file (it starts with {magic!r}); "
                "llama.cpp loads .gguf models")
        try:
            llm = llama_cpp.Llama(
                model_path=str(self._path), n_ctx=self._n_ctx, n_threads=self._n_threads,
                n_threads_batch=self._n_threads, n_gpu_layers=-1 if self._gpu else 0,
                verbose=False)
        except (ValueError, OSError, RuntimeError) as exc:
            raise backend.ModelLoadError(f"cannot load model {self._path}: {exc}") from exc
        template = llm.metadata.get("tokenizer.chat_template")
        if not template:
            llm.close()
            raise backend.ModelLoadError(
                f"model {self._path} has no chat template (tokenizer.chat_template); "
                "the executor serves instruction-tuned chat models")
        self._formatter = llama_chat_format.Jinja2ChatFormatter(
            template=template, eos_token=_token_text(llm, llm.token_eos()),
            bos_token=_token_text(llm, llm.token_bos()))
        self._vocab = llama_cpp.llama_model_get_vocab(llm.model)
        self._llm = llm

    def encode_chat(self, messages: Sequence[backend.ChatMessage]) -> backend.Prompt:
        """Render ``messages`` with the model's chat template and tokenize the result."""
        llm, formatter = self._loaded()
        try:
            rendered = formatter(messages=[_template_message(m) for m in messages])
        except Exception as exc:
            # Templates may refuse conversations (roles out of order, for one).
            raise errors.InvalidArgument(
                f"the model's chat template rejects these messages: {exc}",
                field="messages") from exc
        tokens = llm.tokenize(rendered.prompt.encode("utf-8"),
                              add_bos=not rendered.added_special, special=True)
        return backend.Prompt(tuple(tokens))

    async def stream(self, prompt: backend.Prompt,
                     params: backend.SamplingParams) -> AsyncGenerator[backend.Chunk, None]:
        """Generate in the worker thread, yielding its chunks; closing stops it."""
        self._loaded()
        loop = asyncio.get_running_loop()
        chunks: asyncio.Queue[backend.Chunk | Exception] = asyncio.Queue()
        cancel = threading.Event()

        def emit(item: backend.Chunk | Exception) -> None:
            try:
                loop.call_soon_threadsafe(chunks.put_nowait, item)
            except RuntimeError:
                cancel.set()  # the loop is closed: nobody is listening any more

        try:
            job = loop.run_in_executor(self._worker, self._generate, prompt, params, cancel, emit)
        except RuntimeError as exc:
            raise errors.Unavailable("the executor is shutting down", retry_after_s=1) from exc
        try:
            while True:
                item = await chunks.get()
                if isinstance(item, Exception):
                    raise item
                yield item
                if item.finish is not None:
                    return
        finally:
            cancel.set()
            # The worker notices at its next token; wait so the context is free on return.
            await asyncio.shield(job)

    def close(self) -> None:
        """Stop the worker and free the model; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        self._worker.shutdown(wait=True, cancel_futures=True)
        if self._llm is not None:
            self._llm.close()
            self._llm = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: types.TracebackType | None) -> None:
        self.close()

    def _loaded(self) -> tuple[llama_cpp.Llama, llama_chat_format.Jinja2ChatFormatter]:
        if self._llm is None or self._formatter is None:
            raise errors.Unavailable("model is loading", retry_after_s=1)
        return self._llm, self._formatter

    def _generate(self, prompt: backend.Prompt, params: backend.SamplingParams,
                  cancel: threading.Event, emit: _Emit) -> None:
        try:
            self._decode(prompt, params, cancel, emit)
        except Exception as exc:
            emit(exc)

    def _decode(self, prompt: backend.Prompt, params: backend.SamplingParams,
                cancel: threading.Event, emit: _Emit) -> None:
        """The generation loop, in the worker thread; checks ``cancel`` at every token."""
        if cancel.is_set():
            return
        llm, _ = self._loaded()
        budget = min(params.max_tokens, self.context_size - prompt.n_tokens)
        seed = params.seed if params.seed is not None else random.randint(0, backend.MAX_SEED)
        llm.set_seed(seed)
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        scanner = stop_sequences.StopScanner(params.stop)
        finish = backend.FinishReason.LENGTH
        produced = pending = 0
        tail = ""
        tokens = llm.generate(list(prompt.tokens), temp=params.temperature, top_p=params.top_p)
        try:
            for token in tokens:
                if cancel.is_set():
                    return
                if llama_cpp.llama_vocab_is_eog(self._vocab, token):
                    finish = backend.FinishReason.STOP
                    break
                produced += 1
                pending += 1
                text = scanner.feed(decoder.decode(llm.detokenize([token])))
                if scanner.stopped or produced >= budget:
                    tail = text
                    break
                if text:
                    emit(backend.Chunk(text, pending))
                    pending = 0
        finally:
            tokens.close()
        if not scanner.stopped:
            tail += scanner.feed(decoder.decode(b"", final=True)) + scanner.flush()
        if scanner.stopped:
            finish = backend.FinishReason.STOP
        emit(backend.Chunk(tail, pending, finish=finish,
                           usage=backend.Usage(prompt.n_tokens, produced)))


def _token_text(llm: llama_cpp.Llama, token: int) -> str:
    if token < 0:
        return ""
    return llm.detokenize([token], special=True).decode("utf-8", errors="replace")


def _template_message(m: backend.ChatMessage) -> llama_types.ChatCompletionRequestMessage:
    if m.role == "system":
        return llama_types.ChatCompletionRequestSystemMessage(role="system", content=m.content)
    if m.role == "assistant":
        return llama_types.ChatCompletionRequestAssistantMessage(
            role="assistant", content=m.content)
    return llama_types.ChatCompletionRequestUserMessage(role="user", content=m.content)
