"""The Agent spec, validated as ``charts/aion/crds/agents.aion.dev.yaml`` declares it.

The API server already checks the CRD's schema and CEL rules; the operator
checks again here because it is where an Agent enters Python, and because a
cluster may run an older CRD. Field names are the CRD's (camelCase aliases).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Annotated, Any, Literal

import pydantic
import pydantic_core
from pydantic import alias_generators

from aion.core import errors

# A Kubernetes label value: pool names and GPU product names are label values.
LABEL_VALUE_PATTERN = r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
MODEL_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._/-]*$"
# A non-negative resource.Quantity, as Kubernetes' own OpenAPI schema spells it.
QUANTITY_PATTERN = (r"^(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"
                    r"(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$")

Privacy = Literal["local-only", "allow-api", "hybrid"]
Task = Literal["generate", "embed"]


def _unique(values: tuple[str, ...]) -> tuple[str, ...]:
    repeated = sorted({v for v in values if values.count(v) > 1})
    if repeated:
        raise pydantic_core.PydanticCustomError(
            "unique", "names must be unique; repeated: {repeated}",
            {"repeated": ", ".join(repeated)})
    return values


def _quantity(value: object) -> str:
    # YAML turns `cpu: 2` into an int; Kubernetes accepts it as the quantity "2".
    if isinstance(value, int | float) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not re.fullmatch(QUANTITY_PATTERN, value):
        raise pydantic_core.PydanticCustomError(
            "quantity", "'{value}' is not a Kubernetes quantity such as 500m, 2 or 4Gi",
            {"value": value})
    return value


def _matching(pattern: str, *, what: str) -> pydantic.AfterValidator:
    def check(value: str) -> str:
        if not re.fullmatch(pattern, value):
            raise pydantic_core.PydanticCustomError(
                "pattern", "'{value}' is not {what}", {"value": value, "what": what})
        return value
    return pydantic.AfterValidator(check)


LabelValue = Annotated[str, _matching(
    LABEL_VALUE_PATTERN, what="a node label value (at most 63 letters, digits, '-', '_' or "
    "'.', starting and ending with a letter or digit)")]
ModelName = Annotated[str, pydantic.StringConstraints(min_length=1, max_length=128), _matching(
    MODEL_NAME_PATTERN, what="a model name (letters, digits, '.', '_', '/' or '-')")]
LabelValues = Annotated[tuple[LabelValue, ...], pydantic.Field(max_length=32),
                        pydantic.AfterValidator(_unique)]
Name = Annotated[str, pydantic.StringConstraints(min_length=1, max_length=128)]
Names = Annotated[tuple[Name, ...], pydantic.Field(max_length=64),
                  pydantic.AfterValidator(_unique)]
Quantity = Annotated[str, pydantic.PlainValidator(_quantity)]


class _Spec(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(
        extra="forbid", frozen=True, alias_generator=alias_generators.to_camel)


class Model(_Spec):
    """The model an Agent's executor serves."""

    name: ModelName
    source: str | None = pydantic.Field(default=None, min_length=1, max_length=2048)
    task: Task = "generate"


class Routing(_Spec):
    """Where the Agent's tasks may run, and what they may cost."""

    privacy: Privacy = "local-only"
    budget_usd_per_task: float | None = pydantic.Field(default=None, ge=0)
    p95_target_ms: int | None = pydantic.Field(default=None, ge=1, strict=True)


class Gpu(_Spec):
    """How many GPUs each executor replica needs, and which kinds."""

    count: int = pydantic.Field(default=1, ge=0, le=16, strict=True)
    products: LabelValues = ()
    min_memory_gib: int | None = pydantic.Field(default=None, ge=1, strict=True,
                                               alias="minMemoryGiB")

    @pydantic.model_validator(mode="after")
    def _needs_a_gpu(self) -> Gpu:
        if self.count == 0 and (self.products or self.min_memory_gib is not None):
            raise pydantic_core.PydanticCustomError(
                "gpu", "gpu.products and gpu.minMemoryGiB need gpu.count > 0")
        return self


class Resources(_Spec):
    """CPU and memory each executor replica requests (memory is also its limit)."""

    cpu: Quantity = "1"
    memory: Quantity = "2Gi"


class Placement(_Spec):
    """Which node pools the Agent may run on, which it prefers, and the price cap."""

    allowed_pools: LabelValues = ()
    preferred_pools: LabelValues = ()
    max_price_per_gpu_hour: float | None = pydantic.Field(default=None, ge=0)

    @pydantic.model_validator(mode="after")
    def _preferred_are_allowed(self) -> Placement:
        stray = [p for p in self.preferred_pools if p not in self.allowed_pools]
        if self.allowed_pools and stray:
            raise pydantic_core.PydanticCustomError(
                "placement", "preferredPools must be among allowedPools; not allowed: {stray}",
                {"stray": ", ".join(stray)})
        return self

    def ordered(self) -> tuple[str, ...]:
        """The named pools in order of preference: preferred first, then the other allowed."""
        rest = tuple(p for p in self.allowed_pools if p not in self.preferred_pools)
        return self.preferred_pools + rest


class Replicas(_Spec):
    """Bounds on the number of executor replicas."""

    min: int = pydantic.Field(default=1, ge=0, le=100, strict=True)
    max: int = pydantic.Field(default=1, ge=1, le=100, strict=True)

    @pydantic.model_validator(mode="after")
    def _ordered(self) -> Replicas:
        if self.min > self.max:
            raise pydantic_core.PydanticCustomError(
                "replicas", "replicas.min ({min}) must not exceed replicas.max ({max})",
                {"min": self.min, "max": self.max})
        return self


class AgentSpec(_Spec):
    """The spec of an ``agents.aion.dev`` resource."""

    model: Model
    instructions: str = pydantic.Field(default="", max_length=32768)
    tools: Names = ()
    knowledge_bases: Names = ()
    routing: Routing = Routing()
    gpu: Gpu = Gpu()
    resources: Resources = Resources()
    placement: Placement = Placement()
    replicas: Replicas = Replicas()


def _path(loc: Sequence[int | str]) -> str:
    path = "spec"
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    return path


def parse(data: Any) -> AgentSpec:
    """Validate an Agent's spec; ``InvalidArgument`` lists every problem by its field path."""
    try:
        return AgentSpec.model_validate(data)
    except pydantic.ValidationError as exc:
        problems = exc.errors(include_url=False)
        text = "; ".join(f"{_path(p['loc'])}: {p['msg']}" for p in problems)
        raise errors.InvalidArgument(f"invalid Agent spec: {text}",
                                     field=_path(problems[0]["loc"])) from None
