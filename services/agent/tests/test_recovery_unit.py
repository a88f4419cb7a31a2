"""The outcome policy of recovery: what happens to a task whose worker was lost."""

from __future__ import annotations

import pytest

from aion.agent import recovery


@pytest.mark.parametrize(
    ("late", "cancel", "attempts", "expected"),
    [
        (True, True, 3, "timeout"),  # past its deadline: nothing else matters
        (False, True, 3, "canceled"),  # asked to cancel: not run again
        (False, False, 3, "abandoned"),  # lost as many workers as it may
        (False, False, 2, "requeued"),  # another worker runs it
    ],
)
def test_the_outcome_of_a_lost_lease(
    late: bool, cancel: bool, attempts: int, expected: str
) -> None:
    assert (
        recovery.outcome(late=late, cancel_requested=cancel, attempts=attempts, max_attempts=3)
        == expected
    )
