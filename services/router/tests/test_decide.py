"""Routing decisions and policy reloads."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from aion.core import errors
from aion.router import decide, policy

PROVIDER = policy.Provider(name="openai", base_url="https://api.example", model="m",
                           usd_per_1k_tokens=0.5)


def _req(privacy: decide.Privacy, **kw: object) -> decide.Request:
    return decide.Request(tenant=str(kw.pop("tenant", "acme")), agent="a", privacy=privacy,
                          input_chars=400, **kw)  # type: ignore[arg-type]


def test_local_only_stays_local_even_with_a_provider() -> None:
    d = decide.decide(_req(decide.Privacy.LOCAL_ONLY), policy.Policy(provider=PROVIDER))
    assert d.route is decide.Route.LOCAL
    assert d.chosen_by == "policy:privacy"
    assert "local-only" in d.reason


def test_allow_api_without_provider_runs_locally_and_says_why() -> None:
    d = decide.decide(_req(decide.Privacy.ALLOW_API), policy.Policy())
    assert d.route is decide.Route.LOCAL
    assert d.chosen_by == "policy:no-provider"


def test_allow_api_with_provider_goes_to_the_api() -> None:
    d = decide.decide(_req(decide.Privacy.ALLOW_API), policy.Policy(provider=PROVIDER))
    assert d.route is decide.Route.API
    assert d.provider == "openai"
    assert d.estimated_cost_usd == pytest.approx((400 // 4 + 256) / 1000 * 0.5)


def test_budget_below_the_api_cost_keeps_it_local() -> None:
    d = decide.decide(_req(decide.Privacy.ALLOW_API, budget_usd=0.0001),
                      policy.Policy(provider=PROVIDER))
    assert d.route is decide.Route.LOCAL
    assert d.chosen_by == "budget"


def test_hybrid() -> None:
    d = decide.decide(_req(decide.Privacy.HYBRID), policy.Policy(provider=PROVIDER))
    assert d.route is decide.Route.HYBRID


def test_tenant_policy_narrows_privacy() -> None:
    pol = policy.Policy(provider=PROVIDER,
                        tenants={"acme": policy.TenantPolicy(max_privacy="local-only")})
    d = decide.decide(_req(decide.Privacy.ALLOW_API), pol)
    assert d.route is decide.Route.LOCAL
    assert "tenant policy" in d.reason
    other = decide.decide(_req(decide.Privacy.ALLOW_API, tenant="other"), pol)
    assert other.route is decide.Route.API


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
