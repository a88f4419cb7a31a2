"""Fixtures shared by the operator's unit tests."""

from __future__ import annotations

from typing import Any

import pytest

from aion.operator import settings


@pytest.fixture
def cfg() -> settings.AionOperatorSettings:
    """Settings as the chart would set them."""
    return settings.AionOperatorSettings(executor_image="registry.test/aion-executor:1.2.3",
                                         otlp_endpoint="http://otel:4317")


@pytest.fixture
def gpu_spec() -> dict[str, Any]:
    """A spec that needs two A100s of at least 80 GiB on a preferred pool."""
    return {
        "model": {"name": "llama-3-8b-instruct", "source": "https://models.test/llama.gguf"},
        "gpu": {"count": 2, "products": ["NVIDIA-A100-SXM4-80GB"], "minMemoryGiB": 80},
        "resources": {"cpu": "4", "memory": "32Gi"},
        "placement": {"allowedPools": ["a100-spot", "a100"], "preferredPools": ["a100"]},
        "replicas": {"min": 2, "max": 4},
    }
