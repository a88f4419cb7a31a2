"""`python -m aion.executor` as a process: it loads the model and serves, or fails clearly."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import grpc
import httpx
from grpc_health.v1 import health_pb2, health_pb2_grpc

from aion.api.executor.v1 import executor_pb2, executor_pb2_grpc
from aion.core import channels, tls

CA = tls.LocalCa()
TOKEN = "executor-test-token"


async def start(tmp: Path, **env: str) -> asyncio.subprocess.Process:
    variables = {
        **os.environ,
        **CA.env(tmp / "tls", "executor"),
        "AION_EXECUTOR_HEALTH_PORT": "0",
        "AION_EXECUTOR_HTTP_TOKEN": TOKEN,
        "AION_EXECUTOR_HOST": "127.0.0.1",
        "AION_EXECUTOR_PORT": "0",
        "AION_EXECUTOR_N_THREADS": "1",
        "AION_EXECUTOR_MAX_STREAMS": "2",
        "AION_EXECUTOR_N_CTX": "512",
        "HF_HUB_OFFLINE": "1",
        **env,
    }
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "aion.executor",
        env=variables,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )


async def log_until(proc: asyncio.subprocess.Process, message: str) -> list[dict[str, Any]]:
    """The JSON log records up to the first whose message starts with ``message``."""
    assert proc.stderr is not None
    records: list[dict[str, Any]] = []
    async with asyncio.timeout(120):
        while line := await proc.stderr.readline():
            record = json.loads(line)
            records.append(record)
            if str(record.get("message", "")).startswith(message):
                return records
    raise AssertionError(f"the process ended before logging {message!r}: {records}")


async def test_serves_once_loaded_and_drains_on_sigterm(tmp_path: Path) -> None:
    proc = await start(tmp_path)
    try:
        records = await log_until(proc, "model loaded")
        listening = next(r for r in records if r["message"] == "executor listening")
        http = next(r for r in records if r["message"] == "executor http listening")
        loading = next(r for r in records if r["message"] == "loading model")
        assert loading["size_mb"] > 1
        assert any(r["message"] == "loading model: 100%" for r in records)
        async with httpx.AsyncClient(base_url=f"http://{http['address']}") as client:
            assert (await client.get("/v1/models")).status_code == 401
            models = (
                await client.get("/v1/models", headers={"Authorization": f"Bearer {TOKEN}"})
            ).json()
        assert [m["id"] for m in models["data"]] == ["smollm2-135m-instruct"]
        async with grpc.aio.insecure_channel(listening["health_address"]) as probe:
            check = await health_pb2_grpc.HealthStub(probe).Check(
                health_pb2.HealthCheckRequest(), timeout=10
            )
            assert check.status == health_pb2.HealthCheckResponse.SERVING
        async with channels.connect(
            listening["address"], tls=CA.tls("agent"), peer="executor"
        ) as channel:
            request = executor_pb2.GenerateRequest(
                messages=[executor_pb2.ChatMessage(role="user", content="Say hi.")], max_tokens=2
            )
            chunks = [
                c
                async for c in executor_pb2_grpc.ExecutorStub(channel).Generate(request, timeout=30)
            ]
            assert chunks[-1].usage.completion_tokens <= 2
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            assert await proc.wait() == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_a_model_that_cannot_load_exits_non_zero(tmp_path: Path) -> None:
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"not a model")
    proc = await start(tmp_path, AION_EXECUTOR_MODEL_PATH=str(broken))
    try:
        records = await log_until(proc, "executor cannot start")
        assert str(broken) in records[-1]["message"]
        async with asyncio.timeout(30):
            assert await proc.wait() == 1
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_an_embedding_executor_serves_embed(tmp_path: Path) -> None:
    proc = await start(tmp_path, AION_EXECUTOR_MODEL_TASK="embed")
    try:
        records = await log_until(proc, "model loaded")
        listening = next(r for r in records if r["message"] == "executor listening")
        assert any(r["message"] == "loading model: warming up" for r in records)
        async with channels.connect(
            listening["address"], tls=CA.tls("knowledge"), peer="executor"
        ) as channel:
            response = await executor_pb2_grpc.ExecutorStub(channel).Embed(
                executor_pb2.EmbedRequest(texts=["hello", "world"]), timeout=30
            )
        assert (response.model, response.dimensions, len(response.embeddings)) == (
            "all-minilm-l6-v2",
            384,
            2,
        )
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            assert await proc.wait() == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_without_tls_material_it_refuses_to_start(tmp_path: Path) -> None:
    variables = {k: v for k, v in os.environ.items() if not k.startswith("AION_TLS_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "aion.executor",
        env={**variables, "AION_EXECUTOR_PORT": "0"},
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(60):
        _, err = await proc.communicate()
    assert proc.returncode != 0
    assert all(name in err.decode() for name in tls.VARIABLES), err.decode()
