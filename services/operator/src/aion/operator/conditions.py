"""Status conditions, merged as Kubernetes' ``meta.SetStatusCondition`` merges them.

A condition keeps its ``lastTransitionTime`` while its status stays the same,
so ``kubectl describe`` shows when something last changed, not when the
operator last looked.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence
from typing import Any, Literal

Status = Literal["True", "False", "Unknown"]


def timestamp(now: datetime.datetime) -> str:
    """``now`` as the RFC 3339 UTC text Kubernetes stores (second precision)."""
    return now.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def set_condition(
    conditions: Sequence[Mapping[str, Any]],
    kind: str,
    *,
    status: Status,
    reason: str,
    message: str,
    observed_generation: int | None,
    now: datetime.datetime,
) -> list[dict[str, Any]]:
    """``conditions`` with the one of type ``kind`` added or updated; the others unchanged."""
    previous = find(conditions, kind)
    if previous is None or previous.get("status") != status:
        since = timestamp(now)
    else:
        since = previous.get("lastTransitionTime") or timestamp(now)
    condition: dict[str, Any] = {
        "type": kind,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": since,
    }
    if observed_generation is not None:
        condition["observedGeneration"] = observed_generation
    merged = [dict(c) for c in conditions if c.get("type") != kind]
    index = next((i for i, c in enumerate(conditions) if c.get("type") == kind), len(merged))
    merged.insert(index, condition)
    return merged


def find(conditions: Sequence[Mapping[str, Any]], kind: str) -> Mapping[str, Any] | None:
    """The condition of type ``kind``, or None."""
    return next((c for c in conditions if c.get("type") == kind), None)
