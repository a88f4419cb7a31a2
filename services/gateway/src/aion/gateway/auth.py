"""Who is calling: API keys (``x-api-key``) and JWTs (``authorization: Bearer``), and roles.

Roles are ordered: ``viewer`` reads (Get, List, Search), ``user`` also runs
and cancels tasks, ``admin`` also changes agents, knowledge bases and keys.
A caller without a role may do nothing.

API keys are verified against their hash (``aion.gateway.keys``): the
configured bootstrap keys first, then the key store in Postgres; a verified
key is trusted for ``key_cache_s``. JWTs are verified against a JWKS (a file
or a URL, cached, refetched when a token names a key id it does not know)
with RS256 or ES256, or with a configured secret (32 bytes at least) with
HS256; ``exp``, ``sub``, ``aud`` and ``iss`` are required. Anonymous mode (dev
only, never with keys or JWTs) makes a credential-less caller a ``user``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import pathlib
import threading
from collections.abc import Iterable
from typing import Any

import jwt

from aion.core import errors
from aion.gateway import keys
from aion.gateway import settings as gateway_settings

log = logging.getLogger(__name__)

_RANK = {"viewer": 0, "user": 1, "admin": 2}
_ASYMMETRIC = ["RS256", "ES256"]


@dataclasses.dataclass(frozen=True)
class Principal:
    """An authenticated caller; ``key_id`` is set for API keys (their own rate limits)."""

    tenant: str
    subject: str
    roles: frozenset[str]
    key_id: str | None = None

    def require(self, role: gateway_settings.Role) -> None:
        """Raise PermissionDenied unless the caller holds ``role`` or a higher one."""
        if not any(_RANK.get(r, -1) >= _RANK[role] for r in self.roles):
            raise errors.PermissionDenied(
                f"this call needs the '{role}' role; {self.subject} has "
                f"{sorted(self.roles) or 'no role'}"
            )


class _JwksFile:
    """The keys of a JWKS file, read again when a token names a key id it lacks."""

    def __init__(self, path: str) -> None:
        self._path = pathlib.Path(path)
        self._lock = threading.Lock()
        self._keys = self._read()

    def _read(self) -> dict[str, jwt.PyJWK]:
        try:
            data = json.loads(self._path.read_text())
            found = jwt.PyJWKSet.from_dict(data).keys
        except (OSError, ValueError, jwt.PyJWTError) as exc:
            raise ValueError(f"cannot read the JWKS file {self._path}: {exc}") from exc
        return {str(k.key_id): k for k in found}

    def key(self, kid: str) -> jwt.PyJWK:
        with self._lock:
            if kid not in self._keys:
                self._keys = self._read()
            if kid not in self._keys:
                raise jwt.PyJWKClientError(f"no key '{kid}' in the JWKS")
            return self._keys[kid]


class Authenticator:
    """Turns call metadata into a Principal."""

    def __init__(
        self, cfg: gateway_settings.GatewaySettings, store: keys.KeyStore | None = None
    ) -> None:
        self._cfg = cfg
        self._store = store
        self._cache = keys.VerifiedCache(cfg.key_cache_s)
        self._configured: dict[str, tuple[str, gateway_settings.ApiKey]] = {}
        for entry in cfg.api_keys or ():
            key_id = keys.hash_id(entry.hash)
            if key_id in self._configured:
                raise ValueError(f"AION_GATEWAY_API_KEYS has the same key twice ({key_id})")
            self._configured[key_id] = (entry.hash, entry)
        self._jwks_file = _JwksFile(cfg.jwks_file) if cfg.jwks_file else None
        self._jwks_url = (
            jwt.PyJWKClient(
                cfg.jwks_url,
                cache_keys=True,
                lifespan=cfg.jwks_cache_s,
                timeout=5,
                cooldown_duration=cfg.jwks_refresh_cooldown_s,
            )
            if cfg.jwks_url
            else None
        )
        if cfg.allow_anonymous:
            log.warning(
                "anonymous calls are allowed as 'user' of tenant %r; do not run this in production",
                cfg.anonymous_tenant,
            )

    def forget(self, key_id: str) -> None:
        """A key was revoked: stop trusting its cached verification here."""
        self._cache.forget(key_id)

    async def authenticate(self, metadata: Iterable[Any]) -> Principal:
        """The caller, or Unauthenticated saying what is wrong with the credentials."""
        md = {str(k).lower(): v.decode() if isinstance(v, bytes) else str(v) for k, v in metadata}
        if "x-api-key" in md:
            return await self._api_key(md["x-api-key"])
        auth = md.get("authorization", "")
        if auth:
            scheme, _, token = auth.partition(" ")
            if scheme.lower() != "bearer" or not token:
                raise errors.Unauthenticated("authorization must be 'Bearer <token>'")
            return await self._jwt(token.strip())
        if self._cfg.allow_anonymous:
            return Principal(self._cfg.anonymous_tenant, "anonymous", frozenset({"user"}))
        raise errors.Unauthenticated(
            "no credentials: send an API key in 'x-api-key' or a JWT in "
            "'authorization: Bearer' (aionctl: --api-key or --token)"
        )

    async def _api_key(self, presented: str) -> Principal:
        record = self._cache.get(presented)
        if record is None:
            record = await self._verify_key(presented)
            if record is None:
                raise errors.Unauthenticated("unknown API key (or a revoked one)")
            self._cache.put(presented, record)
        return Principal(
            record.tenant,
            record.name or f"api-key:{record.id}",
            frozenset(record.roles),
            key_id=record.id,
        )

    async def _verify_key(self, presented: str) -> keys.KeyRecord | None:
        configured = self._configured.get(keys.lookup_id(presented))
        if configured is not None:
            hashed, entry = configured
            if await asyncio.to_thread(keys.verify, presented, hashed):
                return keys.KeyRecord(
                    keys.hash_id(hashed), entry.tenant, entry.name, tuple(entry.roles)
                )
            return None
        if self._store is None:
            return None
        return await self._store.find(presented)

    async def _jwt(self, token: str) -> Principal:
        cfg = self._cfg
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise errors.Unauthenticated(f"invalid token: {exc}") from None
        alg = header.get("alg")
        key: Any
        if alg == "HS256" and cfg.jwt_secret is not None:
            key, algorithms = cfg.jwt_secret.get_secret_value(), ["HS256"]
        elif alg in _ASYMMETRIC and (self._jwks_file or self._jwks_url):
            kid = header.get("kid")
            if not isinstance(kid, str) or not kid:
                raise errors.Unauthenticated("invalid token: its header names no key ('kid')")
            try:
                key = await self._signing_key(kid)
            except jwt.PyJWKClientError as exc:
                raise errors.Unauthenticated(f"invalid token: {exc}") from None
            algorithms = [alg]
        else:
            accepted = ([*_ASYMMETRIC] if (self._jwks_file or self._jwks_url) else []) + (
                ["HS256"] if cfg.jwt_secret is not None else []
            )
            if not accepted:
                raise errors.Unauthenticated("this gateway does not accept JWTs; use an API key")
            raise errors.Unauthenticated(
                f"invalid token: algorithm {alg!r} is not accepted (accepted: {accepted})"
            )
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=algorithms,
                audience=cfg.jwt_audience,
                issuer=cfg.jwt_issuer,
                options={"require": ["exp", "sub", "aud", "iss"], "verify_aud": True},
            )
        except jwt.PyJWTError as exc:
            raise errors.Unauthenticated(f"invalid token: {exc}") from None
        tenant = claims.get(cfg.jwt_tenant_claim)
        if not isinstance(tenant, str) or not tenant:
            raise errors.Unauthenticated(
                f"the token has no '{cfg.jwt_tenant_claim}' claim naming the tenant"
            )
        roles = claims.get(cfg.jwt_roles_claim, [])
        if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
            raise errors.Unauthenticated(
                f"the token's '{cfg.jwt_roles_claim}' claim must be a list of role names "
                f"(viewer, user, admin), not {type(roles).__name__}"
            )
        return Principal(tenant, str(claims["sub"]), frozenset(roles))

    async def _signing_key(self, kid: str) -> jwt.PyJWK:
        if self._jwks_file is not None:
            return self._jwks_file.key(kid)
        assert self._jwks_url is not None
        client = self._jwks_url
        # PyJWKClient fetches over urllib (blocking): off the event loop. It caches the
        # set, and refetches it when ``kid`` is not in the cached one.
        return await asyncio.to_thread(client.get_signing_key, kid)
