"""The executors' live load, as this agent service sees it, and the choice it drives.

Two sources, combined per executor address:

* the executors' **load reports** (``aion.executor.load`` on the topic named by
  ``AION_EXECUTOR_LOAD_TOPIC``; ``load_feed`` puts them here): queue depth,
  streams in flight, tokens/s, p95 latency, model readiness. A report older
  than ``stale_s`` is ignored: the executor may be gone or stuck.
* this service's own **calls in flight** per address (``calling``), which are
  current where a report is up to ``load_interval_s`` old.

Reports name their executor by its id (``AION_EXECUTOR_INSTANCE_ID``), while the
agent service dials addresses (``ip:port``, from the headless Service). The
operator sets each executor pod's id to its pod IP (downward API
``status.podIP``), so a report matches the address whose host is that IP; an
id that is a whole ``host:port`` matches that address exactly (executors
sharing a host, as in tests). An id matching no address is kept but unused.

An address's load is its own calls in flight now plus what its report says
others had running or queued: the report's ``in_flight + queue_depth`` less
this service's calls at the time the report came (those are counted now).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import itertools
import time
from collections.abc import Callable, Iterator, Sequence

from aion.agent import breaker as breaker_mod

_KEEP = 512  # executors known at once before the silent ones are forgotten


@dataclasses.dataclass(frozen=True)
class Report:
    """One executor's load report (``aion.events.v1.ExecutorLoad``)."""

    executor: str
    queue_depth: int = 0
    in_flight: int = 0
    tokens_per_s: float = 0.0
    p95_latency_ms: float = 0.0
    model_ready: bool = True


@dataclasses.dataclass(frozen=True)
class Load:
    """What is known of one address now; ``report`` is None without a fresh report."""

    address: str
    own: int
    report: Report | None
    others: int = 0

    @property
    def total(self) -> int:
        """Calls running or queued there: ours now, plus others' as last reported."""
        return self.own + self.others

    @property
    def queue_depth(self) -> int:
        """Its queue as last reported, plus our calls since if it was queueing then."""
        if self.report is None or self.report.queue_depth == 0:
            return 0
        return self.report.queue_depth + max(0, self.total - self._reported_total)

    @property
    def _reported_total(self) -> int:
        return 0 if self.report is None else self.report.in_flight + self.report.queue_depth

    @property
    def ready(self) -> bool:
        """False when its last fresh report says the model is not serving."""
        return self.report is None or self.report.model_ready


def _host(address: str) -> str:
    return address.rpartition(":")[0].removeprefix("[").removesuffix("]")


class LoadBoard:
    """The latest report per executor and this service's calls in flight per address."""

    def __init__(self, *, stale_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._stale_s = stale_s
        self._clock = clock
        # executor id -> (received at, report, our calls in flight then by address)
        self._reports: dict[str, tuple[float, Report, dict[str, int]]] = {}
        self._own: collections.Counter[str] = collections.Counter()

    def record(self, report: Report) -> None:
        """Keep ``report`` as its executor's latest (and forget executors long silent)."""
        now = self._clock()
        self._reports[report.executor] = (now, report, dict(self._own))
        if len(self._reports) > _KEEP:
            for executor, (at, _, _) in list(self._reports.items()):
                if now - at > self._stale_s:
                    del self._reports[executor]

    @contextlib.contextmanager
    def calling(self, address: str) -> Iterator[None]:
        """Count a call to ``address`` while it runs."""
        self._own[address] += 1
        try:
            yield
        finally:
            self._own[address] -= 1
            if self._own[address] <= 0:
                del self._own[address]

    def load(self, address: str) -> Load:
        """The load of ``address`` now."""
        own = self._own.get(address, 0)
        found = self._reports.get(address) or self._reports.get(_host(address))
        if found is None or self._clock() - found[0] > self._stale_s:
            return Load(address=address, own=own, report=None)
        _, report, own_then = found
        others = max(0, report.in_flight + report.queue_depth - own_then.get(address, 0))
        return Load(address=address, own=own, report=report, others=others)


class LeastLoaded:
    """An ``endpoints.Chooser``: the ready address with the least load, whose breaker
    lets a call through; equal ones in turn, so an idle pool still spreads."""

    def __init__(self, board: LoadBoard, breakers: breaker_mod.Breakers) -> None:
        self._board = board
        self._breakers = breakers
        self._turns: dict[tuple[str, ...], itertools.count[int]] = {}

    def choose(self, targets: tuple[str, ...], addresses: Sequence[str]) -> str:
        """The address of ``addresses`` with the most room."""
        start = next(self._turns.setdefault(targets, itertools.count())) % len(addresses)
        turned = [*addresses[start:], *addresses[:start]]

        def rank(address: str) -> tuple[bool, bool, int]:
            load = self._board.load(address)
            return (not self._breakers[address].allows(), not load.ready, load.total)

        return min(turned, key=rank)
