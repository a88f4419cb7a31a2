"""Authentication, roles and rate limits (in process; tests/e2e/test_gateway_auth.py runs them
against real servers and Postgres)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import jwt
import pydantic
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from aion.core import errors
from aion.gateway import auth, keys, ratelimit, settings

SECRET = "s3cret-for-tests-only-32-bytes-long!"
AUD, ISS = "aion", "https://issuer.test"
ACME_KEY = "aion_0123456789ab_" + "k" * 32
RSA = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC = ec.generate_private_key(ec.SECP256R1())


def _jwks(path: Path) -> Path:
    jwks = {
        "keys": [
            {
                **json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(RSA.public_key())),
                "kid": "r1",
                "alg": "RS256",
                "use": "sig",
            },
            {
                **json.loads(jwt.algorithms.ECAlgorithm.to_jwk(EC.public_key())),
                "kid": "e1",
                "alg": "ES256",
                "use": "sig",
            },
        ]
    }
    path.write_text(json.dumps(jwks))
    return path


def _cfg(**kw: object) -> settings.GatewaySettings:
    base: dict[str, object] = {
        "api_keys": [
            settings.ApiKey(
                hash=keys.hash_key(ACME_KEY), tenant="acme", roles=["viewer"], name="ci"
            )
        ],
        "jwt_secret": pydantic.SecretStr(SECRET),
        "jwt_audience": AUD,
        "jwt_issuer": ISS,
    }
    base.update(kw)
    return settings.GatewaySettings(**base)  # type: ignore[arg-type]


def _claims(**claims: object) -> dict[str, object]:
    body: dict[str, object] = {
        "sub": "alice",
        "tenant": "globex",
        "roles": ["user"],
        "aud": AUD,
        "iss": ISS,
        "exp": int(time.time()) + 3600,
    }
    body.update(claims)
    return {k: v for k, v in body.items() if v is not None}


def _token(**claims: object) -> str:
    return jwt.encode(_claims(**claims), SECRET, algorithm="HS256")


async def _auth(cfg: settings.GatewaySettings, token: str) -> auth.Principal:
    return await auth.Authenticator(cfg).authenticate([("authorization", f"Bearer {token}")])


async def test_api_key_maps_to_its_tenant_and_roles() -> None:
    p = await auth.Authenticator(_cfg()).authenticate([("x-api-key", ACME_KEY)])
    assert (p.tenant, p.subject, p.roles, p.key_id) == (
        "acme",
        "ci",
        frozenset({"viewer"}),
        "0123456789ab",
    )
    p.require("viewer")
    with pytest.raises(errors.PermissionDenied, match="'user' role"):
        p.require("user")


async def test_unknown_api_key_is_unauthenticated() -> None:
    with pytest.raises(errors.Unauthenticated, match="unknown API key"):
        await auth.Authenticator(_cfg()).authenticate([("x-api-key", "nope")])
    # The right id with another secret.
    with pytest.raises(errors.Unauthenticated, match="unknown API key"):
        await auth.Authenticator(_cfg()).authenticate(
            [("x-api-key", "aion_0123456789ab_" + "x" * 32)]
        )


def test_plaintext_keys_in_the_settings_are_refused_with_the_fix(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(
        "AION_GATEWAY_API_KEYS", '[{"key": "k1", "tenant": "acme", "roles": ["admin"]}]'
    )
    with pytest.raises(pydantic.ValidationError, match=r"aion\.gateway\.keys hash"):
        settings.GatewaySettings()


def test_duplicate_and_malformed_hashes_are_refused() -> None:
    h = keys.hash_key(ACME_KEY)
    with pytest.raises(pydantic.ValidationError, match="same key twice"):
        settings.GatewaySettings(
            api_keys=[
                settings.ApiKey(hash=h, tenant="a", roles=["user"]),
                settings.ApiKey(hash=keys.hash_key(ACME_KEY), tenant="b", roles=["admin"]),
            ]
        )
    with pytest.raises(pydantic.ValidationError, match="not an API key hash"):
        settings.ApiKey(hash="sha256:abc", tenant="a", roles=["user"])


def test_hash_command_prints_a_hash_that_verifies(capsys: pytest.CaptureFixture[str]) -> None:
    keys.main(["hash", ACME_KEY])
    hashed = capsys.readouterr().out.strip()
    assert keys.verify(ACME_KEY, hashed)
    assert not keys.verify(ACME_KEY + "x", hashed)
    assert ACME_KEY not in hashed
    keys.main(["hash"])
    out = capsys.readouterr()
    assert keys.verify(out.err.strip(), out.out.strip())


async def test_jwt_gives_tenant_subject_and_roles() -> None:
    p = await _auth(_cfg(), _token())
    assert (p.tenant, p.subject) == ("globex", "alice")
    p.require("user")


@pytest.mark.parametrize(
    ("claims", "message"),
    [
        ({"exp": int(time.time()) - 10}, "expired"),
        ({"nbf": int(time.time()) + 600}, "not yet valid"),
        ({"aud": "billing"}, "Audience"),
        ({"aud": None}, "aud"),
        ({"iss": "https://evil.test"}, "(?i)issuer"),
        ({"tenant": ""}, "tenant"),
        ({"roles": "admin"}, "must be a list"),
        ({"roles": 5}, "must be a list"),
    ],
)
async def test_bad_jwts_are_refused_with_the_reason(
    claims: dict[str, object], message: str
) -> None:
    with pytest.raises(errors.Unauthenticated, match=message):
        await _auth(_cfg(), _token(**claims))


async def test_a_token_without_roles_has_no_role() -> None:
    p = await _auth(_cfg(), _token(roles=None))
    assert p.roles == frozenset()
    with pytest.raises(errors.PermissionDenied, match="no role"):
        p.require("viewer")


async def test_jwks_file_verifies_rs256_and_es256_and_refuses_forgeries(tmp_path: Path) -> None:
    cfg = _cfg(jwt_secret=None, jwks_file=str(_jwks(tmp_path / "jwks.json")))
    rs = jwt.encode(_claims(), RSA, algorithm="RS256", headers={"kid": "r1"})
    es = jwt.encode(_claims(sub="bob"), EC, algorithm="ES256", headers={"kid": "e1"})
    assert (await _auth(cfg, rs)).subject == "alice"
    assert (await _auth(cfg, es)).subject == "bob"
    with pytest.raises(errors.Unauthenticated, match="no key 'zz'"):
        await _auth(cfg, jwt.encode(_claims(), RSA, algorithm="RS256", headers={"kid": "zz"}))
    with pytest.raises(errors.Unauthenticated, match="'none' is not accepted"):
        await _auth(cfg, jwt.encode(_claims(), "", algorithm="none"))
    # HS256 "signed" with the RSA public key, the classic algorithm confusion.
    pem = RSA.public_key().public_bytes(
        encoding=__import__(
            "cryptography.hazmat.primitives.serialization", fromlist=["Encoding"]
        ).Encoding.PEM,
        format=__import__(
            "cryptography.hazmat.primitives.serialization", fromlist=["PublicFormat"]
        ).PublicFormat.SubjectPublicKeyInfo,
    )
    import hashlib
    import hmac as hmac_

    header = jwt.utils.base64url_encode(
        json.dumps({"alg": "HS256", "typ": "JWT", "kid": "r1"}).encode()
    )
    body = jwt.utils.base64url_encode(json.dumps(_claims()).encode())
    sig = jwt.utils.base64url_encode(hmac_.new(pem, header + b"." + body, hashlib.sha256).digest())
    with pytest.raises(errors.Unauthenticated, match="'HS256' is not accepted"):
        await _auth(cfg, (header + b"." + body + b"." + sig).decode())


def test_settings_refuse_incoherent_edges() -> None:
    with pytest.raises(pydantic.ValidationError, match="AUDIENCE"):
        settings.GatewaySettings(jwt_secret=pydantic.SecretStr(SECRET))
    with pytest.raises(pydantic.ValidationError, match="at least 32"):
        _cfg(jwt_secret=pydantic.SecretStr("short"))
    with pytest.raises(pydantic.ValidationError, match="development mode"):
        _cfg(allow_anonymous=True)


async def test_anonymous_mode_is_a_user_never_an_admin() -> None:
    anon = await auth.Authenticator(
        settings.GatewaySettings(allow_anonymous=True, anonymous_tenant="dev")
    ).authenticate([])
    assert (anon.tenant, anon.roles) == ("dev", frozenset({"user"}))
    with pytest.raises(errors.PermissionDenied):
        anon.require("admin")


async def test_no_credentials_and_malformed_header() -> None:
    with pytest.raises(errors.Unauthenticated, match="x-api-key"):
        await auth.Authenticator(_cfg()).authenticate([])
    with pytest.raises(errors.Unauthenticated, match="Bearer"):
        await auth.Authenticator(_cfg()).authenticate([("authorization", "Basic abc")])


async def test_failed_authentications_are_limited_per_peer() -> None:
    now = [100.0]
    limiter = ratelimit.RateLimiter(
        ratelimit.MemoryBuckets(clock=lambda: now[0]), ratelimit.Policy(auth_failures_per_min=3)
    )
    for _ in range(3):
        await limiter.check_failures("ipv4:10.0.0.1")
        await limiter.auth_failed("ipv4:10.0.0.1")
    with pytest.raises(errors.ResourceExhausted, match="failed authentications") as info:
        await limiter.check_failures("ipv4:10.0.0.1")
    assert info.value.retry_after_s == pytest.approx(20, rel=0.1)
    await limiter.check_failures("ipv4:10.0.0.2")
    now[0] += 20.0  # one failure's worth refilled
    await limiter.check_failures("ipv4:10.0.0.1")


async def test_rate_limit_refuses_with_the_wait_and_refills() -> None:
    now = [100.0]
    limiter = ratelimit.RateLimiter(
        ratelimit.MemoryBuckets(clock=lambda: now[0]),
        ratelimit.Policy(tenant_rate=2, tenant_burst=2),
    )
    await limiter.take("acme")
    await limiter.take("acme")
    with pytest.raises(errors.ResourceExhausted) as info:
        await limiter.take("acme")
    assert info.value.retry_after_s == pytest.approx(0.5)
    await limiter.take("other")  # tenants have their own buckets
    now[0] += 0.5
    await limiter.take("acme")


async def test_a_key_has_its_own_limit_inside_its_tenants() -> None:
    now = [0.0]
    limiter = ratelimit.RateLimiter(
        ratelimit.MemoryBuckets(clock=lambda: now[0]),
        ratelimit.Policy(tenant_rate=1, tenant_burst=10, key_rate=1, key_burst=1),
    )
    await limiter.take("acme", "k1")
    with pytest.raises(errors.ResourceExhausted, match="API key 'k1'"):
        await limiter.take("acme", "k1")
    await limiter.take("acme", "k2")


async def test_tokens_per_minute_refuse_new_tasks_while_in_debt() -> None:
    now = [0.0]
    limiter = ratelimit.RateLimiter(
        ratelimit.MemoryBuckets(clock=lambda: now[0]), ratelimit.Policy(tokens_per_minute=600)
    )
    await limiter.take("acme", runs_task=True)
    await limiter.spend_tokens("acme", 700)
    with pytest.raises(errors.ResourceExhausted) as info:
        await limiter.take("acme", runs_task=True)
    assert info.value.retry_after_s == pytest.approx(10, rel=0.01)
    await limiter.take("acme")  # calls that run nothing still pass
    now[0] += 11
    await limiter.take("acme", runs_task=True)


async def test_open_streams_are_counted_until_they_end() -> None:
    limiter = ratelimit.RateLimiter(
        ratelimit.MemoryBuckets(), ratelimit.Policy(tenant_streams=2, key_streams=1)
    )
    async with limiter.stream("acme", "k1", 60), limiter.stream("acme", None, 60):
        with pytest.raises(errors.ResourceExhausted, match="open streams"):
            async with limiter.stream("acme", "k2", 60):
                pass
    async with limiter.stream("acme", "k1", 60):
        with pytest.raises(errors.ResourceExhausted):
            async with limiter.stream("acme", "k1", 60):
                pass
