"""Each Agent's follower (``followers``): when it looks, what it patches, when it stops.

The looks are recorded; the cluster is a fake that records status patches. The
follower itself runs for real, on the real ``kube.Wakeups``. The whole loop against
a cluster is in ``test_operator_cluster``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import kopf

from aion.operator import followers, kube

LOG = logging.getLogger("test")
WAIT_S = 5.0


def _agent(
    version: str, *, uid: str = "uid-1", deleting: bool = False, phase: str | None = None
) -> kopf.Body:
    meta: dict[str, Any] = {
        "name": f"chat-{uid}",
        "namespace": "team-a",
        "uid": uid,
        "resourceVersion": version,
    }
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    raw = {"metadata": meta, "status": {"phase": phase} if phase else {}}
    return kopf.Body(raw)  # type: ignore[arg-type]


class _Cluster:
    """The executors' wakeups, and the status patches sent."""

    def __init__(self) -> None:
        self.executors = kube.Wakeups()
        self.patched: list[tuple[str, dict[str, Any]]] = []

    async def patch_status(self, agent: Any, status: dict[str, Any]) -> None:
        self.patched.append((agent["metadata"]["resourceVersion"], status))


class _Looks:
    """Records each look's body version; patches ``phase`` while it differs from the body's."""

    def __init__(self, *, settled: bool = False) -> None:
        self.versions: list[str] = []
        self.settled = settled
        self.fail = False
        self.changed = asyncio.Event()

    async def __call__(self, body: kopf.Body, patch: kopf.Patch, _logger: kopf.Logger) -> bool:
        self.versions.append(body["metadata"]["resourceVersion"])
        self.changed.set()
        if self.fail:
            raise RuntimeError("the API server went away")
        if body.get("status", {}).get("phase") != "Ready":
            patch.status["phase"] = "Ready"
        return self.settled


async def _until(check: Callable[[], bool], looks: _Looks) -> None:
    async with asyncio.timeout(WAIT_S):
        while not check():
            looks.changed.clear()
            await looks.changed.wait()


def _followers(cluster: _Cluster, looks: _Looks, *, interval_s: float = 60.0) -> Any:
    return followers.Followers(
        looks,
        client=cluster,  # type: ignore[arg-type]
        readiness_interval_s=interval_s,
        settled_interval_s=interval_s,
    )


async def test_an_agent_is_looked_at_on_its_first_event_and_patched_once_per_version() -> None:
    cluster, looks = _Cluster(), _Looks()
    following = _followers(cluster, looks)
    try:
        following.seen(_agent("1"), logger=LOG)
        await _until(lambda: len(cluster.patched) == 1, looks)
        assert cluster.patched == [("1", {"phase": "Ready"})]

        # Its Deployment changes before the Agent comes back with the patch: no look at
        # the older body (it would send the same patch again).
        cluster.executors.wake(followers.executor_key(_agent("1")))
        following.seen(_agent("1"), logger=LOG)
        # The Agent comes back with it: looked at again, nothing more to patch.
        following.seen(_agent("2", phase="Ready"), logger=LOG)
        await _until(lambda: looks.versions[-1:] == ["2"], looks)
        assert looks.versions == ["1", "2"]
        assert len(cluster.patched) == 1
        assert len(following) == 1
    finally:
        await following.close()
    assert len(following) == 0


async def test_a_deleted_or_deleting_agent_is_no_longer_followed() -> None:
    cluster, looks = _Cluster(), _Looks(settled=True)
    following = _followers(cluster, looks)
    try:
        following.seen(_agent("1", uid="a"), logger=LOG)
        following.seen(_agent("1", uid="b"), logger=LOG)
        await _until(lambda: len(looks.versions) == 2, looks)
        assert len(following) == 2

        following.seen(_agent("2", uid="a", deleting=True), logger=LOG)
        following.seen(_agent("2", uid="b"), logger=LOG, gone=True)
        assert len(following) == 0
    finally:
        await following.close()


async def test_a_failed_look_is_tried_again_and_the_follower_lives_on() -> None:
    cluster, looks = _Cluster(), _Looks()
    looks.fail = True
    following = _followers(cluster, looks, interval_s=0.05)
    try:
        following.seen(_agent("1"), logger=LOG)
        await _until(lambda: len(looks.versions) >= 2, looks)
        assert not cluster.patched
        looks.fail = False
        await _until(lambda: len(cluster.patched) == 1, looks)
        assert len(following) == 1
    finally:
        await following.close()
