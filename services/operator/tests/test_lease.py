"""Leader election: who takes, keeps or waits for the Lease (the pure rule), and the
``leadership`` choreography around a fake elector."""

from __future__ import annotations

import asyncio
import datetime

from aion.operator import lease

HELD = lease.Record(
    holder="op-a",
    renewed=datetime.datetime(2025, 1, 1, tzinfo=datetime.UTC),
    duration_s=15.0,
    transitions=2,
)


def test_a_missing_or_released_lease_is_taken() -> None:
    assert lease.next_action(None, me="op-b", unchanged_for_s=0) == "take"
    released = lease.Record(holder="", renewed=None, duration_s=1.0, transitions=3)
    assert lease.next_action(released, me="op-b", unchanged_for_s=0) == "take"


def test_the_holder_renews_and_others_wait_until_it_expires() -> None:
    assert lease.next_action(HELD, me="op-a", unchanged_for_s=100) == "renew"
    assert lease.next_action(HELD, me="op-b", unchanged_for_s=14.9) == "wait"
    assert lease.next_action(HELD, me="op-b", unchanged_for_s=15.0) == "take"


class _Elector:
    """Takes the Lease at once; ``hold`` returns (the Lease is lost) once ``lose`` is set."""

    def __init__(self) -> None:
        self.lose = asyncio.Event()
        self.released = False

    async def acquire(self) -> None:
        return None

    async def hold(self) -> None:
        await self.lose.wait()

    async def release(self) -> None:
        self.released = True


async def test_a_clean_exit_gives_the_lease_back() -> None:
    elector = _Elector()
    async with lease.leadership(
        elector,  # type: ignore[arg-type]
        host="127.0.0.1",
        liveness_port=0,
    ) as term:
        assert term.acquired
        assert not term.lost.done()
    assert elector.released
    assert not term.lost_lease


async def test_a_lost_lease_stops_the_body_and_is_not_given_back() -> None:
    elector = _Elector()
    async with lease.leadership(
        elector,  # type: ignore[arg-type]
        host="127.0.0.1",
        liveness_port=0,
    ) as term:
        elector.lose.set()
        await asyncio.wait_for(term.lost, timeout=30)
    assert term.lost_lease
    assert not elector.released
