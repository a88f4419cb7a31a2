"""Who is calling: API keys (``x-api-key``) and JWTs (``authorization: Bearer``), and roles.

Roles are ordered: ``viewer`` reads (Get, List, Search), ``user`` also runs
and cancels tasks, ``admin`` also changes knowledge bases.
"""

from __future__ import annotations

import dataclasses
import hmac
import logging
from collections.abc import Iterable
from typing import Any

import jwt

from aion.core import errors
from aion.gateway import settings as gateway_settings

log = logging.getLogger(__name__)

_RANK = {"viewer": 0, "user": 1, "admin": 2}


@dataclasses.dataclass(frozen=True)
class Principal:
    """An authenticated caller."""

    tenant: str
    subject: str
    roles: frozenset[str]

    def require(self, role: gateway_settings.Role) -> None:
        """Raise PermissionDenied unless the caller holds ``role`` or a higher one."""
        if not any(_RANK.get(r, -1) >= _RANK[role] for r in self.roles):
            raise errors.PermissionDenied(
                f"this call needs the '{role}' role; {self.subject} has "
                f"{sorted(self.roles) or 'none'}")


class Authenticator:
    """Turns call metadata into a Principal."""

    def __init__(self, cfg: gateway_settings.GatewaySettings) -> None:
        self._cfg = cfg
        self._keys = [(k.key.get_secret_value().encode(), k) for k in cfg.api_keys or ()
                      if k.key.get_secret_value()]
        if cfg.allow_anonymous:
            log.warning("anonymous calls are allowed (tenant %r); do not run this in production",
                        cfg.anonymous_tenant)

    def authenticate(self, metadata: Iterable[Any]) -> Principal:
        """The caller, or Unauthenticated saying what is wrong with the credentials."""
        md = {str(k).lower(): v.decode() if isinstance(v, bytes) else str(v) for k, v in metadata}
        if "x-api-key" in md:
            return self._api_key(md["x-api-key"])
        auth = md.get("authorization", "")
        if auth:
            scheme, _, token = auth.partition(" ")
            if scheme.lower() != "bearer" or not token:
                raise errors.Unauthenticated("authorization must be 'Bearer <token>'")
            return self._jwt(token.strip())
        if self._cfg.allow_anonymous:
            return Principal(self._cfg.anonymous_tenant, "anonymous",
                             frozenset({"admin"}))
        raise errors.Unauthenticated(
            "no credentials: send an API key in 'x-api-key' or a JWT in "
            "'authorization: Bearer' (aionctl: --api-key or --token)")

    def _api_key(self, presented: str) -> Principal:
        given = presented.encode()
        match = None
        for secret, entry in self._keys:
            # Compare against every key so timing does not reveal which prefix matched.
            if hmac.compare_digest(secret, given):
                match = entry
        if match is None:
            raise errors.Unauthenticated("unknown API key")
        return Principal(match.tenant, match.name or f"api-key:{match.tenant}",
                         frozenset(match.roles))

    def _jwt(self, token: str) -> Principal:
        if self._cfg.jwt_secret is None:
            raise errors.Unauthenticated("this gateway does not accept JWTs; use an API key")
        try:
            claims = jwt.decode(
                token, self._cfg.jwt_secret.get_secret_value(), algorithms=["HS256"],
                audience=self._cfg.jwt_audience, issuer=self._cfg.jwt_issuer,
                options={"require": ["exp", "sub"],
                         "verify_aud": self._cfg.jwt_audience is not None})
        except jwt.PyJWTError as exc:
            raise errors.Unauthenticated(f"invalid token: {exc}") from None
        tenant = claims.get(self._cfg.jwt_tenant_claim)
        if not isinstance(tenant, str) or not tenant:
            raise errors.Unauthenticated(
                f"the token has no '{self._cfg.jwt_tenant_claim}' claim naming the tenant")
        roles = claims.get(self._cfg.jwt_roles_claim, ["user"])
        if isinstance(roles, str):
            roles = [roles]
        return Principal(tenant, str(claims["sub"]), frozenset(str(r) for r in roles))
