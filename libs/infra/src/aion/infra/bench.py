"""What the ``make bench-*`` scripts share: their knobs and their percentiles."""

from __future__ import annotations

import math
import os


def knob(prefix: str, name: str, default: int) -> int:
    """The positive integer ``BENCH_<prefix>_<name>`` (else ``default``); exits naming it
    when it is not positive."""
    variable = f"BENCH_{prefix}_{name}"
    value = int(os.environ.get(variable, default))
    if value <= 0:
        raise SystemExit(f"{variable} must be positive, got {value}")
    return value


def percentile(values: list[float], q: float) -> float:
    """The nearest-rank percentile ``q`` (0..100) of ``values``."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]
