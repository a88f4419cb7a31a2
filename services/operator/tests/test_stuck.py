"""Unschedulable executor pods: which, since when, and the scheduler's words."""

from __future__ import annotations

import datetime
from typing import Any

from aion.operator import stuck

POOL_LABEL = "cloud.google.com/gke-nodepool"
NOW = datetime.datetime(2025, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)


def _pod(
    name: str, *, since: str, reason: str = "Unschedulable", node: str = "", deleting: bool = False
) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if deleting:
        meta["deletionTimestamp"] = "2025-01-02T03:04:00Z"
    return {
        "metadata": meta,
        "spec": {"nodeName": node} if node else {},
        "status": {
            "phase": "Pending",
            "conditions": [
                {
                    "type": "PodScheduled",
                    "status": "False",
                    "reason": reason,
                    "message": f"0/8 nodes are available ({name})",
                    "lastTransitionTime": since,
                }
            ],
        },
    }


def test_the_longest_waiting_unschedulable_pod_is_reported() -> None:
    found = stuck.unschedulable(
        [_pod("a", since="2025-01-02T03:03:05Z"), _pod("b", since="2025-01-02T03:02:05Z")], now=NOW
    )
    assert found == stuck.Stuck(pod="b", seconds=120.0, message="0/8 nodes are available (b)")


def test_scheduled_deleted_and_otherwise_pending_pods_do_not_count() -> None:
    pods = [
        _pod("bound", since="2025-01-02T03:00:00Z", node="l4-0"),
        _pod("leaving", since="2025-01-02T03:00:00Z", deleting=True),
        _pod("gated", since="2025-01-02T03:00:00Z", reason="SchedulingGated"),
        {"metadata": {"name": "running"}, "status": {"phase": "Running"}},
    ]
    assert stuck.unschedulable(pods, now=NOW) is None


def test_only_pods_rendered_for_the_agents_pool_count() -> None:
    # Moved off l4, its l4 pod still waits until the rollout deletes it: that is not h100's.
    def on(pool: str, name: str) -> dict[str, Any]:
        pod = _pod(name, since="2025-01-02T03:02:05Z")
        term = {"matchExpressions": [{"key": POOL_LABEL, "operator": "In", "values": [pool]}]}
        required = {"nodeSelectorTerms": [term]}
        pod["spec"]["affinity"] = {
            "nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": required}
        }
        return pod

    pods = [on("l4", "old")]
    assert stuck.unschedulable(pods, now=NOW, pool="h100") is None
    assert stuck.unschedulable(pods, now=NOW) is not None
    found = stuck.unschedulable([*pods, on("h100", "new")], now=NOW, pool="h100")
    assert found is not None
    assert found.pod == "new"


def _waiting(
    name: str,
    reason: str,
    *,
    message: str = "",
    last: dict[str, object] | None = None,
    deleting: bool = False,
) -> dict[str, object]:
    meta: dict[str, object] = {"name": name}
    if deleting:
        meta["deletionTimestamp"] = "2026-12-02T10:00:00Z"
    container: dict[str, object] = {
        "name": "executor",
        "state": {"waiting": {"reason": reason, "message": message}},
    }
    if last is not None:
        container["lastState"] = {"terminated": last}
    return {
        "metadata": meta,
        "spec": {"nodeName": "n"},
        "status": {"containerStatuses": [container]},
    }


def test_a_pod_that_cannot_pull_its_image_is_failing_with_the_kubelets_words() -> None:
    found = stuck.failing(
        [
            _waiting("a", "ContainerCreating"),
            _waiting("b", "ImagePullBackOff", message='Back-off pulling image "x:1"'),
        ]
    )
    assert found == stuck.Failing(
        pod="b", reason="ImagePullBackOff", message='Back-off pulling image "x:1"'
    )


def test_a_crash_looping_executor_says_how_its_last_run_ended() -> None:
    found = stuck.failing(
        [
            _waiting(
                "a",
                "CrashLoopBackOff",
                message="back-off 10s restarting failed container",
                last={
                    "exitCode": 1,
                    "reason": "Error",
                    "message": "loading model\nFileNotFoundError: /models/none.gguf\n",
                },
            )
        ]
    )
    assert found is not None
    assert found.reason == "CrashLoopBackOff"
    assert found.message == (
        "back-off 10s restarting failed container; last run exited 1 "
        "(Error); loading model; FileNotFoundError: /models/none.gguf"
    )


def test_pods_starting_or_going_are_not_failing() -> None:
    assert (
        stuck.failing(
            [_waiting("a", "ContainerCreating"), _waiting("b", "ErrImagePull", deleting=True)]
        )
        is None
    )
    assert stuck.failing([{"metadata": {"name": "c"}, "status": {}}]) is None
