"""The Agent resource, validated as ``charts/aion/crds/agents.aion.dev.yaml`` declares it.

One model for the two places an Agent enters Python: the operator (an Agent applied
with kubectl) and the agent service's manifest parser (``aionctl apply -f``, the agents
file). Two copies drifted once, and kubectl-applied Agents lost their tools; the
operator's CRD test checks this model against the CRD's schema, so the three agree.
The API server already checks the CRD's schema and CEL rules; the operator checks
again because a cluster may run an older CRD. Field names are the CRD's (camelCase
aliases). Errors name every bad field by its path (``spec.gpu.count``), bounded in
length whatever the input.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Annotated, Any, Literal

import pydantic
import pydantic_core
from pydantic import alias_generators

from aion.core import errors
from aion.core import privacy as privacy_mod

# A Kubernetes label value: pool names and GPU product names are label values.
LABEL_VALUE_PATTERN = r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
MODEL_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._/-]*$"
# A non-negative resource.Quantity, as Kubernetes' own OpenAPI schema spells it.
QUANTITY_PATTERN = (
    r"^(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"
    r"(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)

ModelTask = Literal["generate", "embed"]
API_VERSION = "aion.dev/v1alpha1"
KIND = "Agent"
# An Agent's name is a DNS label: it names the executor Deployment and Service.
AGENT_NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
MAX_DESCRIPTION = 4096
# The largest spec.maxTokens the resource may say; each agent service caps it lower.
MAX_TOKENS = 1_000_000
_MAX_PROBLEMS = 5
# spec.toolCredentials: a Secret's name is a DNS subdomain, its keys as Kubernetes allows;
# the header is an HTTP field name (RFC 9110 token), the scheme a token or empty.
SECRET_NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
SECRET_KEY_PATTERN = r"^[-._a-zA-Z0-9]+$"
HEADER_PATTERN = r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$"
SCHEME_PATTERN = r"^[A-Za-z0-9!#$%&'*+.^_`|~-]*$"
DEFAULT_HEADER = "Authorization"
# Headers the MCP and A2A clients set themselves (or HTTP owns): never a credential's.
RESERVED_HEADERS = frozenset(
    {
        "host",
        "content-length",
        "content-type",
        "accept",
        "connection",
        "transfer-encoding",
        "mcp-session-id",
        "mcp-protocol-version",
        "last-event-id",
    }
)
# The tools that name a server by URL, and so may get a credential.
SERVER_TOOL_PREFIXES = ("mcp:", "a2a:")


def _unique(values: tuple[str, ...]) -> tuple[str, ...]:
    repeated = sorted({v for v in values if values.count(v) > 1})
    if repeated:
        raise pydantic_core.PydanticCustomError(
            "unique",
            "names must be unique; repeated: {repeated}",
            {"repeated": ", ".join(repeated)},
        )
    return values


def _quantity(value: object) -> str:
    # YAML turns `cpu: 2` into an int; Kubernetes accepts it as the quantity "2".
    if isinstance(value, int | float) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not re.fullmatch(QUANTITY_PATTERN, value):
        raise pydantic_core.PydanticCustomError(
            "quantity",
            "'{value}' is not a Kubernetes quantity such as 500m, 2 or 4Gi",
            {"value": value},
        )
    return value


def _matching(pattern: str, *, what: str) -> pydantic.AfterValidator:
    def check(value: str) -> str:
        if not re.fullmatch(pattern, value):
            raise pydantic_core.PydanticCustomError(
                "pattern", "'{value}' is not {what}", {"value": value, "what": what}
            )
        return value

    return pydantic.AfterValidator(check)


LabelValue = Annotated[
    str,
    _matching(
        LABEL_VALUE_PATTERN,
        what="a node label value (at most 63 letters, digits, '-', '_' or "
        "'.', starting and ending with a letter or digit)",
    ),
]
ModelName = Annotated[
    str,
    pydantic.StringConstraints(min_length=1, max_length=128),
    _matching(MODEL_NAME_PATTERN, what="a model name (letters, digits, '.', '_', '/' or '-')"),
]
LabelValues = Annotated[
    tuple[LabelValue, ...], pydantic.Field(max_length=32), pydantic.AfterValidator(_unique)
]
Name = Annotated[str, pydantic.StringConstraints(min_length=1, max_length=128)]
Names = Annotated[tuple[Name, ...], pydantic.Field(max_length=64), pydantic.AfterValidator(_unique)]
Quantity = Annotated[str, pydantic.PlainValidator(_quantity)]


class _Spec(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(
        extra="forbid", frozen=True, alias_generator=alias_generators.to_camel
    )


class Model(_Spec):
    """The model an Agent's executor serves."""

    name: ModelName
    source: str | None = pydantic.Field(default=None, min_length=1, max_length=2048)
    task: ModelTask = "generate"


class Routing(_Spec):
    """Where the Agent's tasks may run, and what they may cost."""

    privacy: privacy_mod.Privacy = privacy_mod.Privacy.LOCAL_ONLY
    budget_usd_per_task: float | None = pydantic.Field(default=None, ge=0)
    p95_target_ms: int | None = pydantic.Field(default=None, ge=1, strict=True)


class Gpu(_Spec):
    """How many GPUs each executor replica needs, and which kinds."""

    count: int = pydantic.Field(default=1, ge=0, le=16, strict=True)
    products: LabelValues = ()
    min_memory_gib: int | None = pydantic.Field(
        default=None, ge=1, strict=True, alias="minMemoryGiB"
    )

    @pydantic.model_validator(mode="after")
    def _needs_a_gpu(self) -> Gpu:
        if self.count == 0 and (self.products or self.min_memory_gib is not None):
            raise pydantic_core.PydanticCustomError(
                "gpu", "gpu.products and gpu.minMemoryGiB need gpu.count > 0"
            )
        return self


class Resources(_Spec):
    """CPU and memory each executor replica requests (memory is also its limit)."""

    cpu: Quantity = "1"
    memory: Quantity = "2Gi"


class PlacementRules(_Spec):
    """Which node pools the Agent may run on, which it prefers, and the price cap."""

    allowed_pools: LabelValues = ()
    preferred_pools: LabelValues = ()
    max_price_per_gpu_hour: float | None = pydantic.Field(default=None, ge=0)

    @pydantic.model_validator(mode="after")
    def _preferred_are_allowed(self) -> PlacementRules:
        stray = [p for p in self.preferred_pools if p not in self.allowed_pools]
        if self.allowed_pools and stray:
            raise pydantic_core.PydanticCustomError(
                "placement",
                "preferredPools must be among allowedPools; not allowed: {stray}",
                {"stray": ", ".join(stray)},
            )
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
                "replicas",
                "replicas.min ({min}) must not exceed replicas.max ({max})",
                {"min": self.min, "max": self.max},
            )
        return self


def server_url(tool: str) -> str | None:
    """The server URL a ``spec.tools`` entry names (``mcp:<url>``, ``mcp:<url>#<tool>``,
    ``a2a:<url>``); None for a tool that names none."""
    for prefix in SERVER_TOOL_PREFIXES:
        if tool.startswith(prefix):
            url = tool.removeprefix(prefix)
            return url.partition("#")[0] if prefix == "mcp:" else url
    return None


class SecretKeyRef(_Spec):
    """One key of a Secret in the Agent's namespace."""

    name: Annotated[
        str,
        pydantic.StringConstraints(min_length=1, max_length=253),
        _matching(SECRET_NAME_PATTERN, what="a Secret name (a DNS subdomain)"),
    ]
    key: Annotated[
        str,
        pydantic.StringConstraints(min_length=1, max_length=253),
        _matching(SECRET_KEY_PATTERN, what="a Secret key (letters, digits, '-', '_' or '.')"),
    ]


class ToolCredential(_Spec):
    """The credential an MCP or A2A server of ``spec.tools`` gets: a Secret's key, sent
    as an HTTP header on every request to that server.

    The header is ``header`` (Authorization unless set); its value is the Secret's,
    after ``scheme`` and a space when there is a scheme. Unset, the scheme is
    ``Bearer`` for the Authorization header and none for any other (``X-API-Key``);
    ``scheme: ""`` sends the value as it is.
    """

    url: str = pydantic.Field(min_length=1, max_length=128)
    secret_ref: SecretKeyRef
    header: Annotated[
        str,
        pydantic.StringConstraints(min_length=1, max_length=128),
        _matching(HEADER_PATTERN, what="an HTTP header name"),
    ] = DEFAULT_HEADER
    scheme: (
        Annotated[
            str,
            pydantic.StringConstraints(max_length=64),
            _matching(SCHEME_PATTERN, what="an HTTP authentication scheme such as Bearer"),
        ]
        | None
    ) = None

    @pydantic.field_validator("header")
    @classmethod
    def _not_reserved(cls, value: str) -> str:
        if value.lower() in RESERVED_HEADERS:
            raise pydantic_core.PydanticCustomError(
                "header",
                "'{value}' is set by the MCP and A2A clients themselves; name another "
                "header (Authorization, X-API-Key, ...)",
                {"value": value},
            )
        return value

    @property
    def prefix(self) -> str:
        """What goes before the Secret's value in the header: ``"Bearer "``, or nothing."""
        scheme = self.scheme
        if scheme is None:
            scheme = "Bearer" if self.header.lower() == DEFAULT_HEADER.lower() else ""
        return f"{scheme} " if scheme else ""


class AgentSpec(_Spec):
    """The spec of an ``agents.aion.dev`` resource."""

    model: Model
    instructions: str = pydantic.Field(default="", max_length=32768)
    description: str = pydantic.Field(default="", max_length=MAX_DESCRIPTION)
    # Tokens each model call may generate; None leaves it to the agent service.
    max_tokens: int | None = pydantic.Field(default=None, ge=1, le=MAX_TOKENS, strict=True)
    # "knowledge_search", "agent:<name>" (another agent), "mcp:<url>[#<tool>]" (an MCP
    # server's tools) or "a2a:<url>" (an A2A agent).
    tools: Names = ()
    # Secrets sent as a header to the MCP and A2A servers of ``tools``.
    tool_credentials: tuple[ToolCredential, ...] = pydantic.Field(default=(), max_length=64)
    knowledge_bases: Names = ()
    routing: Routing = Routing()
    gpu: Gpu = Gpu()
    resources: Resources = Resources()
    placement: PlacementRules = PlacementRules()
    replicas: Replicas = Replicas()

    @pydantic.model_validator(mode="after")
    def _credentials_name_servers(self) -> AgentSpec:
        servers = {url for url in map(server_url, self.tools) if url is not None}
        seen: set[str] = set()
        for i, credential in enumerate(self.tool_credentials):
            if credential.url in seen:
                raise pydantic_core.PydanticCustomError(
                    "credentials",
                    "toolCredentials[{i}]: a second credential for {url}; give each server one",
                    {"i": i, "url": credential.url},
                )
            seen.add(credential.url)
            if credential.url not in servers:
                raise pydantic_core.PydanticCustomError(
                    "credentials",
                    "toolCredentials[{i}].url {url} is not a server of spec.tools; name it "
                    "there as mcp:{url} (or mcp:{url}#<tool>, or a2a:{url})",
                    {"i": i, "url": credential.url},
                )
        return self


class Metadata(pydantic.BaseModel):
    """The part of an Agent's metadata a manifest must get right: its name."""

    model_config = pydantic.ConfigDict(extra="ignore", frozen=True)

    name: str = pydantic.Field(pattern=AGENT_NAME_PATTERN, max_length=63)


class AgentResource(pydantic.BaseModel):
    """An ``agents.aion.dev`` resource as a manifest holds it (status, if any, ignored)."""

    model_config = pydantic.ConfigDict(extra="ignore", frozen=True)

    api_version: Literal["aion.dev/v1alpha1"] = pydantic.Field(alias="apiVersion")
    kind: Literal["Agent"]
    metadata: Metadata
    spec: AgentSpec


def _path(loc: Sequence[int | str], *, root: str = "") -> str:
    path = root
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else f".{part}" if path else str(part)
    return path or "manifest"


def _problems(exc: pydantic.ValidationError, *, root: str) -> tuple[str, str]:
    """Every problem (the first few) by field path, and the first one's path. Messages
    are cut short and never quote the whole input, whose repr may be huge."""
    found = exc.errors(include_input=False, include_url=False)
    text = "; ".join(
        f"{_path(p['loc'], root=root)}: {p['msg'][:200]}" for p in found[:_MAX_PROBLEMS]
    )
    more = len(found) - _MAX_PROBLEMS
    if more > 0:
        text += f"; and {more} more"
    return text, _path(found[0]["loc"], root=root)


def parse(data: Any) -> AgentSpec:
    """Validate an Agent's spec; ``InvalidArgument`` lists every problem by its field path."""
    try:
        return AgentSpec.model_validate(data)
    except pydantic.ValidationError as exc:
        text, field = _problems(exc, root="spec")
        raise errors.InvalidArgument(f"invalid Agent spec: {text}", field=field) from None


def parse_resource(data: Any) -> AgentResource:
    """Validate a whole Agent resource (apiVersion, kind, metadata.name, spec);
    ``InvalidArgument`` lists every problem by its field path."""
    try:
        return AgentResource.model_validate(data)
    except pydantic.ValidationError as exc:
        text, field = _problems(exc, root="")
        raise errors.InvalidArgument(f"invalid Agent: {text}", field=field) from None
