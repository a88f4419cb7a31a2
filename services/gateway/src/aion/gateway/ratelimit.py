"""Per-tenant rate limits: a token bucket each, refusing with a retry delay."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

from aion.core import errors


@dataclasses.dataclass
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """``rate`` calls a second per tenant, with bursts up to ``burst``."""

    def __init__(self, *, rate: float, burst: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}

    def take(self, tenant: str) -> None:
        """Spend one call of ``tenant``'s budget, or raise ResourceExhausted with the wait."""
        now = self._clock()
        bucket = self._buckets.setdefault(tenant, _Bucket(self._burst, now))
        bucket.tokens = min(self._burst, bucket.tokens + (now - bucket.updated) * self._rate)
        bucket.updated = now
        if bucket.tokens < 1:
            wait = (1 - bucket.tokens) / self._rate
            raise errors.ResourceExhausted(
                f"tenant '{tenant}' is over its rate limit of {self._rate:g} calls/s; "
                f"retry in {wait:.2f}s", retry_after_s=wait)
        bucket.tokens -= 1
