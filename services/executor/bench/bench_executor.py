"""``make bench-executor``: the executor against its ceilings, in one run, as one JSON object.

Embeddings: gRPC ``Embed`` with 1, 8 and 64 concurrent single-text callers
against the raw model in-process at its best batch size (``embed_ratio_*``).

Generation (greedy, the same prompts and ``max_tokens`` everywhere): the
aggregate completion tokens/s of gRPC ``Generate`` at 1, 8 and 32 concurrent
streams, against

- the raw ceiling: llama.cpp's batch API decoding the same number of
  sequences in this process, no server (``gen_vs_raw_batched_*``);
- llama-cpp-python's own server (``python -m llama_cpp.server``) over HTTP
  with the same prompts and concurrency, against the executor's own
  OpenAI-compatible HTTP endpoint (``gen_vs_llama_server_*``);

and the time to first token and per-token latency (p50/p99) of the gRPC
streams at 8 (``ttft_p50_ms``, ``ttft_p99_ms``) and at each concurrency.

Knobs (environment): BENCH_THREADS (model threads, default: the CPUs this
process may use), BENCH_MAX_TOKENS (64), BENCH_GEN_STREAMS ("1,8,32"),
BENCH_EMBED_CALLERS ("1,8,64"), BENCH_LLAMA_SERVER (1; 0 skips it),
BENCH_REQUESTS (generation requests per stream count, default 16).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import llama_cpp

from aion.api.executor.v1 import executor_pb2, executor_pb2_grpc
from aion.core import channels, tls
from aion.executor import backend, settings
from aion.executor.embedding import st_backend
from aion.executor.generation import gguf_model

THREADS = int(os.environ.get("BENCH_THREADS", settings.available_cpus()))
MAX_TOKENS = int(os.environ.get("BENCH_MAX_TOKENS", "64"))
GEN_STREAMS = [int(n) for n in os.environ.get("BENCH_GEN_STREAMS", "1,8,32").split(",")]
EMBED_CALLERS = [int(n) for n in os.environ.get("BENCH_EMBED_CALLERS", "1,8,64").split(",")]
LLAMA_SERVER = os.environ.get("BENCH_LLAMA_SERVER", "1") != "0"
REQUESTS = int(os.environ.get("BENCH_REQUESTS", "16"))
CA = tls.LocalCa()  # the executor process's certificate and the benchmark's (as the agent)
HTTP_TOKEN = "bench-executor-token"
N_CTX = 256
GEN_NAME = "smollm2-135m-instruct"
EMBED_NAME = "all-minilm-l6-v2"
SUBJECTS = [
    "a lighthouse keeper",
    "a lost robot",
    "a cat in Paris",
    "a mountain village",
    "a deep-sea diver",
    "an old violin",
    "a desert caravan",
    "a winter market",
]
STYLES = ["short story", "poem", "news report", "diary entry"]
PROMPTS = [f"Write a {STYLES[i % 4]} about {SUBJECTS[i % 8]}. Make it vivid." for i in range(32)]
TEXTS = [
    f"Note {i}: the {SUBJECTS[i % 8]} appears in chapter {i % 13} of the "
    f"{STYLES[i % 4]}, where the weather turns."
    for i in range(1024)
]


def log(message: str) -> None:
    """Progress on stderr; stdout carries only the JSON."""
    print(f"bench-executor: {message}", file=sys.stderr, flush=True)


def pct(values: Sequence[float], q: float) -> float:
    """The q-quantile (0..1, nearest rank) of ``values``, 0 when empty."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


def ms(seconds: float) -> float:
    """Seconds as milliseconds, rounded."""
    return round(seconds * 1000, 2)


async def fan_out(workers: int, jobs: int, job: Callable[[int], Awaitable[None]]) -> float:
    """Run ``jobs`` calls of ``job`` over ``workers`` concurrent workers; the wall seconds."""
    queue = iter(range(jobs))

    async def worker() -> None:
        for i in queue:
            await job(i)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(workers)))
    return time.perf_counter() - started


# --- embeddings -------------------------------------------------------------------------------


def raw_embeddings(model: st_backend.SentenceTransformerBackend) -> dict[str, float]:
    """Texts/s of the model called directly, per batch size."""
    rates = {}
    for size in (1, 8, 32, 64, 128):
        texts = TEXTS[:128] if size == 1 else TEXTS[:512]
        model.embed(texts[:size])  # warm this shape
        started = time.perf_counter()
        for i in range(0, len(texts), size):
            model.embed(texts[i : i + size])
        rates[str(size)] = round(len(texts) / (time.perf_counter() - started), 1)
        log(f"raw embeddings, batch {size}: {rates[str(size)]} texts/s")
    return rates


async def grpc_embeddings() -> dict[int, float]:
    """Texts/s through gRPC Embed with n concurrent callers of one text each."""
    rates = {}
    async with executor_process(
        AION_EXECUTOR_MODEL_TASK="embed",
        AION_EXECUTOR_EMBED_MAX_BATCH="64",
        AION_EXECUTOR_EMBED_MAX_WAIT_MS="5",
        AION_EXECUTOR_MAX_QUEUE="256",
    ) as ex:
        for callers in EMBED_CALLERS:
            jobs = 128 if callers == 1 else 768

            async def one(i: int) -> None:
                await ex.stub.Embed(executor_pb2.EmbedRequest(texts=[TEXTS[i % len(TEXTS)]]))

            await fan_out(callers, min(jobs, callers * 2), one)  # warm up
            seconds = await fan_out(callers, jobs, one)
            rates[callers] = round(jobs / seconds, 1)
            log(f"gRPC embeddings, {callers} callers: {rates[callers]} texts/s")
    return rates


# --- generation: the executor -----------------------------------------------------------------


class Runs:
    """Per-request figures of one concurrency level."""

    def __init__(self) -> None:
        self.tokens = 0
        self.ttft: list[float] = []
        self.per_token: list[float] = []

    def add(self, started: float, first: float | None, ended: float, tokens: int) -> None:
        """Record one request."""
        self.tokens += tokens
        if first is not None:
            self.ttft.append(first - started)
            if tokens > 1:
                self.per_token.append((ended - first) / (tokens - 1))


def gen_request(i: int) -> executor_pb2.GenerateRequest:
    """The i-th prompt, greedy."""
    return executor_pb2.GenerateRequest(
        messages=[executor_pb2.ChatMessage(role="user", content=PROMPTS[i % len(PROMPTS)])],
        max_tokens=MAX_TOKENS,
        temperature=0,
    )


def jobs_for(streams: int) -> int:
    """Requests per concurrency level: at least one per stream."""
    return max(REQUESTS, streams)


async def grpc_generation(ex: Running, streams: int) -> tuple[float, Runs]:
    """Aggregate tokens/s and latencies of gRPC Generate at ``streams`` concurrent streams."""
    runs = Runs()

    async def one(i: int) -> None:
        started, first, tokens = time.perf_counter(), None, 0
        async for chunk in ex.stub.Generate(gen_request(i), timeout=600):
            if first is None and chunk.text:
                first = time.perf_counter()
            if chunk.HasField("usage"):
                tokens = chunk.usage.completion_tokens
        runs.add(started, first, time.perf_counter(), tokens)

    await fan_out(streams, streams, one)  # warm up
    runs = Runs()
    seconds = await fan_out(streams, jobs_for(streams), one)
    return runs.tokens / seconds, runs


async def http_generation(base_url: str, streams: int, *, model: str) -> float:
    """Aggregate tokens/s of OpenAI chat completions (not streamed, usage counted) over HTTP."""
    tokens = 0
    async with httpx.AsyncClient(
        base_url=base_url,
        timeout=900,
        headers={"Authorization": f"Bearer {HTTP_TOKEN}"},
        limits=httpx.Limits(max_connections=streams + 4),
    ) as http:

        async def one(i: int) -> None:
            nonlocal tokens
            response = await http.post(
                "/v1/chat/completions",
                json={
                    "model": model,
                    "max_tokens": MAX_TOKENS,
                    "temperature": 0,
                    "messages": [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}],
                },
            )
            response.raise_for_status()
            tokens += response.json()["usage"]["completion_tokens"]

        await fan_out(streams, streams, one)  # warm up
        tokens = 0
        seconds = await fan_out(streams, jobs_for(streams), one)
    return tokens / seconds


# --- generation: the raw ceiling ---------------------------------------------------------------


def raw_generation(path: Any, streams: int) -> float:
    """Tokens/s of llama.cpp's batch API decoding ``streams`` sequences greedily, in-process."""
    total_tokens = 0
    total_seconds = 0.0
    with gguf_model.GgufModel(
        path,
        n_ctx=N_CTX,
        n_seq=streams,
        n_batch=512,
        n_threads=THREADS,
        gpu=gguf_model.gpu_offload_supported(),
    ) as m:
        m.load()
        prompts = [
            m.encode_chat([backend.ChatMessage("user", PROMPTS[i % len(PROMPTS)])])
            for i in range(jobs_for(streams))
        ]
        greedy = backend.SamplingParams(max_tokens=MAX_TOKENS, temperature=0)
        batch = gguf_model.Batch(512)
        try:
            for start in range(0, len(prompts), streams):
                group = prompts[start : start + streams]
                llama_cpp.llama_memory_clear(m.memory, True)
                samplers = [gguf_model.Sampler(greedy, seed=0) for _ in group]
                started = time.perf_counter()
                # Prefill in batches of up to 512 tokens; a sequence samples its first
                # token right after the decode that held its last prompt token.
                nxt: dict[int, int] = {}
                fed = [0] * len(group)
                while any(f < len(p) for f, p in zip(fed, group, strict=True)):
                    batch.clear()
                    rows: dict[int, int] = {}
                    for s, prompt in enumerate(group):
                        end = min(len(prompt), fed[s] + 512 - batch.n)
                        for i in range(fed[s], end):
                            row = batch.add(prompt[i], i, s, logits=i == len(prompt) - 1)
                            if i == len(prompt) - 1:
                                rows[s] = row
                        fed[s] = end
                    assert batch.decode(m.ctx) == 0
                    nxt.update({s: samplers[s].sample(m.ctx, r) for s, r in rows.items()})
                pos = [len(p) for p in group]
                produced = [0] * len(group)
                while nxt:
                    batch.clear()
                    rows = {}
                    for s, token in nxt.items():
                        if m.is_end(token):
                            continue
                        produced[s] += 1
                        m.piece(token)  # detokenize, as a server must
                        if produced[s] >= MAX_TOKENS:
                            continue
                        rows[s] = batch.add(token, pos[s], s, logits=True)
                        pos[s] += 1
                    if batch.n:
                        assert batch.decode(m.ctx) == 0
                    nxt = {s: samplers[s].sample(m.ctx, r) for s, r in rows.items()}
                total_seconds += time.perf_counter() - started
                total_tokens += sum(produced)
                for sampler in samplers:
                    sampler.free()
        finally:
            batch.free()
    return total_tokens / total_seconds


async def raw_generation_alone(streams: int) -> float:
    """``raw_generation`` in a process of its own: torch, loaded here for the embeddings,
    runs its own OpenMP runtime beside llama.cpp's and slows it down."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "raw-generation", str(streams), stdout=asyncio.subprocess.PIPE
    )
    out, _ = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"the raw generation run failed with status {proc.returncode}")
    return float(out.decode().strip().splitlines()[-1])


# --- generation: llama-cpp-python's server -----------------------------------------------------


def free_port() -> int:
    """A TCP port nobody listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def llama_server(path: Any) -> Iterator[str]:
    """``python -m llama_cpp.server`` on a free port; its base URL once it answers."""
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "llama_cpp.server",
            "--model",
            str(path),
            "--interrupt_requests",
            "False",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--n_ctx",
            str(N_CTX),
            "--n_threads",
            str(THREADS),
            "--n_threads_batch",
            str(THREADS),
            "--model_alias",
            GEN_NAME,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{url}/v1/models", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("llama_cpp.server did not start")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# --- the run ---------------------------------------------------------------------------------


@dataclasses.dataclass
class Running:
    """An executor process and a client of it."""

    stub: executor_pb2_grpc.ExecutorAsyncStub
    http_url: str


@contextlib.asynccontextmanager
async def executor_process(**env: str) -> AsyncIterator[Running]:
    """``python -m aion.executor`` on free ports, as deployed; stopped with SIGTERM."""
    variables = {
        **os.environ,
        **CA.env(Path(tempfile.mkdtemp()), "executor"),
        "AION_EXECUTOR_HEALTH_PORT": "0",
        "AION_EXECUTOR_HTTP_TOKEN": HTTP_TOKEN,
        "AION_EXECUTOR_HOST": "127.0.0.1",
        "AION_EXECUTOR_PORT": "0",
        "AION_EXECUTOR_HTTP_PORT": "0",
        "AION_EXECUTOR_N_THREADS": str(THREADS),
        "AION_EXECUTOR_N_CTX": str(N_CTX),
        "AION_EXECUTOR_LOG_LEVEL": "INFO",
        "AION_EXECUTOR_MAX_TOKENS_LIMIT": str(MAX_TOKENS),
        "AION_EXECUTOR_DEFAULT_MAX_TOKENS": str(MAX_TOKENS),
        **env,
    }
    variables.pop("AION_EXECUTOR_KAFKA_BOOTSTRAP", None)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "aion.executor",
        env=variables,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stderr is not None
    addresses: dict[str, str] = {}
    try:
        async with asyncio.timeout(300):
            while line := await proc.stderr.readline():
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                message = record.get("message", "")
                if message in ("executor listening", "executor http listening"):
                    addresses[message] = record["address"]
                if message.startswith("model loaded"):
                    break
                if message.startswith("executor cannot start"):
                    raise RuntimeError(message)
        drain = asyncio.ensure_future(_drain(proc.stderr))
        async with channels.connect(
            addresses["executor listening"], tls=CA.tls("agent"), peer="executor"
        ) as channel:
            yield Running(
                stub=executor_pb2_grpc.ExecutorStub(channel),
                http_url=f"http://{addresses['executor http listening']}",
            )
        drain.cancel()
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(30):
                    await proc.wait()
            except TimeoutError:
                proc.kill()
                await proc.wait()


async def _drain(stream: asyncio.StreamReader) -> None:
    while await stream.readline():
        pass


def generation_executor(streams: int) -> contextlib.AbstractAsyncContextManager[Running]:
    """The executor serving SmolLM2 with ``streams`` slots."""
    return executor_process(
        AION_EXECUTOR_MODEL_TASK="generate",
        AION_EXECUTOR_MAX_STREAMS=str(streams),
        AION_EXECUTOR_MAX_QUEUE=str(streams * 4),
    )


async def main() -> dict[str, Any]:
    """Every measurement, in order; the JSON object."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    out: dict[str, Any] = {"threads": THREADS, "max_tokens": MAX_TOKENS}
    started = time.perf_counter()

    emb = st_backend.SentenceTransformerBackend(
        settings.bundled_model_path("embed"), n_threads=THREADS
    )
    emb.load()
    out["device_embed"] = emb.device
    raw = raw_embeddings(emb)
    best = max(raw.values())
    out["embed_raw_texts_per_s"] = raw
    out["embed_raw_best_texts_per_s"] = best
    emb.close()
    served = await grpc_embeddings()
    for callers, rate in served.items():
        out[f"embed_grpc_texts_per_s_{callers}"] = rate
        out[f"embed_ratio_{callers}"] = round(rate / best, 3)

    path = settings.bundled_model_path("generate")
    out["device_generate"] = "cuda" if gguf_model.gpu_offload_supported() else "cpu"
    for streams in GEN_STREAMS:
        async with generation_executor(streams) as ex:
            rate, runs = await grpc_generation(ex, streams)
            out[f"gen_tokens_per_s_{streams}"] = round(rate, 1)
            out[f"ttft_p50_ms_{streams}"] = ms(pct(runs.ttft, 0.5))
            out[f"ttft_p99_ms_{streams}"] = ms(pct(runs.ttft, 0.99))
            out[f"per_token_p50_ms_{streams}"] = ms(pct(runs.per_token, 0.5))
            out[f"per_token_p99_ms_{streams}"] = ms(pct(runs.per_token, 0.99))
            log(
                f"gRPC generation, {streams} streams: {rate:.1f} tokens/s, TTFT p50 "
                f"{out[f'ttft_p50_ms_{streams}']} ms"
            )
            if LLAMA_SERVER:
                http_rate = await http_generation(ex.http_url, streams, model=GEN_NAME)
                out[f"gen_http_tokens_per_s_{streams}"] = round(http_rate, 1)
                log(f"HTTP generation, {streams} streams: {http_rate:.1f} tokens/s")
        raw_rate = await raw_generation_alone(streams)
        out[f"gen_raw_batched_tokens_per_s_{streams}"] = round(raw_rate, 1)
        out[f"gen_vs_raw_batched_{streams}"] = round(rate / raw_rate, 3)
        log(f"raw batched generation, {streams} sequences: {raw_rate:.1f} tokens/s")
    if LLAMA_SERVER:
        with llama_server(path) as url:
            for streams in GEN_STREAMS:
                theirs = await http_generation(url, streams, model=GEN_NAME)
                out[f"llama_server_tokens_per_s_{streams}"] = round(theirs, 1)
                ours = out[f"gen_http_tokens_per_s_{streams}"]
                out[f"gen_vs_llama_server_{streams}"] = round(ours / theirs, 3)
                log(f"llama_cpp.server, {streams} streams: {theirs:.1f} tokens/s")
    if 8 in GEN_STREAMS:
        out["ttft_p50_ms"] = out["ttft_p50_ms_8"]
        out["ttft_p99_ms"] = out["ttft_p99_ms_8"]
    out["seconds"] = round(time.perf_counter() - started, 1)
    out["targets"] = {
        "embed_ratio_64 >= 0.8": out.get("embed_ratio_64", 0) >= 0.8,
        "gen_vs_raw_batched_8 >= 0.85": out.get("gen_vs_raw_batched_8", 0) >= 0.85,
        "gen_vs_llama_server_8 >= 2": out.get("gen_vs_llama_server_8", 0) >= 2,
    }
    return out


if __name__ == "__main__":
    if sys.argv[1:2] == ["raw-generation"]:
        print(raw_generation(settings.bundled_model_path("generate"), int(sys.argv[2])))
    else:
        print(json.dumps(asyncio.run(main()), sort_keys=True))
