"""Executor pods the scheduler cannot place: how long they have waited, and why (pure).

The scheduler marks such a pod's ``PodScheduled`` condition False with reason
``Unschedulable`` and a message naming what no node offered ("0/8 nodes are
available: 4 Insufficient nvidia.com/gpu, ..."). The condition's
``lastTransitionTime`` says since when. Pods being deleted do not count: a
rollout away from a pool deletes them.
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Iterable, Mapping
from typing import Any

UNSCHEDULABLE = "Unschedulable"


@dataclasses.dataclass(frozen=True)
class Stuck:
    """The longest-waiting unschedulable pod: its name, seconds waited, the scheduler's words."""

    pod: str
    seconds: float
    message: str


def _since(text: str | None, now: datetime.datetime) -> float:
    if not text:
        return 0.0
    when = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    return max(0.0, (now - when).total_seconds())


def unschedulable(pods: Iterable[Mapping[str, Any]], *,
                  now: datetime.datetime) -> Stuck | None:
    """The pod of ``pods`` that has been unschedulable longest, or None when none is."""
    found: list[Stuck] = []
    for pod in pods:
        meta = pod.get("metadata") or {}
        status = pod.get("status") or {}
        if meta.get("deletionTimestamp") or (pod.get("spec") or {}).get("nodeName"):
            continue
        for cond in status.get("conditions") or []:
            if (cond.get("type") == "PodScheduled" and cond.get("status") == "False"
                    and cond.get("reason") == UNSCHEDULABLE):
                found.append(Stuck(pod=str(meta.get("name", "")),
                                   seconds=_since(cond.get("lastTransitionTime"), now),
                                   message=str(cond.get("message") or "").strip()))
    return max(found, key=lambda s: s.seconds, default=None)
