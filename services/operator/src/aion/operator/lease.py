"""Leader election on a ``coordination.k8s.io/v1`` Lease: of several operator replicas, one acts.

The algorithm is client-go's ``leaderelection``: a replica takes the Lease when
it is free or when its holder has not renewed it for ``leaseDurationSeconds``,
as measured on this replica's own clock from when it last saw the Lease change
(so clocks need not agree); the holder renews it every third of that time;
every write carries the ``resourceVersion`` it read, so two replicas racing for
one Lease cannot both win. A holder that cannot renew within the duration
stops acting before anyone else may start: ``hold`` returns and ``main`` stops
kopf and exits. A holder that stops cleanly releases the Lease, so a standby
takes over at once rather than after the duration.

``Record`` and ``next_action`` are pure; ``Elector`` does the reads and writes;
``leadership`` is the whole choreography as one async context manager: standby
(answering liveness probes) until the Lease is taken, then a ``lost`` future for
kopf's ``stop_flag``, and the Lease given back on a clean exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import logging
import time
from collections.abc import AsyncIterator
from typing import Literal

import lightkube
from aiohttp import web
from lightkube.models import coordination_v1 as lease_models
from lightkube.models import meta_v1
from lightkube.resources import coordination_v1

from aion.core import lifecycle

log = logging.getLogger(__name__)

NOT_FOUND = 404
CONFLICT = 409

LeaseAction = Literal["take", "renew", "wait"]


@dataclasses.dataclass(frozen=True)
class Record:
    """What a Lease says: who holds it, since when and until when, as plain values."""

    holder: str
    renewed: datetime.datetime | None
    duration_s: float
    transitions: int


def next_action(record: Record | None, *, me: str, unchanged_for_s: float) -> LeaseAction:
    """What a replica named ``me`` does on reading ``record``.

    ``unchanged_for_s`` is how long, on this replica's clock, the record has
    looked the same; a holder that has not renewed for its duration is gone.
    """
    if record is None or not record.holder:
        return "take"
    if record.holder == me:
        return "renew"
    if unchanged_for_s >= record.duration_s:
        return "take"
    return "wait"


def _record(lease: coordination_v1.Lease) -> Record:
    spec = lease.spec
    if spec is None:
        return Record(holder="", renewed=None, duration_s=0.0, transitions=0)
    return Record(
        holder=spec.holderIdentity or "",
        renewed=spec.renewTime,
        duration_s=float(spec.leaseDurationSeconds or 0),
        transitions=spec.leaseTransitions or 0,
    )


class Elector:
    """Takes, keeps and gives back one Lease for one replica (``identity``)."""

    def __init__(
        self,
        client: lightkube.AsyncClient,
        *,
        name: str,
        namespace: str,
        identity: str,
        duration_s: float,
    ) -> None:
        self._client = client
        self._name = name
        self._namespace = namespace
        self.identity = identity
        self._duration_s = duration_s
        self._seen: tuple[Record | None, str | None] | None = None
        self._seen_at = time.monotonic()
        self._lease: coordination_v1.Lease | None = None

    @property
    def retry_s(self) -> float:
        """Seconds between attempts and renewals: a third of the duration."""
        return self._duration_s / 3

    async def _read(self) -> coordination_v1.Lease | None:
        try:
            return await self._client.get(
                coordination_v1.Lease, self._name, namespace=self._namespace
            )
        except lightkube.ApiError as exc:
            if exc.status.code == NOT_FOUND:
                return None
            raise

    def _observe(self, lease: coordination_v1.Lease | None) -> tuple[Record | None, float]:
        record = _record(lease) if lease is not None else None
        version = lease.metadata.resourceVersion if lease and lease.metadata else None
        now = time.monotonic()
        if self._seen != (record, version):
            self._seen, self._seen_at = (record, version), now
        return record, now - self._seen_at

    def _spec(self, record: Record | None, *, taking: bool) -> lease_models.LeaseSpec:
        now = datetime.datetime.now(datetime.UTC)
        transitions = record.transitions if record else 0
        if taking and record is not None and record.holder != self.identity:
            transitions += 1
        acquired = (
            now
            if taking
            else (self._lease.spec.acquireTime if self._lease and self._lease.spec else now)
        )
        return lease_models.LeaseSpec(
            holderIdentity=self.identity,
            leaseDurationSeconds=max(1, round(self._duration_s)),
            acquireTime=acquired,
            renewTime=now,
            leaseTransitions=transitions,
        )

    async def try_once(self) -> bool:
        """One read and, when allowed, one write; True when this replica holds the Lease."""
        lease = await self._read()
        record, unchanged_for = self._observe(lease)
        action = next_action(record, me=self.identity, unchanged_for_s=unchanged_for)
        if action == "wait":
            return False
        spec = self._spec(record, taking=action == "take")
        try:
            if lease is None:
                self._lease = await self._client.create(
                    coordination_v1.Lease(
                        metadata=meta_v1.ObjectMeta(name=self._name, namespace=self._namespace),
                        spec=spec,
                    )
                )
            else:
                lease.spec = spec
                self._lease = await self._client.replace(lease)
        except lightkube.ApiError as exc:
            if exc.status.code == CONFLICT:  # another replica wrote first
                return False
            raise
        if action == "take":
            log.info("took the Lease %s/%s as %s", self._namespace, self._name, self.identity)
        return True

    async def acquire(self) -> None:
        """Return once this replica holds the Lease; retry every ``retry_s``."""
        log.info("waiting for the Lease %s/%s as %s", self._namespace, self._name, self.identity)
        while True:
            try:
                if await self.try_once():
                    return
            except (lightkube.ApiError, OSError) as exc:
                log.warning("cannot read or write the Lease: %s", exc)
            await asyncio.sleep(self.retry_s)

    async def hold(self) -> None:
        """Renew the Lease until a renewal fails for a whole duration; then return."""
        renewed = time.monotonic()
        while True:
            await asyncio.sleep(self.retry_s)
            try:
                if await self.try_once():
                    renewed = time.monotonic()
                    continue
                log.error(
                    "the Lease %s/%s was taken by another replica", self._namespace, self._name
                )
                return
            except (lightkube.ApiError, OSError) as exc:
                log.warning("cannot renew the Lease: %s", exc)
            if time.monotonic() - renewed >= self._duration_s - self.retry_s:
                log.error(
                    "could not renew the Lease %s/%s in time; stopping", self._namespace, self._name
                )
                return

    async def release(self) -> None:
        """Give the Lease up (when held), so a standby replica takes it without waiting."""
        if self._lease is None or self._lease.spec is None:
            return
        lease = self._lease
        assert lease.spec is not None
        lease.spec.holderIdentity = ""
        lease.spec.leaseDurationSeconds = 1
        try:
            await self._client.replace(lease)
            log.info("released the Lease %s/%s", self._namespace, self._name)
        except (lightkube.ApiError, OSError) as exc:
            log.warning("cannot release the Lease: %s", exc)
        self._lease = None


@dataclasses.dataclass
class Term:
    """This replica's term as leader, as ``leadership`` yields it.

    ``acquired`` is False when the replica was told to stop while in standby.
    ``lost`` resolves when the Lease is lost (pass it to kopf as ``stop_flag``);
    ``lost_lease`` says, once the term is over, whether that is why it ended.
    """

    acquired: bool
    lost: asyncio.Future[None]
    lost_lease: bool = False


async def _standby_health(_: web.Request) -> web.Response:
    return web.json_response({"leader": False})


async def _standby(elector: Elector, *, host: str, liveness_port: int) -> bool:
    """Wait for the Lease, answering liveness probes meanwhile; False if told to stop first."""
    app = web.Application()
    app.router.add_get("/healthz", _standby_health)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, liveness_port).start()
    acquiring = asyncio.create_task(elector.acquire(), name="lease acquisition")
    stopped = asyncio.create_task(lifecycle.wait_for_signal(), name="standby signals")
    try:
        await asyncio.wait({acquiring, stopped}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (acquiring, stopped):
            task.cancel()
        # Let the signal waiter remove its handlers before kopf installs its own.
        await asyncio.gather(acquiring, stopped, return_exceptions=True)
        await runner.cleanup()  # kopf serves /healthz on the same port from now on
    return not acquiring.cancelled() and acquiring.exception() is None


def _settle(lost: asyncio.Future[None], holding: asyncio.Task[None]) -> None:
    # ``hold`` returns when the Lease is lost; a cancelled one was stopped on purpose.
    if holding.cancelled() or lost.done():
        return
    if holding.exception() is not None:
        log.error("renewing the Lease failed", exc_info=holding.exception())
    lost.set_result(None)


@contextlib.asynccontextmanager
async def leadership(
    elector: Elector,
    *,
    host: str,
    liveness_port: int,
) -> AsyncIterator[Term]:
    """Hold the Lease for the body of the ``async with``: standby until it is taken
    (serving ``/healthz`` on ``host:liveness_port`` meanwhile, and stopping at SIGTERM or
    SIGINT), then renew it while the body runs. The body stops when ``Term.lost``
    resolves; a clean exit releases the Lease, so a standby takes over at once."""
    loop = asyncio.get_running_loop()
    if not await _standby(elector, host=host, liveness_port=liveness_port):
        yield Term(acquired=False, lost=loop.create_future())
        return
    term = Term(acquired=True, lost=loop.create_future())
    holding = asyncio.create_task(elector.hold(), name="lease renewal")
    holding.add_done_callback(lambda task: _settle(term.lost, task))
    try:
        yield term
    except BaseException:
        holding.cancel()
        raise
    term.lost_lease = holding.done() and not holding.cancelled()
    holding.cancel()
    if term.lost_lease:
        log.error("stopped reconciling: this replica no longer holds the Lease")
        return
    await elector.release()
