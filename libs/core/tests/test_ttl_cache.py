"""The TTL map that keeps other services' records on hot paths (API keys, agents)."""

from __future__ import annotations

from aion.core import ttl_cache


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_an_entry_is_kept_for_ttl_s_and_not_a_moment_longer() -> None:
    clock = Clock()
    cache: ttl_cache.TtlCache[str, int] = ttl_cache.TtlCache(2.0, clock=clock)
    cache.put("a", 1)
    clock.now += 1.99
    assert cache.get("a") == 1
    clock.now += 0.01
    assert cache.get("a") is None
    assert len(cache) == 0  # an expired entry is dropped when read


def test_a_ttl_of_zero_keeps_nothing() -> None:
    cache: ttl_cache.TtlCache[str, int] = ttl_cache.TtlCache(0)
    cache.put("a", 1)
    assert cache.get("a") is None


def test_forget_drops_the_entries_it_matches_only() -> None:
    cache: ttl_cache.TtlCache[tuple[str, str], int] = ttl_cache.TtlCache(60)
    cache.put(("acme", "x"), 1)
    cache.put(("acme", "y"), 2)
    cache.put(("globex", "x"), 3)
    assert cache.forget(lambda key, _: key[0] == "acme") == 2
    assert cache.get(("acme", "x")) is None
    assert cache.get(("globex", "x")) == 3


def test_a_full_map_starts_over_instead_of_growing() -> None:
    cache: ttl_cache.TtlCache[int, int] = ttl_cache.TtlCache(60, max_entries=3)
    for i in range(3):
        cache.put(i, i)
    cache.put(0, 10)  # a key it holds: replaced, nothing dropped
    assert len(cache) == 3
    cache.put(3, 3)
    assert len(cache) == 1
    assert cache.get(3) == 3
