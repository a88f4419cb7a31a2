"""Circuit breakers: a target that keeps failing is left alone for a while.

One ``Breaker`` per target (an executor address, an external provider). It is
*closed* (calls go through) until ``failures`` calls in a row fail; then it is
*open* for ``open_s`` (no calls), then *half-open*: one probe call goes
through, and its outcome closes the breaker or opens it again for another
``open_s``. The breaker only counts; callers say what is a failure (a refusal
before the first token, a connection error), since a full queue is load, not
a fault. A ``Rule`` holds those settings (and the clock), shared by every
breaker made from it.
"""

from __future__ import annotations

import dataclasses
import enum
import time
from collections.abc import Callable


class State(enum.Enum):
    """Where a breaker stands."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half-open"


@dataclasses.dataclass(frozen=True)
class Rule:
    """When a breaker opens (``failures`` failed calls in a row), for how long
    (``open_s``), on which clock, and what it calls each time it opens (``on_open``)."""

    failures: int
    open_s: float
    clock: Callable[[], float] = time.monotonic
    on_open: Callable[[], None] | None = None


DEFAULT = Rule(failures=3, open_s=5.0)  # the settings' defaults


class Breaker:
    """The breaker of one target."""

    def __init__(self, rule: Rule = DEFAULT) -> None:
        self._on_open = rule.on_open
        self._threshold = rule.failures
        self._open_s = rule.open_s
        self._clock = rule.clock
        self._failed = 0
        self._opened_at: float | None = None
        self._probing = False

    @property
    def state(self) -> State:
        """Closed, open, or half-open (open long enough to let a probe through)."""
        if self._opened_at is None:
            return State.CLOSED
        if self._clock() - self._opened_at < self._open_s:
            return State.OPEN
        return State.HALF_OPEN

    def retry_after_s(self) -> float:
        """How long until the breaker lets a probe through (0 when it would now)."""
        if self._opened_at is None:
            return 0.0
        return max(0.0, self._open_s - (self._clock() - self._opened_at))

    def allows(self) -> bool:
        """Whether a call may go now: closed, or half-open with no probe out yet."""
        state = self.state
        if state is State.CLOSED:
            return True
        return state is State.HALF_OPEN and not self._probing

    def attempt(self) -> bool:
        """Take the right to call now (the probe, when half-open); False when not allowed."""
        if not self.allows():
            return False
        if self.state is State.HALF_OPEN:
            self._probing = True
        return True

    def success(self) -> None:
        """A call succeeded: the breaker closes."""
        self._failed = 0
        self._opened_at = None
        self._probing = False

    def failure(self) -> None:
        """A call failed: a failed probe, or the ``failures``-th in a row, opens the breaker."""
        self._failed += 1
        if self._probing or self._failed >= self._threshold:
            if self._on_open is not None and self.state is not State.OPEN:
                self._on_open()
            self._opened_at = self._clock()
        self._probing = False

    def release(self) -> None:
        """A call ended neither way (cancelled): a probe it held may be taken again."""
        self._probing = False


class Breakers:
    """A breaker per target, each made from ``rule`` on first use."""

    def __init__(self, rule: Rule = DEFAULT) -> None:
        self._rule = rule
        self._by_target: dict[str, Breaker] = {}

    def __getitem__(self, target: str) -> Breaker:
        found = self._by_target.get(target)
        if found is None:
            found = self._by_target[target] = Breaker(self._rule)
        return found

    def blocked(self) -> set[str]:
        """The targets whose breaker lets no call through now."""
        return {t for t, b in self._by_target.items() if not b.allows()}
