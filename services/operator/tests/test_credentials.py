"""Credentials of an Agent's tool servers: read from its namespace's Secrets
(``credentials``), registered with the agent service, and registered again when a Secret
changes (``reconcile.follow``, with a fake API and a recording registrar)."""

from __future__ import annotations

import base64
import datetime
from collections.abc import Mapping
from typing import Any

import kopf
import pytest

from aion.api.agent.v1 import agent_pb2
from aion.core import agentspec, errors
from aion.operator import conditions, credentials, reconcile, registration, settings

NOW = datetime.datetime(2025, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)
TOKEN = "tok-9d2e7a41"
URL = "http://tools.team-a.svc/mcp"


def _secret(
    name: str, data: Mapping[str, str], *, version: str = "1", uid: str = "s-uid"
) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "uid": uid, "resourceVersion": version},
        "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()},
    }


def _spec(*entries: Mapping[str, Any], tools: list[str] | None = None) -> agentspec.AgentSpec:
    return agentspec.parse(
        {
            "model": {"name": "m"},
            "tools": tools or [f"mcp:{URL}#add", "a2a:http://peer.team-a.svc"],
            "toolCredentials": list(entries),
        }
    )


def _entry(**changes: Any) -> dict[str, Any]:
    return {"url": URL, "secretRef": {"name": "tools", "key": "token"}, **changes}


class Secrets:
    """The namespace's Secrets by name; counts the reads."""

    def __init__(self, *found: dict[str, Any]) -> None:
        self.found = {s["metadata"]["name"]: s for s in found}
        self.reads: list[str] = []

    async def read(self, name: str) -> dict[str, Any] | None:
        self.reads.append(name)
        return self.found.get(name)


async def test_a_secrets_key_becomes_the_header_each_server_gets() -> None:
    secrets = Secrets(_secret("tools", {"token": f"{TOKEN}\n", "api-key": "k-1"}))
    spec = _spec(
        _entry(),
        _entry(
            url="http://peer.team-a.svc",
            secretRef={"name": "tools", "key": "api-key"},
            header="X-API-Key",
        ),
    )
    resolved = await credentials.resolve(spec, "team-a", secrets.read)
    assert [(c.url, c.header, c.value) for c in resolved.credentials] == [
        (URL, "Authorization", f"Bearer {TOKEN}"),  # the trailing newline taken off
        ("http://peer.team-a.svc", "X-API-Key", "k-1"),
    ]
    assert secrets.reads == ["tools"]  # each Secret read once
    assert resolved.version is not None
    assert TOKEN not in resolved.version


@pytest.mark.parametrize(
    ("changes", "value"),
    [
        ({}, f"Bearer {TOKEN}"),
        ({"scheme": "Token"}, f"Token {TOKEN}"),
        ({"scheme": ""}, TOKEN),
        ({"header": "X-API-Key"}, TOKEN),
        ({"header": "X-API-Key", "scheme": "Key"}, f"Key {TOKEN}"),
    ],
)
async def test_the_scheme_is_bearer_for_authorization_unless_said(
    changes: dict[str, str], value: str
) -> None:
    resolved = await credentials.resolve(
        _spec(_entry(**changes)), "team-a", Secrets(_secret("tools", {"token": TOKEN})).read
    )
    assert resolved.credentials[0].value == value


async def test_an_agent_without_credentials_reads_no_secret() -> None:
    secrets = Secrets()
    resolved = await credentials.resolve(_spec(), "team-a", secrets.read)
    assert resolved == credentials.Resolved()
    assert secrets.reads == []


@pytest.mark.parametrize(
    ("found", "entry", "reason", "says"),
    [
        ((), _entry(), "SecretNotFound", "Secret tools (spec.toolCredentials[0], for http://"),
        (
            (_secret("tools", {"other": "x", "more": "y"}),),
            _entry(),
            "SecretNotFound",
            "has no key token (spec.toolCredentials[0], for http://tools.team-a.svc/mcp); "
            "its keys: more, other",
        ),
        (
            (_secret("aion-executor-http", {"token": TOKEN}),),
            _entry(secretRef={"name": "aion-executor-http", "key": "token"}),
            "SecretNotAllowed",
            "is the operator's own",
        ),
        ((_secret("tools", {"token": "  \n"}),), _entry(), "InvalidSecret", "not empty"),
        (
            (_secret("tools", {"token": f"{TOKEN}\r\nX-Evil: 1"}),),
            _entry(),
            "InvalidSecret",
            "printable ASCII",
        ),
        ((_secret("tools", {"token": f"{TOKEN}é"}),), _entry(), "InvalidSecret", "printable"),
        ((_secret("tools", {"token": "x" * 9000}),), _entry(), "InvalidSecret", "at most 8192"),
    ],
)
async def test_a_credential_that_cannot_be_had_says_why_never_its_value(
    found: tuple[dict[str, Any], ...], entry: dict[str, Any], reason: str, says: str
) -> None:
    with pytest.raises(credentials.Unavailable) as caught:
        await credentials.resolve(_spec(entry), "team-a", Secrets(*found).read)
    assert caught.value.reason == reason
    assert says in caught.value.message
    assert TOKEN not in caught.value.message
    assert "x" * 20 not in caught.value.message


def test_the_version_follows_the_secrets_not_their_values() -> None:
    one = credentials.version({"tools": _secret("tools", {"token": "a"}, version="7")})
    assert one == credentials.version({"tools": _secret("tools", {"token": "b"}, version="7")})
    assert one != credentials.version({"tools": _secret("tools", {"token": "a"}, version="8")})
    recreated = _secret("tools", {"token": "a"}, version="7", uid="other")
    assert one != credentials.version({"tools": recreated})


def test_secrets_are_read_again_at_most_every_interval() -> None:
    clock = [100.0]
    recheck = credentials.Recheck(30, clock=lambda: clock[0])
    assert recheck.due("uid-1")
    assert not recheck.due("uid-1")
    assert recheck.due("uid-2")
    clock[0] += 30
    assert recheck.due("uid-1")
    recheck.forget("uid-1")
    assert recheck.due("uid-1")


def test_the_registration_carries_the_credentials() -> None:
    body = {"metadata": {"name": "chat", "namespace": "team-a", "uid": "uid-1"}}
    spec = _spec(_entry())
    found = (agent_pb2.ToolCredential(url=URL, header="Authorization", value="Bearer t"),)
    req = registration.request(body, spec, tenant_name="team-a", pool="l4", credentials=found)
    assert list(req.tool_credentials) == list(found)
    assert registration.request(body, spec, tenant_name="team-a", pool="l4").tool_credentials == []


# -- following a Ready Agent ------------------------------------------------------------
class Registrar:
    """Records each registration; fails with ``fail`` when set."""

    target = "agent:50054"

    def __init__(self) -> None:
        self.requests: list[agent_pb2.RegisterAgentRequest] = []
        self.fail: errors.AionError | None = None

    async def register(self, req: agent_pb2.RegisterAgentRequest) -> None:
        if self.fail is not None:
            raise self.fail
        self.requests.append(req)


class Kube:
    """The API as ``follow`` reads it: a ready Deployment, no pods, the namespace's Secrets."""

    def __init__(self, secrets: Secrets) -> None:
        self.secrets = secrets

    async def pods(self, *, selector: Mapping[str, str], namespace: str) -> list[Any]:
        return []

    async def deployment(self, name: str, *, namespace: str) -> dict[str, Any]:
        return {
            "metadata": {"generation": 1},
            "status": {"readyReplicas": 1, "updatedReplicas": 1, "observedGeneration": 1},
        }

    async def namespace_labels(self, name: str) -> dict[str, str]:
        return {}

    async def secret(self, name: str, *, namespace: str) -> dict[str, Any] | None:
        assert namespace == "team-a"
        return await self.secrets.read(name)


def _ready(spec: dict[str, Any], **status: Any) -> dict[str, Any]:
    ready = conditions.set_condition(
        [], "Ready", status="True", reason="ReplicasReady", message="1 of 1 ready",
        observed_generation=2, now=NOW,
    )  # fmt: skip
    ready = conditions.set_condition(
        ready, "ModelReady", status="True", reason="ModelLoaded", message="the model is loaded "
        "on 1 executor replica(s)", observed_generation=2, now=NOW,
    )  # fmt: skip
    return {
        "apiVersion": "aion.dev/v1alpha1",
        "kind": "Agent",
        "metadata": {"name": "chat", "namespace": "team-a", "uid": "uid-1", "generation": 2},
        "spec": spec,
        "status": {
            "phase": "Ready",
            "nodePool": "cpu",
            "observedGeneration": 2,
            "readyReplicas": 1,
            "conditions": ready,
            **status,
        },
    }


class Follower:
    """``reconcile.follow`` of one Agent, its status patches applied between looks."""

    def __init__(self, cfg: settings.AionOperatorSettings, secrets: Secrets, body: Any) -> None:
        self.cfg = cfg
        self.kube = Kube(secrets)
        self.registrar = Registrar()
        self.body = body
        self.recheck = credentials.Recheck(cfg.credentials_interval_s, clock=lambda: self.now)
        self.now = 0.0

    async def look(self) -> dict[str, Any]:
        patch = kopf.Patch()
        await reconcile.follow(
            kopf.Body(self.body),
            patch,
            client=self.kube,  # type: ignore[arg-type]
            cfg=self.cfg,
            logger=kopf.LocalObjectLogger(
                body=kopf.Body(self.body),
                settings=kopf.OperatorSettings(),
            ),
            registrar=self.registrar,  # type: ignore[arg-type]
            executors=reconcile.Executors(
                secrets=_NoSecrets(),  # type: ignore[arg-type]
                platform_namespace="aion",
                recheck=self.recheck,
            ),
        )
        changes = dict(patch.get("status") or {})
        self.body = {**self.body, "status": {**self.body["status"], **changes}}
        return changes

    def registered(self) -> Mapping[str, Any]:
        found = conditions.find(self.body["status"]["conditions"], "Registered")
        assert found is not None
        return found


class _NoSecrets:
    async def ensure(self, namespace: str) -> None:
        return None

    async def roll(self, deployment: Any, namespace: str) -> bool:
        return False


@pytest.fixture
def events(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str, str]]:
    """The Events ``follow`` posts (kind, reason, message); kopf's need a running operator."""
    posted: list[tuple[str, str, str]] = []
    for kind in ("info", "warn"):
        monkeypatch.setattr(
            kopf,
            kind,
            lambda _body, *, reason, message, kind=kind: posted.append((kind, reason, message)),
        )
    return posted


SPEC = {
    "model": {"name": "m"},
    "gpu": {"count": 0},
    "tools": [f"mcp:{URL}"],
    "toolCredentials": [_entry()],
}


async def test_a_secret_is_registered_and_a_changed_one_registered_again(
    cfg: settings.AionOperatorSettings, events: list[tuple[str, str, str]]
) -> None:
    secrets = Secrets(_secret("tools", {"token": TOKEN}, version="1"))
    agent = Follower(cfg, secrets, _ready(SPEC))
    await agent.look()
    [first] = agent.registrar.requests
    assert [(c.url, c.value) for c in first.tool_credentials] == [(URL, f"Bearer {TOKEN}")]
    assert agent.registered()["status"] == "True"
    assert "with credentials of 1 tool server(s)" in agent.registered()["message"]
    version = agent.body["status"]["credentialsVersion"]
    assert version
    assert TOKEN not in str(agent.body["status"])
    assert [e[:2] for e in events] == [("info", "Registered")]
    assert all(TOKEN not in e[2] for e in events)
    # Unchanged Secret: read again once the interval has passed, not registered again.
    agent.now += cfg.credentials_interval_s
    reads = len(secrets.reads)
    await agent.look()
    assert len(secrets.reads) == reads + 1
    assert len(agent.registrar.requests) == 1
    # Within the interval the Secret is not even read.
    secrets.found["tools"] = _secret("tools", {"token": "rotated-token"}, version="2")
    await agent.look()
    assert len(secrets.reads) == reads + 1
    # Past it, the changed Secret is registered again.
    agent.now += cfg.credentials_interval_s
    await agent.look()
    assert [c.value for c in agent.registrar.requests[-1].tool_credentials] == [
        "Bearer rotated-token"
    ]
    assert agent.body["status"]["credentialsVersion"] not in (None, version)
    assert "with the changed credentials" in agent.registered()["message"]


async def test_a_missing_secret_leaves_the_agent_unregistered_with_one_warning(
    cfg: settings.AionOperatorSettings, events: list[tuple[str, str, str]]
) -> None:
    secrets = Secrets()
    agent = Follower(cfg, secrets, _ready(SPEC))
    await agent.look()
    await agent.look()  # said once
    assert agent.registrar.requests == []
    registered = agent.registered()
    assert (registered["status"], registered["reason"]) == ("False", "SecretNotFound")
    assert "Secret tools (spec.toolCredentials[0]" in registered["message"]
    assert "not found in namespace team-a" in registered["message"]
    assert events == [("warn", "SecretNotFound", registered["message"])]
    # Created: registered at the next look.
    secrets.found["tools"] = _secret("tools", {"token": TOKEN})
    await agent.look()
    assert len(agent.registrar.requests) == 1
    assert agent.registered()["status"] == "True"


async def test_a_secret_deleted_after_registration_is_said_and_the_agent_kept(
    cfg: settings.AionOperatorSettings, events: list[tuple[str, str, str]]
) -> None:
    secrets = Secrets(_secret("tools", {"token": TOKEN}))
    agent = Follower(cfg, secrets, _ready(SPEC))
    await agent.look()
    del secrets.found["tools"]
    agent.now += cfg.credentials_interval_s
    await agent.look()
    assert len(agent.registrar.requests) == 1  # nothing deregistered or sent without it
    assert agent.registered()["reason"] == "SecretNotFound"
    assert events[-1][:2] == ("warn", "SecretNotFound")


async def test_an_agent_without_credentials_reads_no_secret_after_registering(
    cfg: settings.AionOperatorSettings, events: list[tuple[str, str, str]]
) -> None:
    secrets = Secrets()
    spec = {"model": {"name": "m"}, "gpu": {"count": 0}, "tools": [f"mcp:{URL}"]}
    agent = Follower(cfg, secrets, _ready(spec))
    await agent.look()
    assert len(agent.registrar.requests) == 1
    assert agent.body["status"]["credentialsVersion"] is None
    agent.now += cfg.credentials_interval_s
    await agent.look()
    assert len(agent.registrar.requests) == 1
    assert secrets.reads == []
