"""A bounded map whose entries are trusted for a fixed time (``ttl_s``) after they are put.

For records another service owns and a hot path reads on every call (an API key
verified against its hash, an agent's record): a hit costs no round trip, and a
change made elsewhere is seen at most ``ttl_s`` later. A change made through this
process calls ``forget`` and is seen at once. ``ttl_s`` 0 keeps nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class TtlCache(Generic[K, V]):
    """Entries kept ``ttl_s`` seconds; at ``max_entries`` the map starts over (a burst of
    new keys never grows it without bound, and the next calls fill it again)."""

    def __init__(
        self,
        ttl_s: float,
        *,
        max_entries: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ttl = ttl_s
        self._max = max_entries
        self._clock = clock
        self._entries: dict[K, tuple[float, V]] = {}

    def get(self, key: K) -> V | None:
        """The value put for ``key`` less than ``ttl_s`` ago, else None."""
        hit = self._entries.get(key)
        if hit is None:
            return None
        if hit[0] <= self._clock():
            del self._entries[key]
            return None
        return hit[1]

    def put(self, key: K, value: V) -> None:
        """Keep ``value`` for ``key`` for ``ttl_s``."""
        if self._ttl <= 0:
            return
        if len(self._entries) >= self._max and key not in self._entries:
            self._entries.clear()
        self._entries[key] = (self._clock() + self._ttl, value)

    def forget(self, which: Callable[[K, V], bool]) -> int:
        """Drop every entry ``which(key, value)`` is true of; how many were dropped."""
        gone = [k for k, (_, v) in self._entries.items() if which(k, v)]
        for key in gone:
            del self._entries[key]
        return len(gone)

    def __len__(self) -> int:
        return len(self._entries)
