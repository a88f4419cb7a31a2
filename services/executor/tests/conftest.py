"""The real models, loaded once per session, and executors serving them on free ports.

Models run on one thread: the test machine is small and shared, and
llama.cpp's and torch's threads spin badly when the cores are oversubscribed.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator

import pytest

from aion.executor import inference, settings, testing, validation
from aion.executor.embedding import st_backend
from aion.executor.generation import llama_backend

GEN_MODEL = "smollm2-135m-instruct"
EMBED_MODEL = "all-minilm-l6-v2"
N_CTX = 512
MAX_STREAMS = 4
MAX_TOKENS_LIMIT = 64
LIMITS = validation.Limits(default_max_tokens=8, max_tokens_limit=MAX_TOKENS_LIMIT, max_texts=16)

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def new_generation_model(*, max_streams: int = MAX_STREAMS) -> llama_backend.LlamaBackend:
    """The bundled SmolLM2 model, not loaded yet."""
    return llama_backend.LlamaBackend(
        settings.bundled_model_path("generate"),
        n_ctx=N_CTX,
        n_threads=1,
        max_streams=max_streams,
        n_batch=256,
    )


@pytest.fixture(scope="session")
def generation_model() -> Iterator[llama_backend.LlamaBackend]:
    """The real SmolLM2 model, loaded once."""
    with new_generation_model() as model:
        model.load()
        yield model


@pytest.fixture(scope="session")
def embedding_model() -> Iterator[st_backend.SentenceTransformerBackend]:
    """The real all-MiniLM-L6-v2 model, loaded once."""
    model = st_backend.SentenceTransformerBackend(settings.bundled_model_path("embed"), n_threads=1)
    model.load()
    yield model
    model.close()


@pytest.fixture(scope="session")
async def generator(
    generation_model: llama_backend.LlamaBackend,
) -> AsyncIterator[testing.Executor]:
    """One generation executor serving the shared model."""
    async with testing.serve(
        inference.GenerationService(
            generation_model, model_name=GEN_MODEL, limits=LIMITS, max_queue=8
        )
    ) as running:
        yield running


@pytest.fixture(scope="session")
async def embedder(
    embedding_model: st_backend.SentenceTransformerBackend,
) -> AsyncIterator[testing.Executor]:
    """One embedding executor serving the shared model."""
    service = inference.EmbeddingService(
        embedding_model,
        model_name=EMBED_MODEL,
        limits=LIMITS,
        max_queue=64,
        max_batch=32,
        max_wait_s=0.005,
    )
    async with testing.serve(service) as running:
        yield running
