"""The gateway's shared rate limiter: decisions/s against the local Postgres.

Two limiters (two replicas' pools) draw from the same buckets through
``gateway_take`` on a database of their own, with BENCH_LIMITS_CONCURRENCY
callers each, for BENCH_LIMITS_SECONDS: one hot tenant (every decision locks
the same two rows: the tenant's bucket and one key's) and, separately, many
tenants. Prints one JSON object: decisions/s, and the p50/p99 latency of one.

Knobs (environment): BENCH_LIMITS_SECONDS (10), BENCH_LIMITS_CONCURRENCY (8).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import statistics
import time
import uuid

import psycopg
from psycopg import sql

from aion.core import errors
from aion.gateway import db, ratelimit
from aion.infra.paths import Layout
from aion.infra.registry import make


async def _run(dsn: str, seconds: float, concurrency: int, tenants: int) -> dict[str, float]:
    policy = ratelimit.Policy(tenant_rate=1e9, tenant_burst=10**9, key_rate=1e9, key_burst=10**9)
    latencies: list[float] = []
    async with db.pool(dsn, max_size=concurrency) as pa, db.pool(dsn, max_size=concurrency) as pb:
        limiters = [ratelimit.RateLimiter(ratelimit.PostgresBuckets(p), policy) for p in (pa, pb)]
        stop = time.monotonic() + seconds

        async def caller(i: int) -> None:
            limiter = limiters[i % 2]
            n = 0
            while time.monotonic() < stop:
                tenant = f"t{(i * 7919 + n) % tenants}"
                n += 1
                t0 = time.perf_counter()
                with contextlib.suppress(errors.ResourceExhausted):
                    await limiter.take(tenant, f"k-{tenant}")
                latencies.append(time.perf_counter() - t0)

        start = time.monotonic()
        await asyncio.gather(*(caller(i) for i in range(2 * concurrency)))
        elapsed = time.monotonic() - start
    latencies.sort()
    return {
        "decisions_per_s": round(len(latencies) / elapsed),
        "p50_ms": round(statistics.median(latencies) * 1000, 2),
        "p99_ms": round(latencies[int(len(latencies) * 0.99)] * 1000, 2),
    }


def main() -> None:
    seconds = float(os.environ.get("BENCH_LIMITS_SECONDS", "10"))
    concurrency = int(os.environ.get("BENCH_LIMITS_CONCURRENCY", "8"))
    postgres = make("postgres", Layout.from_env())
    postgres.up()
    admin = postgres.endpoints()["AION_POSTGRES_DSN"]
    name = f"bench_limits_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    dsn = admin.rsplit("/", 1)[0] + "/" + name
    try:
        asyncio.run(db.migrate(dsn))
        report = {
            "replicas": 2,
            "callers_per_replica": concurrency,
            "seconds": seconds,
            "one_tenant": asyncio.run(_run(dsn, seconds, concurrency, 1)),
            "1000_tenants": asyncio.run(_run(dsn, seconds, concurrency, 1000)),
        }
        print(json.dumps(report))
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
        postgres.detach()


if __name__ == "__main__":
    main()
