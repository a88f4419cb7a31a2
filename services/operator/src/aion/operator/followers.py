"""Each Agent's follower: a task of its own that places the Agent and looks at its executor.

A placement (``reconcile.reconcile``) runs once per spec generation: at the
Agent's first event (a new Agent), when its ``metadata.generation`` moves past
the one placed (a new spec), and once for each Agent listed when the operator
starts (a resume: ``status.observedGeneration`` already says this generation).
One that fails is tried again after the ``kopf.TemporaryError``'s delay, or
``retry_s``; an invalid spec (``kopf.PermanentError``) waits for the next
generation. Not kopf's change handlers: they remember the last spec handled in
an annotation, one more patch of every Agent, where the generation says as much.

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
import dataclasses
import time
from collections.abc import Awaitable, Callable, Hashable, Mapping
from typing import Any

import kopf

from aion.operator import kube, render

# One look at an Agent: it fills the patch; whether the Agent is settled.
Look = Callable[[kopf.Body, kopf.Patch, kopf.Logger], Awaitable[bool]]
# One placement of an Agent: it fills the patch; resumed (True) or a new spec.
Place = Callable[[kopf.Body, kopf.Patch, kopf.Logger, bool], Awaitable[None]]


@dataclasses.dataclass
class _Placing:
    """Where an Agent's placement stands in this follower."""

    placed: int | None = None  # the generation placed (or found invalid)
    trying: int | None = None  # the generation of the attempts since
    resumed: bool = False  # the cause of those attempts
    again_at: float = 0.0  # when a failed attempt may be tried again (monotonic)

    def due(self, body: kopf.Body) -> bool:
        """Whether to place the Agent now (not: look at it, or wait)."""
        generation = body["metadata"].get("generation")
        if generation == self.placed:
            return False
        if generation != self.trying:
            observed = (body.get("status") or {}).get("observedGeneration")
            self.trying, self.resumed, self.again_at = generation, observed == generation, 0.0
        return time.monotonic() >= self.again_at

    def timeout(self, interval: float) -> float:
        """How long to wait for a wakeup: at most until the next attempt is due."""
        if self.trying is None or self.trying == self.placed:
            return interval
        return max(0.0, min(interval, self.again_at - time.monotonic()))


class Followers:
    """One follower task per Agent, by uid."""

    def __init__(
        self,
        look: Look,
        *,
        place: Place,
        client: kube.Kube,
        readiness_interval_s: float,
        settled_interval_s: float,
        retry_s: float,
    ) -> None:
        self._look = look
        self._place = place
        self._retry_s = retry_s
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
        placing = _Placing()
        while True:
            interval = self._settled_interval_s if settled else self._readiness_interval_s
            await self._client.executors.wait(key, timeout=placing.timeout(interval))
            body = self._bodies.get(uid)
            if body is None:
                return
            version = body["metadata"].get("resourceVersion")
            due = placing.due(body)
            if not due and sent is not None and sent[0] == version and time.monotonic() < sent[1]:
                continue
            patch = kopf.Patch()
            placed = False
            try:
                if due:
                    calm, placed = False, await self._placed(body, patch, logger, placing)
                elif placing.placed == body["metadata"].get("generation"):
                    calm = await self._look(body, patch, logger)
                else:  # a failed placement, not yet due again
                    continue
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
            if placed:  # only once its status is patched
                placing.placed = placing.trying
            sent = (version, time.monotonic() + self._readiness_interval_s) if patch else None
            settled = calm and not patch

    async def _placed(
        self, body: kopf.Body, patch: kopf.Patch, logger: kopf.Logger, placing: _Placing
    ) -> bool:
        """Place the Agent; whether this generation is done with (else: try again later)."""
        name = body["metadata"]["name"]
        delay = self._retry_s
        try:
            await self._place(body, patch, logger, placing.resumed)
            return True
        except kopf.PermanentError as exc:
            logger.error("Agent %s cannot be placed until its spec changes: %s", name, exc)
            return True
        except kopf.TemporaryError as exc:
            delay = self._retry_s if exc.delay is None else exc.delay
            logger.warning("placing Agent %s again in %.0f s: %s", name, delay, exc)
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("placing Agent %s failed; again in %.0f s", name, delay)
        placing.again_at = time.monotonic() + delay
        return False


def executor_key(body: Mapping[str, Any]) -> tuple[str, str]:
    """The key of an Agent's executor Deployment in ``kube.Kube.executors``: its namespace
    and name."""
    meta = body["metadata"]
    return meta["namespace"], render.executor_name(meta["name"])


def _status(patch: kopf.Patch) -> dict[str, Any]:
    return dict(patch.get("status") or {})
