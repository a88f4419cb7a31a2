"""The privacy rule: a task only narrows, and a route never reaches past its privacy."""

from __future__ import annotations

import pytest

from aion.api.v1 import common_pb2
from aion.core import errors, privacy
from aion.core.privacy import Privacy, Route


@pytest.mark.parametrize(
    ("levels", "expected"),
    [
        ((Privacy.ALLOW_API,), Privacy.ALLOW_API),
        ((Privacy.ALLOW_API, Privacy.HYBRID), Privacy.HYBRID),
        ((Privacy.HYBRID, Privacy.ALLOW_API), Privacy.HYBRID),
        ((Privacy.ALLOW_API, None, Privacy.LOCAL_ONLY), Privacy.LOCAL_ONLY),
        ((Privacy.LOCAL_ONLY, Privacy.ALLOW_API), Privacy.LOCAL_ONLY),
    ],
)
def test_narrow_takes_the_strictest_and_none_never_loosens(
    levels: tuple[Privacy, ...], expected: Privacy
) -> None:
    assert privacy.narrow(*levels) is expected


def test_a_task_may_only_ask_for_a_stricter_privacy() -> None:
    assert privacy.stricter_or_equal(Privacy.LOCAL_ONLY, Privacy.ALLOW_API)
    assert privacy.stricter_or_equal(Privacy.HYBRID, Privacy.HYBRID)
    assert not privacy.stricter_or_equal(Privacy.ALLOW_API, Privacy.HYBRID)


@pytest.mark.parametrize(
    ("level", "route", "expected"),
    [
        (Privacy.LOCAL_ONLY, Route.API, Route.LOCAL),
        (Privacy.LOCAL_ONLY, "hybrid", Route.LOCAL),
        (Privacy.HYBRID, Route.API, Route.HYBRID),
        (Privacy.HYBRID, Route.LOCAL, Route.LOCAL),
        (Privacy.ALLOW_API, Route.API, Route.API),
        (Privacy.ALLOW_API, "teleport", Route.LOCAL),
    ],
)
def test_a_route_never_reaches_past_its_privacy(
    level: Privacy, route: Route | str, expected: Route
) -> None:
    assert privacy.allowed_route(level, route) is expected


def test_parse_names_the_field_and_the_choices() -> None:
    assert privacy.parse("hybrid") is Privacy.HYBRID
    with pytest.raises(errors.InvalidArgument, match=r"spec.privacy: 'public' is not one of"):
        privacy.parse("public", field="spec.privacy")


def test_protobuf_values_round_trip_and_unknown_numbers_are_refused() -> None:
    for level in Privacy:
        assert privacy.from_pb(privacy.to_pb(level)) is level
    for route in Route:
        assert privacy.route_from_pb(privacy.route_to_pb(route)) is route
    assert privacy.from_pb(common_pb2.PRIVACY_UNSPECIFIED) is None
    with pytest.raises(errors.InvalidArgument, match="unknown privacy value 42"):
        privacy.from_pb(42)  # type: ignore[arg-type]
