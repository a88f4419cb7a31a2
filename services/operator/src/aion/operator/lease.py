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

``Record`` and ``decide`` are pure; ``Elector`` does the reads and writes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import logging
import time
from typing import Literal

import lightkube
from lightkube.models import coordination_v1 as lease_models
from lightkube.models import meta_v1
from lightkube.resources import coordination_v1

log = logging.getLogger(__name__)

NOT_FOUND = 404
CONFLICT = 409

Action = Literal["take", "renew", "wait"]


@dataclasses.dataclass(frozen=True)
class Record:
    """What a Lease says: who holds it, since when and until when, as plain values."""

    holder: str
    renewed: datetime.datetime | None
    duration_s: float
    transitions: int


def decide(record: Record | None, *, me: str, unchanged_for_s: float) -> Action:
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
    return Record(holder=spec.holderIdentity or "", renewed=spec.renewTime,
                  duration_s=float(spec.leaseDurationSeconds or 0),
                  transitions=spec.leaseTransitions or 0)


class Elector:
    """Takes, keeps and gives back one Lease for one replica (``identity``)."""

    def __init__(self, client: lightkube.AsyncClient, *, name: str, namespace: str,
                 identity: str, duration_s: float) -> None:
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
            return await self._client.get(coordination_v1.Lease, self._name,
                                          namespace=self._namespace)
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
        acquired = now if taking else (
            self._lease.spec.acquireTime if self._lease and self._lease.spec else now)
        return lease_models.LeaseSpec(
            holderIdentity=self.identity, leaseDurationSeconds=max(1, round(self._duration_s)),
            acquireTime=acquired, renewTime=now, leaseTransitions=transitions)

    async def try_once(self) -> bool:
        """One read and, when allowed, one write; True when this replica holds the Lease."""
        lease = await self._read()
        record, unchanged_for = self._observe(lease)
        action = decide(record, me=self.identity, unchanged_for_s=unchanged_for)
        if action == "wait":
            return False
        spec = self._spec(record, taking=action == "take")
        try:
            if lease is None:
                self._lease = await self._client.create(coordination_v1.Lease(
                    metadata=meta_v1.ObjectMeta(name=self._name, namespace=self._namespace),
                    spec=spec))
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
        log.info("waiting for the Lease %s/%s as %s", self._namespace, self._name,
                 self.identity)
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
                log.error("the Lease %s/%s was taken by another replica",
                          self._namespace, self._name)
                return
            except (lightkube.ApiError, OSError) as exc:
                log.warning("cannot renew the Lease: %s", exc)
            if time.monotonic() - renewed >= self._duration_s - self.retry_s:
                log.error("could not renew the Lease %s/%s in time; stopping",
                          self._namespace, self._name)
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
