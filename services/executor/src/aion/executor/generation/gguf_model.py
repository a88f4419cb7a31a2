"""A GGUF model and one llama.cpp context for many sequences, over llama.cpp's C API.

``GgufModel.load`` reads the file with every layer offloaded when the wheel
was built with CUDA (the CPU otherwise: the same code), and creates a context
with ``n_seq`` sequences of ``n_ctx`` tokens each, so that the decode loop can
decode several streams in one ``llama_decode``. It also tokenizes, renders
the chat template stored in the file, and turns tokens back into bytes.

Only the decode loop's thread touches the context; tokenizing and rendering read
the model alone and may run in any thread.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import threading
import types
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Self

import llama_cpp
from llama_cpp import llama_chat_format, llama_types

from aion.core import errors
from aion.executor import backend

log = logging.getLogger(__name__)

_init_lock = threading.Lock()
_initialized = False
# llama-cpp-python routes llama.cpp's own log through this logger; at its
# default level every line of the model load reaches stderr unstructured.
logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)


def _holding_the_gil(name: str, argtypes: list[Any], restype: Any) -> Any:
    """A llama.cpp function called without releasing the GIL.

    ctypes releases the GIL around every call into a CDLL and must win it back
    afterwards; while the event loop's thread is busy that takes up to the
    interpreter's switch interval (5 ms). The decoding loop makes a few short
    calls per stream per step, so it calls those through a PyDLL view of the
    same library, which keeps the GIL (llama_decode still releases it).
    """
    lib = llama_cpp.llama_cpp._lib
    function = ctypes.PyDLL(lib._name, handle=lib._handle)[name]
    function.argtypes = argtypes
    function.restype = restype
    return function


_sampler_sample = _holding_the_gil(
    "llama_sampler_sample", [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int32], ctypes.c_int32
)
_vocab_is_eog = _holding_the_gil(
    "llama_vocab_is_eog", [ctypes.c_void_p, ctypes.c_int32], ctypes.c_bool
)


def _init_backend() -> None:
    global _initialized
    with _init_lock:
        if not _initialized:
            llama_cpp.llama_backend_init()
            _initialized = True


def gpu_offload_supported() -> bool:
    """Whether this llama.cpp build can offload layers to a GPU."""
    return bool(llama_cpp.llama_supports_gpu_offload())


class GgufModel:
    """A loaded GGUF model with a multi-sequence context; a context manager."""

    def __init__(
        self,
        path: Path,
        *,
        n_ctx: int,
        n_seq: int,
        n_batch: int,
        n_threads: int,
        gpu: bool,
        progress: Callable[[float], None] | None = None,
    ) -> None:
        self.path = path
        self.n_ctx = n_ctx
        self.n_seq = n_seq
        self.n_batch = n_batch
        self.n_threads = n_threads
        self.gpu = gpu
        self._progress = progress
        self.model: Any = None
        self.ctx: Any = None
        self.vocab: Any = None
        self.memory: Any = None
        self._formatter: llama_chat_format.Jinja2ChatFormatter | None = None

    @property
    def loaded(self) -> bool:
        """Whether ``load`` has finished."""
        return self.ctx is not None

    def load(self) -> None:
        """Read the file and create the context (blocking); raise ``ModelLoadError`` saying why."""
        if self.ctx is not None:
            return
        self._check_file()
        _init_backend()
        mparams = llama_cpp.llama_model_default_params()
        mparams.n_gpu_layers = -1 if self.gpu else 0
        callback = self._progress_callback()
        if callback is not None:
            mparams.progress_callback = callback
        model = llama_cpp.llama_model_load_from_file(str(self.path).encode(), mparams)
        if not model:
            raise backend.ModelLoadError(f"cannot load model {self.path}: llama.cpp refused it")
        try:
            self._formatter = self._chat_formatter(model)
            ctx = llama_cpp.llama_init_from_model(model, self._context_params())
            if not ctx:
                raise backend.ModelLoadError(
                    f"cannot create a context of {self.n_seq} x {self.n_ctx} tokens for "
                    f"{self.path}; lower AION_EXECUTOR_MAX_STREAMS or AION_EXECUTOR_N_CTX"
                )
        except BaseException:
            llama_cpp.llama_model_free(model)
            raise
        self.model = model
        self.vocab = llama_cpp.llama_model_get_vocab(model)
        self.memory = llama_cpp.llama_get_memory(ctx)
        self.ctx = ctx

    def _check_file(self) -> None:
        # llama.cpp only says "failed to load" (its own log is off); say what is wrong first.
        try:
            with self.path.open("rb") as file:
                magic = file.read(4)
        except OSError as exc:
            raise backend.ModelLoadError(f"cannot read model {self.path}: {exc}") from exc
        if magic != b"GGUF":
            raise backend.ModelLoadError(
                f"cannot load model {self.path}: not a GGUF file (it starts with {magic!r}); "
                "llama.cpp loads .gguf models"
            )

    def _progress_callback(self) -> Any:
        report = self._progress
        if report is None:
            return None

        def on_progress(fraction: float, _: Any) -> bool:
            report(fraction)
            return True

        # Kept on self: llama.cpp calls it while loading and ctypes must not free it.
        self._callback = llama_cpp.llama_progress_callback(on_progress)
        return self._callback

    def _context_params(self) -> Any:
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = self.n_ctx * self.n_seq
        params.n_batch = self.n_batch
        params.n_ubatch = min(self.n_batch, 512)
        params.n_seq_max = self.n_seq
        params.n_threads = self.n_threads
        params.n_threads_batch = self.n_threads
        # One KV buffer shared by the sequences: with a stream per sequence, llama.cpp
        # splits a step holding several sequences into equal-length sub-batches, and a
        # decoding step of 8 streams measured 2-3x slower on the CPU.
        params.kv_unified = True
        params.no_perf = True
        return params

    def _chat_formatter(self, model: Any) -> llama_chat_format.Jinja2ChatFormatter | None:
        template = llama_cpp.llama_model_chat_template(model, None)
        if not template:
            return None
        vocab = llama_cpp.llama_model_get_vocab(model)
        return llama_chat_format.Jinja2ChatFormatter(
            template=template.decode("utf-8"),
            eos_token=_special_text(vocab, llama_cpp.llama_vocab_eos(vocab)),
            bos_token=_special_text(vocab, llama_cpp.llama_vocab_bos(vocab)),
        )

    def tokenize(self, text: str, *, add_special: bool, parse_special: bool) -> list[int]:
        """The tokens of ``text``."""
        data = text.encode("utf-8")
        size = len(data) + 16
        buf = (llama_cpp.llama_token * size)()
        n = llama_cpp.llama_tokenize(
            self.vocab, data, len(data), buf, size, add_special, parse_special
        )
        if n < 0:
            size = -n
            buf = (llama_cpp.llama_token * size)()
            n = llama_cpp.llama_tokenize(
                self.vocab, data, len(data), buf, size, add_special, parse_special
            )
        return list(buf[:n])

    def encode_chat(self, messages: Sequence[backend.ChatMessage]) -> list[int]:
        """Render ``messages`` with the model's chat template and tokenize the result."""
        if self._formatter is None:
            raise errors.InvalidArgument(
                f"model {self.path.name} has no chat template; send a raw prompt instead",
                field="messages",
            )
        try:
            rendered = self._formatter(messages=[_template_message(m) for m in messages])
        except Exception as exc:
            # Templates may refuse conversations (roles out of order, for one).
            raise errors.InvalidArgument(
                f"the model's chat template rejects these messages: {exc}", field="messages"
            ) from exc
        return self.tokenize(
            rendered.prompt, add_special=not rendered.added_special, parse_special=True
        )

    @functools.lru_cache(maxsize=65536)  # noqa: B019 - one model per process, kept for life
    def piece(self, token: int) -> bytes:
        """The bytes a token stands for (control tokens stand for none)."""
        buf = ctypes.create_string_buffer(64)
        n = llama_cpp.llama_token_to_piece(self.vocab, token, buf, 64, 0, False)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = llama_cpp.llama_token_to_piece(self.vocab, token, buf, -n, 0, False)
        return buf.raw[:n]

    def is_end(self, token: int) -> bool:
        """Whether ``token`` ends a generation (end of sequence or of turn)."""
        return bool(_vocab_is_eog(self.vocab, token))

    def close(self) -> None:
        """Free the context and the model; safe to call twice."""
        if self.ctx is not None:
            llama_cpp.llama_free(self.ctx)
            self.ctx = None
        if self.model is not None:
            llama_cpp.llama_model_free(self.model)
            self.model = None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: types.TracebackType | None,
    ) -> None:
        self.close()


class Sampler:
    """One sequence's sampler chain: greedy at temperature 0, else temperature, top-p, seed."""

    def __init__(self, params: backend.SamplingParams, *, seed: int) -> None:
        chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
        if params.temperature <= 0:
            llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_greedy())
        else:
            llama_cpp.llama_sampler_chain_add(
                chain, llama_cpp.llama_sampler_init_temp(params.temperature)
            )
            if params.top_p < 1:
                llama_cpp.llama_sampler_chain_add(
                    chain, llama_cpp.llama_sampler_init_top_p(params.top_p, 1)
                )
            llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_dist(seed))
        self._chain: Any = chain

    def sample(self, ctx: Any, index: int) -> int:
        """Sample from the logits of batch row ``index`` (and accept the token)."""
        return int(_sampler_sample(self._chain, ctx, index))

    def free(self) -> None:
        """Free the chain; safe to call twice."""
        if self._chain is not None:
            llama_cpp.llama_sampler_free(self._chain)
            self._chain = None


class Batch:
    """A ``llama_batch`` of up to ``capacity`` tokens, each in one sequence."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._batch: Any = llama_cpp.llama_batch_init(capacity, 0, 1)
        self.n = 0

    def clear(self) -> None:
        """Empty the batch."""
        self.n = 0

    def add(self, token: int, pos: int, seq: int, *, logits: bool) -> int:
        """Append a token; return its row (the index its logits are read at)."""
        b, i = self._batch, self.n
        b.token[i] = token
        b.pos[i] = pos
        b.n_seq_id[i] = 1
        b.seq_id[i][0] = seq
        b.logits[i] = logits
        self.n = i + 1
        return i

    def decode(self, ctx: Any) -> int:
        """``llama_decode`` the batch; its return code (0 is success)."""
        self._batch.n_tokens = self.n
        return int(llama_cpp.llama_decode(ctx, self._batch))

    def free(self) -> None:
        """Free the batch; safe to call twice."""
        if self._batch is not None:
            llama_cpp.llama_batch_free(self._batch)
            self._batch = None


def _special_text(vocab: Any, token: int) -> str:
    if token < 0:
        return ""
    buf = ctypes.create_string_buffer(64)
    n = llama_cpp.llama_token_to_piece(vocab, token, buf, 64, 0, True)
    return buf.raw[: max(n, 0)].decode("utf-8", errors="replace")


def _template_message(m: backend.ChatMessage) -> llama_types.ChatCompletionRequestMessage:
    if m.role == "system":
        return llama_types.ChatCompletionRequestSystemMessage(role="system", content=m.content)
    if m.role == "assistant":
        return llama_types.ChatCompletionRequestAssistantMessage(
            role="assistant", content=m.content
        )
    return llama_types.ChatCompletionRequestUserMessage(role="user", content=m.content)
