"""Each Agent's follower (``followers``): when it places, when it looks, what it patches,
when it stops.

The placements and looks are recorded; the cluster is a fake that records status
patches. The follower itself runs for real, on the real ``kube.Wakeups``. The whole
loop against a cluster is in ``test_operator_cluster``.
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
    version: str,
    *,
    uid: str = "uid-1",
    generation: int = 1,
    observed: int | None = None,
    deleting: bool = False,
    phase: str | None = None,
) -> kopf.Body:
    meta: dict[str, Any] = {
        "name": f"chat-{uid}",
        "namespace": "team-a",
        "uid": uid,
        "resourceVersion": version,
        "generation": generation,
    }
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    status: dict[str, Any] = {}
    if phase:
        status["phase"] = phase
    if observed is not None:
        status["observedGeneration"] = observed
    raw: Any = {"metadata": meta, "status": status}
    return kopf.Body(raw)


class _Cluster:
    """The executors' wakeups, and the status patches sent."""

    def __init__(self) -> None:
        self.executors = kube.Wakeups()
        self.patched: list[tuple[str, dict[str, Any]]] = []

    async def patch_status(self, agent: Any, status: dict[str, Any]) -> None:
        self.patched.append((agent["metadata"]["resourceVersion"], status))


class _Calls:
    """Records each placement (body version, resumed) and each look (body version).

    A placement patches ``observedGeneration`` (or raises ``placing_fails`` after
    patching a Pending phase); a look patches ``phase`` while it differs from Ready.
    """

    def __init__(self, *, settled: bool = False) -> None:
        self.places: list[tuple[str, bool]] = []
        self.versions: list[str] = []
        self.settled = settled
        self.fail = False
        self.placing_fails: Exception | None = None
        self.changed = asyncio.Event()

    async def place(
        self, body: kopf.Body, patch: kopf.Patch, _logger: kopf.Logger, resumed: bool
    ) -> None:
        self.places.append((body["metadata"]["resourceVersion"], resumed))
        self.changed.set()
        if self.placing_fails is not None:
            patch.status["phase"] = "Pending"
            raise self.placing_fails
        patch.status["observedGeneration"] = body["metadata"]["generation"]

    async def look(self, body: kopf.Body, patch: kopf.Patch, _logger: kopf.Logger) -> bool:
        self.versions.append(body["metadata"]["resourceVersion"])
        self.changed.set()
        if self.fail:
            raise RuntimeError("the API server went away")
        if body.get("status", {}).get("phase") != "Ready":
            patch.status["phase"] = "Ready"
        return self.settled


async def _until(check: Callable[[], bool], calls: _Calls) -> None:
    async with asyncio.timeout(WAIT_S):
        while not check():
            calls.changed.clear()
            await calls.changed.wait()


def _followers(
    cluster: _Cluster, calls: _Calls, *, interval_s: float = 60.0, retry_s: float = 60.0
) -> Any:
    return followers.Followers(
        calls.look,
        place=calls.place,
        client=cluster,  # type: ignore[arg-type]
        readiness_interval_s=interval_s,
        settled_interval_s=interval_s,
        retry_s=retry_s,
    )


async def test_an_agent_is_placed_on_its_first_event_then_looked_at_once_per_version() -> None:
    cluster, calls = _Cluster(), _Calls()
    following = _followers(cluster, calls)
    try:
        following.seen(_agent("1"), logger=LOG)
        await _until(lambda: len(cluster.patched) == 1, calls)
        assert calls.places == [("1", False)]
        assert cluster.patched == [("1", {"observedGeneration": 1})]

        # The Agent comes back placed: looked at, not placed again.
        following.seen(_agent("2", observed=1), logger=LOG)
        await _until(lambda: len(cluster.patched) == 2, calls)
        assert cluster.patched[1] == ("2", {"phase": "Ready"})

        # Its Deployment changes before the Agent comes back with the patch: no look at
        # the older body (it would send the same patch again).
        cluster.executors.wake(followers.executor_key(_agent("2")))
        following.seen(_agent("2", observed=1), logger=LOG)
        # The Agent comes back with it: looked at again, nothing more to patch.
        following.seen(_agent("3", observed=1, phase="Ready"), logger=LOG)
        await _until(lambda: calls.versions[-1:] == ["3"], calls)
        assert calls.versions == ["2", "3"]
        assert calls.places == [("1", False)]
        assert len(cluster.patched) == 2
        assert len(following) == 1
    finally:
        await following.close()
    assert len(following) == 0


async def test_a_new_generation_is_placed_again_and_a_listed_placed_agent_is_resumed() -> None:
    cluster, calls = _Cluster(), _Calls(settled=True)
    following = _followers(cluster, calls)
    try:
        # Listed as the operator starts, placed at its generation by an earlier run.
        following.seen(_agent("5", generation=2, observed=2, phase="Ready"), logger=LOG)
        await _until(lambda: len(calls.places) == 1, calls)
        assert calls.places == [("5", True)]

        following.seen(_agent("6", generation=2, observed=2, phase="Ready"), logger=LOG)
        await _until(lambda: calls.versions == ["6"], calls)
        # Its spec changes: placed again, as a new spec (the pools fallen back from go).
        following.seen(_agent("7", generation=3, observed=2, phase="Ready"), logger=LOG)
        await _until(lambda: len(calls.places) == 2, calls)
        assert calls.places[1] == ("7", False)
        assert calls.versions == ["6"]
    finally:
        await following.close()


async def test_a_failed_placement_is_tried_again_after_its_delay_and_patches_each_time() -> None:
    cluster, calls = _Cluster(), _Calls()
    calls.placing_fails = kopf.TemporaryError("every eligible pool is full", delay=0.05)
    following = _followers(cluster, calls)
    try:
        following.seen(_agent("1"), logger=LOG)
        # No event comes (the status did not change): the delay alone brings the retry.
        await _until(lambda: len(calls.places) == 3, calls)
        assert [version for version, _ in calls.places] == ["1", "1", "1"]
        assert cluster.patched[0] == ("1", {"phase": "Pending"})
        assert not calls.versions  # no look at an Agent not placed

        calls.placing_fails = None
        await _until(lambda: ("1", {"observedGeneration": 1}) in cluster.patched, calls)
    finally:
        await following.close()


async def test_any_other_failure_is_tried_again_after_retry_s() -> None:
    cluster, calls = _Cluster(), _Calls()
    calls.placing_fails = RuntimeError("the API server went away")
    following = _followers(cluster, calls, retry_s=0.05)
    try:
        following.seen(_agent("1"), logger=LOG)
        await _until(lambda: len(calls.places) == 2, calls)
        calls.placing_fails = None
        await _until(lambda: ("1", {"observedGeneration": 1}) in cluster.patched, calls)
    finally:
        await following.close()


async def test_an_invalid_spec_is_placed_again_only_once_it_changes() -> None:
    cluster, calls = _Cluster(), _Calls()
    calls.placing_fails = kopf.PermanentError("spec.model is required")
    following = _followers(cluster, calls, interval_s=0.05, retry_s=0.05)
    try:
        following.seen(_agent("1"), logger=LOG)
        # Looked at (the look finds nothing placed) while the spec stays as it was.
        await _until(lambda: len(calls.versions) >= 3, calls)
        assert calls.places == [("1", False)]

        calls.placing_fails = None
        following.seen(_agent("2", generation=2), logger=LOG)
        await _until(lambda: len(calls.places) == 2, calls)
        assert calls.places[1] == ("2", False)
    finally:
        await following.close()


async def test_a_deleted_or_deleting_agent_is_no_longer_followed() -> None:
    cluster, calls = _Cluster(), _Calls(settled=True)
    following = _followers(cluster, calls)
    try:
        following.seen(_agent("1", uid="a"), logger=LOG)
        following.seen(_agent("1", uid="b"), logger=LOG)
        await _until(lambda: len(calls.places) == 2, calls)
        assert len(following) == 2

        following.seen(_agent("2", uid="a", deleting=True), logger=LOG)
        following.seen(_agent("2", uid="b"), logger=LOG, gone=True)
        assert len(following) == 0
    finally:
        await following.close()


async def test_a_failed_look_is_tried_again_and_the_follower_lives_on() -> None:
    cluster, calls = _Cluster(), _Calls()
    calls.fail = True
    following = _followers(cluster, calls, interval_s=0.05)
    try:
        following.seen(_agent("1", observed=1), logger=LOG)  # resumed, then looked at
        await _until(lambda: len(calls.versions) >= 2, calls)
        assert cluster.patched == [("1", {"observedGeneration": 1})]
        calls.fail = False
        await _until(lambda: len(cluster.patched) == 2, calls)
        assert len(following) == 1
    finally:
        await following.close()
