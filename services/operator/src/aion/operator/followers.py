"""Each Agent's follower: a task of its own that looks at the Agent's executor.

A look (``reconcile.follow``) falls back, copies readiness into the status and
registers. The follower looks whenever the executor Deployment changes (its
informer wakes it, ``kube.Kube.executors``) or the Agent does (``seen``), and at
the latest every ``readiness_interval_s`` (pods that stay unschedulable, Secrets
due for a look), or ``settled_interval_s`` once a look found the Agent settled
(Ready, registered, no pod waiting): then only a change can move it, and the
change wakes it. After a patch, the next look waits for the Agent to come back
with it (or for ``readiness_interval_s``): a look at the older body would send
the same patch again.

Not a kopf timer: kopf keeps a finalizer on every object that has a timer, so
that it can stop the timer before the object goes. That costs each new Agent a
patch of its own and one more round of its events before ``place`` may run, and
a follower has nothing to clean up. A follower starts at the Agent's first event
(a new Agent, or each Agent listed when the operator starts) and is cancelled
when the Agent is deleted, or being deleted (its finalizer, if any, is kopf's
``deregister``), and when the operator stops.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Hashable, Mapping
from typing import Any

import kopf

from aion.operator import kube, render

# One look at an Agent: it fills the patch; whether the Agent is settled.
Look = Callable[[kopf.Body, kopf.Patch, kopf.Logger], Awaitable[bool]]


class Followers:
    """One follower task per Agent, by uid."""

    def __init__(
        self,
        look: Look,
        *,
        client: kube.Kube,
        readiness_interval_s: float,
        settled_interval_s: float,
    ) -> None:
        self._look = look
        self._client = client
        self._readiness_interval_s = readiness_interval_s
        self._settled_interval_s = settled_interval_s
        self._bodies: dict[str, kopf.Body] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def __len__(self) -> int:
        return len(self._tasks)

    def seen(self, body: kopf.Body, *, logger: kopf.Logger, gone: bool = False) -> None:
        """An event of the Agent: follow it from now on with this body, or stop following it
        once it is ``gone`` or being deleted.

        Call it from kopf's handler of the Agent's events: the follower's task keeps that
        context, so it may post the Agent's Events (``kopf.info``).
        """
        meta = body["metadata"]
        uid = meta["uid"]
        key = executor_key(body)
        if gone or meta.get("deletionTimestamp"):
            self._bodies.pop(uid, None)
            task = self._tasks.pop(uid, None)
            if task is not None:
                task.cancel()
            self._client.executors.forget(key)
            return
        self._bodies[uid] = body
        if uid not in self._tasks:
            self._tasks[uid] = asyncio.create_task(
                self._follow(uid, key, logger), name=f"follow {meta['namespace']}/{meta['name']}"
            )
        else:
            self._client.executors.wake(key)

    async def close(self) -> None:
        """Stop every follower (the operator stops)."""
        tasks = list(self._tasks.values())
        self._tasks.clear()
        self._bodies.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _follow(self, uid: str, key: Hashable, logger: kopf.Logger) -> None:
        settled = False
        sent: tuple[str | None, float] | None = None  # the version patched, until when
        while True:
            interval = self._settled_interval_s if settled else self._readiness_interval_s
            await self._client.executors.wait(key, timeout=interval)
            body = self._bodies.get(uid)
            if body is None:
                return
            version = body["metadata"].get("resourceVersion")
            if sent is not None and sent[0] == version and time.monotonic() < sent[1]:
                continue
            patch = kopf.Patch()
            try:
                calm = await self._look(body, patch, logger)
                if patch:
                    await self._client.patch_status(body, _status(patch))
            except asyncio.CancelledError:
                raise
            except Exception:  # the next look tries again; kopf's timers did the same
                logger.exception(
                    "looking at the executor of Agent %s failed; again within %.0f s",
                    body["metadata"]["name"],
                    self._readiness_interval_s,
                )
                settled, sent = False, None
                continue
            sent = (version, time.monotonic() + self._readiness_interval_s) if patch else None
            settled = calm and not patch


def executor_key(body: Mapping[str, Any]) -> tuple[str, str]:
    """The key of an Agent's executor Deployment in ``kube.Kube.executors``: its namespace
    and name."""
    meta = body["metadata"]
    return meta["namespace"], render.executor_name(meta["name"])


def _status(patch: kopf.Patch) -> dict[str, Any]:
    return dict(patch.get("status") or {})
