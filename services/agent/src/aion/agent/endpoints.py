"""Which executor pod each call goes to.

The operator registers an Agent with the address of its executors' headless
Service (``aion-executor-<agent>.<namespace>.svc:50055``): a DNS name with one
A record per ready pod. ``Endpoints`` resolves it to those addresses (again
every ``refresh_s``, so new pods get calls, and at once after a pod stops
answering) and a ``Chooser`` picks the address of each call. ``RoundRobin``
takes them in turn; a chooser that reads the executors' live load fits the
same seam.

Target forms: ``host:port`` and ``dns:///host:port`` (every address
getaddrinfo gives), and gRPC's static lists ``ipv4:a:p,b:p`` and
``ipv6:[a]:p,[b]:p``.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import socket
import time
from collections.abc import Awaitable, Callable, Collection, Sequence
from typing import Protocol

from aion.core import errors

log = logging.getLogger(__name__)

Resolver = Callable[[str], Awaitable[tuple[str, ...]]]


class Chooser(Protocol):
    """Picks the address of one call among an Agent's executor addresses."""

    def choose(self, targets: tuple[str, ...], addresses: Sequence[str]) -> str:
        """One of ``addresses`` (never empty), which ``targets`` resolved to."""
        ...


class RoundRobin:
    """Each Agent's addresses in turn (a turn per Agent, so Agents do not skew each other)."""

    def __init__(self) -> None:
        self._turns: dict[tuple[str, ...], itertools.count[int]] = {}

    def choose(self, targets: tuple[str, ...], addresses: Sequence[str]) -> str:
        """The next address of ``targets``."""
        turn = self._turns.setdefault(targets, itertools.count())
        return addresses[next(turn) % len(addresses)]


def _split(target: str) -> tuple[str, int]:
    host, sep, port = target.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise errors.FailedPrecondition(
            f"executor address {target!r} is not host:port; re-register the agent"
        )
    return host.removeprefix("[").removesuffix("]"), int(port)


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def resolve(target: str) -> tuple[str, ...]:
    """Every address of ``target``, in the resolver's order, each as ``ip:port``."""
    for prefix in ("ipv4:", "ipv6:"):
        if target.startswith(prefix):
            return tuple(
                _address(*_split(part.strip()))
                for part in target.removeprefix(prefix).split(",")
                if part.strip()
            )
    host, port = _split(target.removeprefix("dns:///").removeprefix("dns:"))
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise errors.Unavailable(
            f"executor address {target} does not resolve ({exc.strerror}); the agent's "
            "executor pods may not be ready yet"
        ) from exc
    found: dict[str, None] = {}
    for _family, _type, _proto, _name, sockaddr in infos:
        found.setdefault(_address(str(sockaddr[0]), port))
    return tuple(found)


class Endpoints:
    """Executor addresses by registered target, re-resolved every ``refresh_s``.

    ``on_gone`` hears of each address that no target resolves to any more, so the
    caller can close its channel.
    """

    def __init__(
        self,
        *,
        chooser: Chooser | None = None,
        resolver: Resolver = resolve,
        refresh_s: float = 5.0,
        on_gone: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._chooser = chooser or RoundRobin()
        self._resolve = resolver
        self._refresh_s = refresh_s
        self._on_gone = on_gone
        self._clock = clock
        self._cache: dict[str, tuple[float, tuple[str, ...]]] = {}

    async def addresses(self, targets: tuple[str, ...]) -> tuple[str, ...]:
        """The addresses ``targets`` resolve to, in order, without repeats."""
        found: dict[str, None] = {}
        for target in targets:
            for address in await self._addresses(target):
                found.setdefault(address)
        return tuple(found)

    async def _addresses(self, target: str) -> tuple[str, ...]:
        now = self._clock()
        cached = self._cache.get(target)
        if cached is not None and now - cached[0] < self._refresh_s:
            return cached[1]
        try:
            fresh = await self._resolve(target)
        except errors.Unavailable:
            if cached is None or not cached[1]:
                raise
            log.warning(
                "cannot re-resolve an executor address; using the last addresses",
                extra={"target": target},
            )
            return cached[1]
        self._cache[target] = (now, fresh)
        if cached is not None:
            self._gone(set(cached[1]) - set(fresh))
        return fresh

    def _gone(self, addresses: set[str]) -> None:
        if self._on_gone is None or not addresses:
            return
        still = {a for _, known in self._cache.values() for a in known}
        for address in sorted(addresses - still):
            self._on_gone(address)

    async def choose(self, targets: tuple[str, ...], *, avoid: Collection[str] = ()) -> str | None:
        """The address of the next call to ``targets``, not one of ``avoid``; None when
        every address is to be avoided."""
        left = [a for a in await self.addresses(targets) if a not in avoid]
        return self._chooser.choose(targets, left) if left else None

    def forget(self, targets: tuple[str, ...]) -> None:
        """Resolve ``targets`` again on their next call (one of their pods stopped answering)."""
        for target in targets:
            cached = self._cache.get(target)
            if cached is not None:
                self._cache[target] = (float("-inf"), cached[1])
