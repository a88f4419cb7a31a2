"""Routing decisions and policy reloads."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from aion.api.router.v1 import router_pb2
from aion.api.v1 import common_pb2
from aion.core import errors, privacy
from aion.router import convert, decide, policy

PROVIDER = policy.Provider(
    name="openai", base_url="https://api.example", model="m", usd_per_1k_tokens=0.5
)


def _req(level: privacy.Privacy, **kw: object) -> decide.Request:
    return decide.Request(
        tenant=str(kw.pop("tenant", "acme")),
        agent="a",
        declared=level,
        input_chars=400,
        **kw,  # type: ignore[arg-type]
    )


def test_local_only_stays_local_even_with_a_provider() -> None:
    d = decide.decide(_req(privacy.Privacy.LOCAL_ONLY), policy.Policy(provider=PROVIDER))
    assert d.route is privacy.Route.LOCAL
    assert d.chosen_by == "policy:privacy"
    assert "local-only" in d.reason


def test_allow_api_without_provider_runs_locally_and_says_why() -> None:
    d = decide.decide(_req(privacy.Privacy.ALLOW_API), policy.Policy())
    assert d.route is privacy.Route.LOCAL
    assert d.chosen_by == "policy:no-provider"


def test_allow_api_with_provider_goes_to_the_api() -> None:
    d = decide.decide(_req(privacy.Privacy.ALLOW_API), policy.Policy(provider=PROVIDER))
    assert d.route is privacy.Route.API
    assert d.provider == "openai"
    assert d.estimated_cost_usd == pytest.approx((400 // 4 + 256) / 1000 * 0.5)


def test_budget_below_the_api_cost_keeps_it_local() -> None:
    d = decide.decide(
        _req(privacy.Privacy.ALLOW_API, budget_usd=0.0001), policy.Policy(provider=PROVIDER)
    )
    assert d.route is privacy.Route.LOCAL
    assert d.chosen_by == "budget"


def test_hybrid() -> None:
    d = decide.decide(_req(privacy.Privacy.HYBRID), policy.Policy(provider=PROVIDER))
    assert d.route is privacy.Route.HYBRID


def test_tenant_policy_narrows_privacy() -> None:
    capped = policy.TenantPolicy(max_privacy=privacy.Privacy.LOCAL_ONLY)
    pol = policy.Policy(provider=PROVIDER, tenants={"acme": capped})
    d = decide.decide(_req(privacy.Privacy.ALLOW_API), pol)
    assert d.route is privacy.Route.LOCAL
    assert "tenant policy" in d.reason
    other = decide.decide(_req(privacy.Privacy.ALLOW_API, tenant="other"), pol)
    assert other.route is privacy.Route.API


@pytest.mark.parametrize(
    ("agent", "asked", "route"),
    [
        (privacy.Privacy.ALLOW_API, privacy.Privacy.LOCAL_ONLY, privacy.Route.LOCAL),
        (privacy.Privacy.ALLOW_API, privacy.Privacy.HYBRID, privacy.Route.HYBRID),
        (privacy.Privacy.ALLOW_API, privacy.Privacy.ALLOW_API, privacy.Route.API),
        (privacy.Privacy.HYBRID, privacy.Privacy.HYBRID, privacy.Route.HYBRID),
        (privacy.Privacy.HYBRID, None, privacy.Route.HYBRID),
        (privacy.Privacy.LOCAL_ONLY, privacy.Privacy.LOCAL_ONLY, privacy.Route.LOCAL),
    ],
)
def test_a_task_may_narrow_its_agents_privacy(
    agent: privacy.Privacy, asked: privacy.Privacy | None, route: privacy.Route
) -> None:
    d = decide.decide(_req(agent, requested=asked), policy.Policy(provider=PROVIDER))
    assert d.route is route


def test_a_task_asking_local_only_says_so() -> None:
    d = decide.decide(
        _req(privacy.Privacy.ALLOW_API, requested=privacy.Privacy.LOCAL_ONLY),
        policy.Policy(provider=PROVIDER),
    )
    assert d.chosen_by == "policy:privacy"
    assert "the task asks for local-only" in d.reason


@pytest.mark.parametrize(
    ("agent", "asked"),
    [
        (privacy.Privacy.LOCAL_ONLY, privacy.Privacy.HYBRID),
        (privacy.Privacy.LOCAL_ONLY, privacy.Privacy.ALLOW_API),
        (privacy.Privacy.HYBRID, privacy.Privacy.ALLOW_API),
    ],
)
def test_a_task_asking_for_a_looser_privacy_is_refused(
    agent: privacy.Privacy, asked: privacy.Privacy
) -> None:
    with pytest.raises(errors.InvalidArgument, match="may only narrow") as info:
        decide.decide(_req(agent, requested=asked), policy.Policy(provider=PROVIDER))
    assert info.value.code.name == "INVALID_ARGUMENT"
    assert asked.value in info.value.message
    assert agent.value in info.value.message


def test_the_tenant_cap_narrows_a_task_that_asks_for_more() -> None:
    pol = policy.Policy(
        provider=PROVIDER, tenants={"acme": policy.TenantPolicy(max_privacy=privacy.Privacy.HYBRID)}
    )
    d = decide.decide(_req(privacy.Privacy.ALLOW_API, requested=privacy.Privacy.ALLOW_API), pol)
    assert d.route is privacy.Route.HYBRID


def test_sla_ms_is_carried_but_does_not_change_the_decision() -> None:
    pol = policy.Policy(provider=PROVIDER)
    assert decide.decide(_req(privacy.Privacy.ALLOW_API, sla_ms=1), pol) == decide.decide(
        _req(privacy.Privacy.ALLOW_API), pol
    )


def _pb(**kw: object) -> router_pb2.DecideRequest:
    base: dict[str, object] = {"tenant": "acme", "agent": "a", "input_chars": 4}
    return router_pb2.DecideRequest(**{**base, **kw})  # type: ignore[arg-type]


def test_the_tenant_is_required_never_defaulted() -> None:
    with pytest.raises(errors.InvalidArgument, match="tenant is required"):
        convert.request_from_pb(_pb(tenant=""))
    assert convert.tenant_from_pb(_pb()) == "acme"


def test_convert_reads_both_privacies_and_leaves_unset_ones_local_and_unasked() -> None:
    req = convert.request_from_pb(
        _pb(
            privacy=common_pb2.PRIVACY_ALLOW_API,
            requested_privacy=common_pb2.PRIVACY_HYBRID,
            sla_ms=50,
        )
    )
    assert (req.declared, req.requested, req.sla_ms) == (
        privacy.Privacy.ALLOW_API,
        privacy.Privacy.HYBRID,
        50,
    )
    bare = convert.request_from_pb(_pb())
    assert (bare.declared, bare.requested, bare.sla_ms) == (privacy.Privacy.LOCAL_ONLY, None, None)


def test_an_unknown_requested_privacy_names_the_public_field() -> None:
    with pytest.raises(errors.InvalidArgument, match=r"task\.options\.privacy"):
        convert.request_from_pb(_pb(requested_privacy=42))


def test_a_routing_becomes_the_wire_decision() -> None:
    msg = convert.routing_to_pb(
        decide.Routing(
            privacy.Route.HYBRID, "policy:privacy", "why", provider="openai", estimated_cost_usd=0.5
        )
    )
    assert (msg.engine.route, msg.engine.chosen_by, msg.provider, msg.estimated_cost_usd) == (
        common_pb2.ROUTE_HYBRID,
        "policy:privacy",
        "openai",
        0.5,
    )


def test_policy_file_is_reloaded_and_a_bad_edit_keeps_the_last_good(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text("local_usd_per_1k_tokens: 0.1\n")
    source = policy.PolicySource(path)
    assert source.current().provider is None
    path.write_text("provider: {name: p, base_url: 'http://x', model: m, usd_per_1k_tokens: 1}\n")
    os.utime(path, (1, 1))
    assert source.current().provider is not None
    path.write_text("provider: {name: p}\nunknown_field: 1\n")
    os.utime(path, (2, 2))
    assert source.current().provider is not None  # kept


def test_invalid_policy_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("tenants: {acme: {max_privacy: everything}}\n")
    with pytest.raises(errors.InvalidArgument, match=str(path)):
        policy.PolicySource(path)
