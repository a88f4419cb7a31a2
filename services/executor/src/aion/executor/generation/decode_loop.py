"""Continuous batching on llama.cpp: one thread decodes every open stream together.

Each step of the loop (in its own thread, the only one touching the context):

1. streams that were cancelled leave: their KV cache sequence is cleared and
   their sequence id is free again;
2. waiting streams join while sequence ids are free;
3. one ``llama_batch`` takes the next token of every decoding stream, then
   prompt tokens of joining streams (chunked prefill) up to ``n_batch``;
4. one ``llama_decode`` runs it; each stream whose logits came out samples
   its next token with its own sampler chain (temperature, top-p, seed), and
   streams that met an end token, a stop sequence or their token budget
   finish and leave.

So a new stream starts at the next step instead of waiting for the others
to end, and a finished one gives its place back at once.
"""

from __future__ import annotations

import codecs
import collections
import dataclasses
import logging
import random
import threading
from collections.abc import Callable
from typing import Any

import llama_cpp

from aion.core import errors
from aion.executor import backend, stats
from aion.executor.generation import gguf_model, stop_sequences

log = logging.getLogger(__name__)

Emit = Callable[[backend.Chunk | Exception], None]


@dataclasses.dataclass(eq=False)
class Job:
    """One stream: its prompt and sampling, where its output goes, and its decoding state."""

    prompt: tuple[int, ...]
    params: backend.SamplingParams
    emit: Emit
    cancelled: bool = False
    seq: int = -1
    fed: int = 0  # prompt tokens in the KV cache (or in the current batch)
    pos: int = 0  # the position of the next token fed
    last: int = -1  # the last sampled token, fed at the next step
    produced: int = 0
    pending: int = 0  # tokens sampled but not yet covered by an emitted chunk
    budget: int = 0
    sampler: gguf_model.Sampler | None = None
    decoder: Any = None
    scanner: stop_sequences.StopScanner | None = None

    @property
    def prefilling(self) -> bool:
        """Whether prompt tokens are still to be fed."""
        return self.fed < len(self.prompt)


class DecodeLoop:
    """The decoding loop over one ``GgufModel``; ``start`` runs it in a thread."""

    def __init__(self, model: gguf_model.GgufModel) -> None:
        self._model = model
        self._lock = threading.Condition()
        self._incoming: collections.deque[Job] = collections.deque()
        self._active: list[Job] = []
        self._free = list(range(model.n_seq - 1, -1, -1))
        self._batch: gguf_model.Batch | None = None
        self._thread: threading.Thread | None = None
        self._stopping = False

    def start(self) -> None:
        """Start the loop thread (the model must be loaded)."""
        if self._thread is not None:
            return
        self._batch = gguf_model.Batch(self._model.n_batch)
        self._thread = threading.Thread(target=self._run, name="llama-decode", daemon=True)
        self._thread.start()

    def submit(self, job: Job) -> None:
        """Queue a stream; it joins at the next step with a free sequence (any thread)."""
        with self._lock:
            if self._stopping:
                raise errors.Unavailable("the executor is shutting down", retry_after_s=1)
            self._incoming.append(job)
            self._lock.notify()

    def cancel(self, job: Job) -> None:
        """Have a stream leave at the next step (any thread)."""
        with self._lock:
            job.cancelled = True
            self._lock.notify()

    def stop(self) -> None:
        """End the loop; streams still open end with UNAVAILABLE. Safe to call twice."""
        with self._lock:
            self._stopping = True
            self._lock.notify()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._batch is not None:
            self._batch.free()
            self._batch = None

    def _run(self) -> None:
        try:
            while self._wait_for_work():
                self._step()
        except Exception:  # a bug in the loop: end every stream rather than hang them
            log.exception("the decoding loop failed")
            self._fail_all(errors.Internal("the decoding loop failed; see the executor log"))
        else:
            self._fail_all(errors.Unavailable("the executor is shutting down", retry_after_s=1))

    def _wait_for_work(self) -> bool:
        """Retire cancelled streams, admit waiting ones; False once stopping."""
        with self._lock:
            while True:
                if self._stopping:
                    return False
                for job in [j for j in self._active if j.cancelled]:
                    self._leave(job)
                while self._incoming and self._free:
                    job = self._incoming.popleft()
                    if not job.cancelled:
                        self._join(job)
                if self._active:
                    return True
                self._lock.wait()

    def _join(self, job: Job) -> None:
        job.seq = self._free.pop()
        seed = (
            job.params.seed if job.params.seed is not None else random.randint(0, backend.MAX_SEED)
        )
        job.sampler = gguf_model.Sampler(job.params, seed=seed)
        job.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        job.scanner = stop_sequences.StopScanner(job.params.stop)
        job.budget = min(job.params.max_tokens, self._model.n_ctx - len(job.prompt))
        self._active.append(job)

    def _leave(self, job: Job) -> None:
        llama_cpp.llama_memory_seq_rm(self._model.memory, job.seq, -1, -1)
        if job.sampler is not None:
            job.sampler.free()
            job.sampler = None
        self._active.remove(job)
        self._free.append(job.seq)

    def _step(self) -> None:
        batch = self._batch
        assert batch is not None
        batch.clear()
        before = {job: (job.fed, job.pos) for job in self._active}
        outputs: list[tuple[Job, int]] = []
        for job in self._active:
            if not job.prefilling:
                outputs.append((job, batch.add(job.last, job.pos, job.seq, logits=True)))
                job.pos += 1
        joining = []
        for job in self._active:
            room = batch.capacity - batch.n
            if room <= 0:
                break
            if not job.prefilling:
                continue
            joining.append(job)
            end = min(len(job.prompt), job.fed + room)
            for i in range(job.fed, end):
                row = batch.add(job.prompt[i], i, job.seq, logits=i == len(job.prompt) - 1)
            job.fed = job.pos = end
            if not job.prefilling:
                outputs.append((job, row))
        code = batch.decode(self._model.ctx)
        if code != 0:
            for job, (fed, pos) in before.items():
                job.fed, job.pos = fed, pos
            self._decode_failed(code, joining)
            return
        if outputs:  # the streams this step decoded a token of (prefill alone is not one)
            stats.BATCH_SIZE.observe(len(outputs))
        for job, row in outputs:
            if job.cancelled:
                continue
            assert job.sampler is not None
            self._advance(job, job.sampler.sample(self._model.ctx, row))

    def _advance(self, job: Job, token: int) -> None:
        """Take a sampled token: emit text, or finish the stream."""
        assert job.scanner is not None
        if self._model.is_end(token):
            self._finish(job, "", backend.FinishReason.STOP)
            return
        job.produced += 1
        job.pending += 1
        text = job.scanner.feed(job.decoder.decode(self._model.piece(token)))
        if job.scanner.stopped:
            self._finish(job, text, backend.FinishReason.STOP)
        elif job.produced >= job.budget:
            self._finish(job, text, backend.FinishReason.LENGTH)
        else:
            if text:
                job.emit(backend.Chunk(text, job.pending))
                job.pending = 0
            job.last = token

    def _finish(self, job: Job, text: str, finish: backend.FinishReason) -> None:
        assert job.scanner is not None
        if not job.scanner.stopped:
            text += job.scanner.feed(job.decoder.decode(b"", final=True)) + job.scanner.flush()
        if job.scanner.stopped:
            finish = backend.FinishReason.STOP
        job.emit(
            backend.Chunk(
                text, job.pending, finish=finish, usage=backend.Usage(len(job.prompt), job.produced)
            )
        )
        with self._lock:
            self._leave(job)

    def _decode_failed(self, code: int, joining: list[Job]) -> None:
        """A failed step left the KV cache as it was; end the streams it cannot carry."""
        if code == 1 and joining:
            # No room in the KV cache for the prompts: refuse those, keep the others going.
            log.warning("llama_decode found no KV slot", extra={"joining": len(joining)})
            for job in joining:
                job.emit(
                    errors.ResourceExhausted(
                        "no room in the model's KV cache for this prompt now; retry later",
                        retry_after_s=1,
                    )
                )
                with self._lock:
                    self._leave(job)
            return
        log.error("llama_decode failed", extra={"code": code})
        self._fail_all(errors.Internal(f"llama_decode failed with code {code}"))
        llama_cpp.llama_memory_clear(self._model.memory, True)

    def _fail_all(self, error: errors.AionError) -> None:
        with self._lock:
            for job in list(self._active):
                job.emit(error)
                self._leave(job)
            while self._incoming:
                self._incoming.popleft().emit(error)
