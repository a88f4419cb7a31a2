"""Sliding windows of throughput and latency."""

from __future__ import annotations

import pytest

from aion.executor import stats


def test_rate_is_events_per_second_over_the_window() -> None:
    window = stats.RateWindow(window_s=10, now=0.0)
    for t in range(20):
        window.add(5, now=100.0 + t)
    assert window.rate(now=119.5) == pytest.approx(5.0, rel=0.11)


def test_a_young_window_divides_by_its_age() -> None:
    window = stats.RateWindow(window_s=30, now=100.0)
    window.add(20, now=101.0)
    window.add(20, now=102.0)
    assert window.rate(now=104.0) == pytest.approx(10.0)


def test_old_events_leave_the_window() -> None:
    window = stats.RateWindow(window_s=10, now=0.0)
    window.add(100, now=50.0)
    assert window.rate(now=55.0) > 0
    assert window.rate(now=70.0) == 0


def test_p95_uses_the_nearest_rank() -> None:
    window = stats.LatencyWindow(window_s=60)
    for i in range(1, 101):
        window.add(i / 100, now=10.0)
    assert window.percentile(0.95, now=10.0) == pytest.approx(0.95)
    assert window.percentile(1.0, now=10.0) == pytest.approx(1.0)


def test_an_empty_latency_window_has_no_percentile() -> None:
    window = stats.LatencyWindow(window_s=60)
    assert window.percentile(0.95, now=0.0) is None
    window.add(2.0, now=0.0)
    assert window.percentile(0.95, now=30.0) == 2.0
    assert window.percentile(0.95, now=61.0) is None


def test_the_latency_window_keeps_the_latest_samples() -> None:
    window = stats.LatencyWindow(window_s=60, max_samples=3)
    for seconds in (9.0, 1.0, 1.0, 1.0):
        window.add(seconds, now=0.0)
    assert window.percentile(1.0, now=0.0) == 1.0
