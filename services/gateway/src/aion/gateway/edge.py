"""The gateway's edge, assembled from its settings: who may call (keys, JWTs) and how often.

With ``postgres_dsn`` the key store and the rate limits every replica shares
live in Postgres (migrated at start); without it only configured keys work
and the limits are this replica's own.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from aion.core import settings as core_settings
from aion.gateway import auth, db, keys, ratelimit, servicers
from aion.gateway import settings as gateway_settings


def policy(cfg: gateway_settings.GatewaySettings) -> ratelimit.Policy:
    """The configured limits."""
    return ratelimit.Policy(
        tenant_rate=cfg.rate_per_s,
        tenant_burst=cfg.rate_burst,
        key_rate=cfg.key_rate_per_s,
        key_burst=cfg.key_rate_burst,
        tenant_streams=cfg.max_streams,
        key_streams=cfg.key_max_streams,
        tokens_per_minute=cfg.tokens_per_minute,
        auth_failures_per_min=cfg.auth_failures_per_min,
    )


@contextlib.asynccontextmanager
async def guard(
    cfg: gateway_settings.GatewaySettings,
) -> AsyncIterator[tuple[servicers.Guard, keys.KeyStore | None]]:
    """The Guard of every public call, and the key store (None without a database)."""
    async with contextlib.AsyncExitStack() as stack:
        store: keys.KeyStore | None = None
        buckets: ratelimit.Buckets = ratelimit.MemoryBuckets()
        if cfg.postgres_dsn:
            await db.migrate(cfg.postgres_dsn)
            pool = await stack.enter_async_context(db.pool(cfg.postgres_dsn))
            store = keys.KeyStore(pool)
            buckets = ratelimit.PostgresBuckets(pool)
        try:
            authenticator = auth.Authenticator(cfg, store)
        except ValueError as exc:
            raise core_settings.SettingsError(f"gateway settings: {exc}") from exc
        yield (
            servicers.Guard(
                authenticator=authenticator,
                limiter=ratelimit.RateLimiter(buckets, policy(cfg)),
                max_idempotency_key_chars=cfg.max_idempotency_key_chars,
            ),
            store,
        )
