"""Executor pods that cannot run: unschedulable for how long, or failing, and why (pure).

The scheduler marks such a pod's ``PodScheduled`` condition False with reason
``Unschedulable`` and a message naming what no node offered ("0/8 nodes are
available: 4 Insufficient nvidia.com/gpu, ..."). The condition's
``lastTransitionTime`` says since when. Pods being deleted do not count: a
rollout away from a pool deletes them.

A scheduled pod can still fail to start: its image cannot be pulled, a Secret
it names is missing, or the executor exits while loading its model. The
kubelet says so in the container's ``waiting`` state (``ImagePullBackOff``,
``CreateContainerConfigError``, ``CrashLoopBackOff``, ...); ``failing`` picks
that out, with the last run's exit and its final log lines (the executor's
``terminationMessagePolicy`` is ``FallbackToLogsOnError``).
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Iterable, Mapping
from typing import Any

from aion.operator import conventions

UNSCHEDULABLE = "Unschedulable"
# Container waiting reasons that do not clear by themselves.
FAILING = frozenset(
    {
        "ErrImagePull",
        "ImagePullBackOff",
        "InvalidImageName",
        "CreateContainerConfigError",
        "CreateContainerError",
        "RunContainerError",
        "CrashLoopBackOff",
    }
)


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


def _pools(pod: Mapping[str, Any]) -> set[str]:
    """The pools a pod's required node affinity names (``render``'s, by a pool label)."""
    affinity = ((pod.get("spec") or {}).get("affinity") or {}).get("nodeAffinity") or {}
    required = affinity.get("requiredDuringSchedulingIgnoredDuringExecution") or {}
    return {
        str(value)
        for term in required.get("nodeSelectorTerms") or []
        for match in term.get("matchExpressions") or []
        if match.get("key") in conventions.POOL_LABELS and match.get("operator") == "In"
        for value in match.get("values") or []
    }


def unschedulable(
    pods: Iterable[Mapping[str, Any]], *, now: datetime.datetime, pool: str | None = None
) -> Stuck | None:
    """The pod of ``pods`` that has been unschedulable longest, or None when none is.

    With ``pool``, a pod rendered for another pool does not count: a move to ``pool``
    leaves the old pool's pods waiting until the rollout deletes them.
    """
    found: list[Stuck] = []
    for pod in pods:
        meta = pod.get("metadata") or {}
        status = pod.get("status") or {}
        if meta.get("deletionTimestamp") or (pod.get("spec") or {}).get("nodeName"):
            continue
        if pool is not None and (targets := _pools(pod)) and pool not in targets:
            continue
        for cond in status.get("conditions") or []:
            if (
                cond.get("type") == "PodScheduled"
                and cond.get("status") == "False"
                and cond.get("reason") == UNSCHEDULABLE
            ):
                found.append(
                    Stuck(
                        pod=str(meta.get("name", "")),
                        seconds=_since(cond.get("lastTransitionTime"), now),
                        message=str(cond.get("message") or "").strip(),
                    )
                )
    return max(found, key=lambda s: s.seconds, default=None)


@dataclasses.dataclass(frozen=True)
class Failing:
    """A scheduled executor pod that cannot run: the kubelet's reason and its words."""

    pod: str
    reason: str
    message: str


def failing(pods: Iterable[Mapping[str, Any]]) -> Failing | None:
    """The first pod of ``pods`` whose container waits for a reason that needs a fix."""
    for pod in sorted(pods, key=lambda p: str((p.get("metadata") or {}).get("name", ""))):
        meta = pod.get("metadata") or {}
        if meta.get("deletionTimestamp"):
            continue
        for container in (pod.get("status") or {}).get("containerStatuses") or []:
            waiting = (container.get("state") or {}).get("waiting") or {}
            reason = str(waiting.get("reason") or "")
            if reason not in FAILING:
                continue
            words = [str(waiting.get("message") or "").strip()]
            last = (container.get("lastState") or {}).get("terminated") or {}
            if last:
                words.append(
                    f"last run exited {last.get('exitCode')} ({last.get('reason') or 'Error'})"
                )
                tail = str(last.get("message") or "").strip().splitlines()[-3:]
                words.extend(line.strip() for line in tail if line.strip())
            return Failing(
                pod=str(meta.get("name", "")),
                reason=reason,
                message="; ".join(w for w in words if w)[:1000],
            )
    return None
