"""Authentication, roles and rate limits."""

from __future__ import annotations

import time

import jwt
import pydantic
import pytest

from aion.core import errors
from aion.gateway import auth, ratelimit, settings

SECRET = "s3cret-for-tests-only-32-bytes-long!"


def _cfg(**kw: object) -> settings.GatewaySettings:
    base: dict[str, object] = {
        "api_keys": [settings.ApiKey(key=pydantic.SecretStr("k-acme"), tenant="acme",
                                     roles=["viewer"], name="ci")],
        "jwt_secret": pydantic.SecretStr(SECRET),
    }
    base.update(kw)
    return settings.GatewaySettings(**base)  # type: ignore[arg-type]


def _token(**claims: object) -> str:
    body: dict[str, object] = {"sub": "alice", "tenant": "globex", "roles": ["user"],
                               "exp": int(time.time()) + 3600}  # built at collection time
    body.update(claims)
    return jwt.encode(body, SECRET, algorithm="HS256")


def test_api_key_maps_to_its_tenant_and_roles() -> None:
    p = auth.Authenticator(_cfg()).authenticate([("x-api-key", "k-acme")])
    assert (p.tenant, p.subject, p.roles) == ("acme", "ci", frozenset({"viewer"}))
    p.require("viewer")
    with pytest.raises(errors.PermissionDenied, match="'user' role"):
        p.require("user")


def test_unknown_api_key_is_unauthenticated() -> None:
    with pytest.raises(errors.Unauthenticated, match="unknown API key"):
        auth.Authenticator(_cfg()).authenticate([("x-api-key", "nope")])


def test_jwt_gives_tenant_subject_and_roles() -> None:
    p = auth.Authenticator(_cfg()).authenticate([("authorization", f"Bearer {_token()}")])
    assert (p.tenant, p.subject) == ("globex", "alice")
    p.require("user")


@pytest.mark.parametrize(("token", "message"), [
    (_token(exp=int(time.time()) - 10), "expired"),
    (_token(tenant=""), "tenant"),
    (jwt.encode({"sub": "x", "tenant": "t", "exp": int(time.time()) + 3600},
                "another-secret-of-thirty-two-bytes!!", algorithm="HS256"), "Signature"),
])
def test_bad_jwts_are_refused_with_the_reason(token: str, message: str) -> None:
    with pytest.raises(errors.Unauthenticated, match=message):
        auth.Authenticator(_cfg()).authenticate([("authorization", f"Bearer {token}")])


def test_no_credentials() -> None:
    with pytest.raises(errors.Unauthenticated, match="x-api-key"):
        auth.Authenticator(_cfg()).authenticate([])
    anon = auth.Authenticator(_cfg(allow_anonymous=True, anonymous_tenant="dev"))
    assert anon.authenticate([]).tenant == "dev"


def test_malformed_authorization_header() -> None:
    with pytest.raises(errors.Unauthenticated, match="Bearer"):
        auth.Authenticator(_cfg()).authenticate([("authorization", "Basic abc")])


def test_rate_limit_refuses_with_the_wait_and_refills() -> None:
    now = [100.0]
    limiter = ratelimit.RateLimiter(rate=2, burst=2, clock=lambda: now[0])
    limiter.take("acme")
    limiter.take("acme")
    with pytest.raises(errors.ResourceExhausted) as info:
        limiter.take("acme")
    assert info.value.retry_after_s == pytest.approx(0.5)
    limiter.take("other")  # tenants have their own buckets
    now[0] += 0.5
    limiter.take("acme")


def test_empty_secrets_from_a_chart_mean_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AION_GATEWAY_API_KEYS", "")
    monkeypatch.setenv("AION_GATEWAY_JWT_SECRET", "")
    cfg = settings.GatewaySettings()
    assert cfg.api_keys is None
    assert cfg.jwt_secret is None
    with pytest.raises(errors.Unauthenticated, match="does not accept JWTs"):
        auth.Authenticator(cfg).authenticate([("authorization", f"Bearer {_token()}")])


def test_api_keys_parse_from_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AION_GATEWAY_API_KEYS",
                       '[{"key": "k1", "tenant": "acme", "roles": ["admin"]}]')
    p = auth.Authenticator(settings.GatewaySettings()).authenticate([("x-api-key", "k1")])
    assert p.tenant == "acme"
    p.require("admin")
