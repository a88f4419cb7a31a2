"""Rate limits: calls per API key and per tenant, open streams, and tokens per minute.

Each limit is a token bucket (or, for streams, a count of open ones). With a
Postgres DSN the buckets live in Postgres (``gateway_take`` locks the rows of
one decision, so every gateway replica draws from the same buckets); without
one they live in this process (one replica, or limits per replica).

A refused call gets RESOURCE_EXHAUSTED with google.rpc RetryInfo (the wait).
Tokens per minute are charged after the fact (as a stream's tokens arrive, or
from a finished synchronous task's usage) or, for an asynchronous task, its
ceiling when it is accepted; a tenant in debt has its next task refused until
the bucket refills.
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence

from aion.core import errors
from aion.gateway import db


@dataclasses.dataclass(frozen=True)
class Draw:
    """Take ``cost`` from bucket ``key`` (refilled at ``rate``/s up to ``burst``); a cost of
    0 only asks that the bucket is not in debt."""

    key: str
    rate: float
    burst: float
    cost: float
    what: str


class Buckets(abc.ABC):
    """Where the buckets and open streams are kept."""

    @abc.abstractmethod
    async def take(self, draws: Sequence[Draw]) -> float:
        """Take every draw or none: 0.0 when taken, else the seconds to wait."""

    @abc.abstractmethod
    async def spend(self, draw: Draw) -> None:
        """Charge ``draw.cost`` whatever the level (down to -burst)."""

    @abc.abstractmethod
    async def open_stream(self, scopes: Sequence[tuple[str, int]], ttl_s: float) -> str | None:
        """Count a new stream in every scope under its limit (an id), or None when one is full."""

    @abc.abstractmethod
    async def close_stream(self, stream_id: str) -> None:
        """The stream ended."""


@dataclasses.dataclass
class _Bucket:
    tokens: float
    updated: float


class MemoryBuckets(Buckets):
    """This process's buckets."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}
        self._streams: dict[str, tuple[tuple[str, ...], float]] = {}

    def _level(self, draw: Draw, now: float) -> float:
        bucket = self._buckets.get(draw.key)
        if bucket is None:
            return draw.burst
        return min(draw.burst, bucket.tokens + max(0.0, now - bucket.updated) * draw.rate)

    async def take(self, draws: Sequence[Draw]) -> float:
        now = self._clock()
        levels = [self._level(d, now) for d in draws]
        wait = 0.0
        for d, have in zip(draws, levels, strict=True):
            if not ((d.cost > 0 and have >= d.cost) or (d.cost == 0 and have > 0)):
                wait = max(wait, (max(d.cost, 1e-3) - have) / d.rate)
        for d, have in zip(draws, levels, strict=True):
            self._buckets[d.key] = _Bucket(have - (d.cost if wait == 0 else 0), now)
        return wait

    async def spend(self, draw: Draw) -> None:
        now = self._clock()
        self._buckets[draw.key] = _Bucket(max(-draw.burst, self._level(draw, now) - draw.cost), now)

    async def open_stream(self, scopes: Sequence[tuple[str, int]], ttl_s: float) -> str | None:
        now = self._clock()
        self._streams = {k: v for k, v in self._streams.items() if v[1] > now}
        for scope, limit in scopes:
            if sum(scope in s for s, _ in self._streams.values()) >= limit:
                return None
        stream_id = uuid.uuid4().hex
        self._streams[stream_id] = (tuple(s for s, _ in scopes), now + ttl_s)
        return stream_id

    async def close_stream(self, stream_id: str) -> None:
        self._streams.pop(stream_id, None)


class PostgresBuckets(Buckets):
    """Buckets every replica shares, in the gateway's tables (see its migrations)."""

    def __init__(self, pool: db.Pool) -> None:
        self._pool = pool

    async def take(self, draws: Sequence[Draw]) -> float:
        with db.reachable():
            async with self._pool.connection() as conn:
                cur = await conn.execute(
                    "SELECT gateway_take(%s, %s, %s, %s) AS wait",
                    (
                        [d.key for d in draws],
                        [float(d.rate) for d in draws],
                        [float(d.burst) for d in draws],
                        [float(d.cost) for d in draws],
                    ),
                )
                row = await cur.fetchone()
        assert row is not None
        return float(row["wait"])

    async def spend(self, draw: Draw) -> None:
        with db.reachable():
            async with self._pool.connection() as conn:
                await conn.execute(
                    "SELECT gateway_spend(%s, %s, %s, %s)",
                    (draw.key, float(draw.rate), float(draw.burst), float(draw.cost)),
                )

    async def open_stream(self, scopes: Sequence[tuple[str, int]], ttl_s: float) -> str | None:
        stream_id = uuid.uuid4()
        with db.reachable():
            async with self._pool.connection() as conn, conn.transaction():
                for scope, _ in sorted(scopes):
                    # One opener per scope at a time, so two replicas cannot both take the
                    # last place.
                    await conn.execute(
                        "SELECT pg_advisory_xact_lock(hashtext(%s))", ("gateway-stream:" + scope,)
                    )
                for scope, limit in scopes:
                    cur = await conn.execute(
                        "SELECT count(*) AS n FROM gateway_open_streams "
                        "WHERE scope = %s AND expires_at > now()",
                        (scope,),
                    )
                    row = await cur.fetchone()
                    if row is not None and int(row["n"]) >= limit:
                        return None
                await conn.execute(
                    "DELETE FROM gateway_open_streams WHERE expires_at <= now() "
                    "AND scope = ANY(%s)",
                    ([s for s, _ in scopes],),
                )
                for scope, _ in scopes:
                    await conn.execute(
                        "INSERT INTO gateway_open_streams (id, scope, expires_at) VALUES "
                        "(%s, %s, now() + make_interval(secs => %s))",
                        (stream_id, scope, ttl_s),
                    )
        return str(stream_id)

    async def close_stream(self, stream_id: str) -> None:
        with db.reachable():
            async with self._pool.connection() as conn:
                await conn.execute(
                    "DELETE FROM gateway_open_streams WHERE id = %s", (uuid.UUID(stream_id),)
                )


@dataclasses.dataclass(frozen=True)
class Policy:
    """The configured limits."""

    tenant_rate: float = 50.0
    tenant_burst: int = 100
    key_rate: float = 50.0
    key_burst: int = 100
    tenant_streams: int = 64
    key_streams: int = 32
    tokens_per_minute: int = 200_000
    auth_failures_per_min: int = 30


class RateLimiter:
    """Applies a Policy to calls, streams and tokens over some Buckets."""

    def __init__(self, buckets: Buckets, policy: Policy) -> None:
        self._buckets = buckets
        self._policy = policy

    def _tokens(self, tenant: str, cost: float) -> Draw:
        tpm = float(self._policy.tokens_per_minute)
        return Draw(f"tpm:{tenant}", tpm / 60.0, tpm, cost, "tokens per minute")

    async def take(
        self, tenant: str, key_id: str | None = None, *, runs_task: bool = False
    ) -> None:
        """Count one call of ``tenant`` (and of its API key), or raise ResourceExhausted with
        the wait. A call that runs a task also needs the tenant's tokens not to be in debt."""
        p = self._policy
        draws = [
            Draw(
                f"call:t:{tenant}",
                p.tenant_rate,
                p.tenant_burst,
                1.0,
                f"tenant '{tenant}' is over its rate limit of {p.tenant_rate:g} calls/s",
            )
        ]
        if key_id is not None:
            draws.append(
                Draw(
                    f"call:k:{key_id}",
                    p.key_rate,
                    p.key_burst,
                    1.0,
                    f"API key '{key_id}' is over its rate limit of {p.key_rate:g} calls/s",
                )
            )
        if runs_task:
            draws.append(self._tokens(tenant, 0.0))
        wait = await self._buckets.take(draws)
        if wait > 0:
            raise errors.ResourceExhausted(
                f"{self._why(draws)}; retry in {wait:.2f}s", retry_after_s=wait
            )

    async def check_tokens(self, tenant: str) -> None:
        """Raise ResourceExhausted while ``tenant``'s tokens per minute are in debt (for a
        call counted already, at an HTTP door, that now runs a task)."""
        draw = self._tokens(tenant, 0.0)
        wait = await self._buckets.take([draw])
        if wait > 0:
            raise errors.ResourceExhausted(
                f"tenant '{tenant}' is over its {self._policy.tokens_per_minute} tokens per "
                f"minute; retry in {wait:.2f}s",
                retry_after_s=wait,
            )

    def _why(self, draws: Sequence[Draw]) -> str:
        if len(draws) == 1:
            return draws[0].what
        names = ", ".join(d.what.split(" is over ")[0] for d in draws)
        return (
            f"over a rate limit ({names}: calls/s per tenant and per key, "
            f"tokens per minute per tenant)"
        )

    def _failures(self, peer: str, cost: float) -> Draw:
        per_min = float(self._policy.auth_failures_per_min)
        return Draw(
            f"authfail:{peer}",
            per_min / 60.0,
            per_min,
            cost,
            "too many failed authentications from this address",
        )

    async def check_failures(self, peer: str) -> None:
        """Raise ResourceExhausted when ``peer`` (an address) failed to authenticate
        ``auth_failures_per_min`` times lately, before its credentials are looked at. Shared
        by every replica when the buckets are."""
        draw = self._failures(peer, 0.0)
        wait = await self._buckets.take([draw])
        if wait > 0:
            # Each later failure costs a full token: say when one is back.
            wait = max(wait, 60.0 / self._policy.auth_failures_per_min)
            raise errors.ResourceExhausted(f"{draw.what}; retry in {wait:.0f}s", retry_after_s=wait)

    async def auth_failed(self, peer: str) -> None:
        """Count one failed authentication of ``peer``."""
        await self._buckets.spend(self._failures(peer, 1.0))

    async def spend_tokens(self, tenant: str, tokens: int) -> None:
        """Charge ``tokens`` generated for ``tenant``."""
        if tokens > 0:
            await self._buckets.spend(self._tokens(tenant, float(tokens)))

    @contextlib.asynccontextmanager
    async def stream(
        self, tenant: str, key_id: str | None, deadline_s: float
    ) -> AsyncIterator[None]:
        """Hold a place among the open streams of ``tenant`` (and its key) while inside; a
        replica that dies frees its places at the stream's deadline."""
        p = self._policy
        scopes = [(f"t:{tenant}", p.tenant_streams)]
        if key_id is not None:
            scopes.append((f"k:{key_id}", p.key_streams))
        stream_id = await self._buckets.open_stream(scopes, deadline_s + 5.0)
        if stream_id is None:
            raise errors.ResourceExhausted(
                f"too many open streams (at most {p.tenant_streams} per tenant and "
                f"{p.key_streams} per API key); retry when one ends",
                retry_after_s=1.0,
            )
        try:
            yield
        finally:
            await self._buckets.close_stream(stream_id)
