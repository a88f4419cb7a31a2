"""Unschedulable executor pods: which, since when, and the scheduler's words."""

from __future__ import annotations

import datetime
from typing import Any

from aion.operator import stuck

NOW = datetime.datetime(2025, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)


def _pod(name: str, *, since: str, reason: str = "Unschedulable", node: str = "",
         deleting: bool = False) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if deleting:
        meta["deletionTimestamp"] = "2025-01-02T03:04:00Z"
    return {"metadata": meta, "spec": {"nodeName": node} if node else {},
            "status": {"phase": "Pending", "conditions": [
                {"type": "PodScheduled", "status": "False", "reason": reason,
                 "message": f"0/8 nodes are available ({name})",
                 "lastTransitionTime": since}]}}


def test_the_longest_waiting_unschedulable_pod_is_reported() -> None:
    found = stuck.unschedulable([_pod("a", since="2025-01-02T03:03:05Z"),
                                 _pod("b", since="2025-01-02T03:02:05Z")], now=NOW)
    assert found == stuck.Stuck(pod="b", seconds=120.0,
                                message="0/8 nodes are available (b)")


def test_scheduled_deleted_and_otherwise_pending_pods_do_not_count() -> None:
    pods = [_pod("bound", since="2025-01-02T03:00:00Z", node="l4-0"),
            _pod("leaving", since="2025-01-02T03:00:00Z", deleting=True),
            _pod("gated", since="2025-01-02T03:00:00Z", reason="SchedulingGated"),
            {"metadata": {"name": "running"}, "status": {"phase": "Running"}}]
    assert stuck.unschedulable(pods, now=NOW) is None
