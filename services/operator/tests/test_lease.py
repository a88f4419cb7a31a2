"""Leader election: who takes, keeps or waits for the Lease (the pure rule)."""

from __future__ import annotations

import datetime

from aion.operator import lease

HELD = lease.Record(holder="op-a", renewed=datetime.datetime(2025, 1, 1, tzinfo=datetime.UTC),
                    duration_s=15.0, transitions=2)


def test_a_missing_or_released_lease_is_taken() -> None:
    assert lease.decide(None, me="op-b", unchanged_for_s=0) == "take"
    released = lease.Record(holder="", renewed=None, duration_s=1.0, transitions=3)
    assert lease.decide(released, me="op-b", unchanged_for_s=0) == "take"


def test_the_holder_renews_and_others_wait_until_it_expires() -> None:
    assert lease.decide(HELD, me="op-a", unchanged_for_s=100) == "renew"
    assert lease.decide(HELD, me="op-b", unchanged_for_s=14.9) == "wait"
    assert lease.decide(HELD, me="op-b", unchanged_for_s=15.0) == "take"
