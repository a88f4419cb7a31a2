"""Privacy and routes: what may leave the cluster, and the one rule that narrows it.

One definition for every service. An agent declares its privacy; a task may ask for a
stricter one; a tenant may cap it. The privacy a task runs under is the strictest of those
(:func:`narrow`), and the route it takes never reaches farther than that privacy allows
(:func:`allowed_route`), whatever decision the agent service is handed.

Protobuf values are converted here too, so each service's ``convert.py`` calls
:func:`from_pb` / :func:`to_pb` instead of keeping its own table.
"""

from __future__ import annotations

import enum

from aion.api.v1 import common_pb2
from aion.core import errors


class Privacy(enum.StrEnum):
    """What may leave the cluster, declared in order from strictest to loosest."""

    LOCAL_ONLY = "local-only"
    HYBRID = "hybrid"
    ALLOW_API = "allow-api"


class Route(enum.StrEnum):
    """Where a task runs, declared in order from nearest to farthest."""

    LOCAL = "local"
    HYBRID = "hybrid"
    API = "api"


_ORDER = list(Privacy)
_REACH = list(Route)
# The farthest route each privacy allows.
_FARTHEST = {
    Privacy.LOCAL_ONLY: Route.LOCAL,
    Privacy.HYBRID: Route.HYBRID,
    Privacy.ALLOW_API: Route.API,
}


def narrow(first: Privacy, *others: Privacy | None) -> Privacy:
    """The strictest of the given levels; ``None`` (not asked for) never loosens."""
    return min((first, *(p for p in others if p is not None)), key=_ORDER.index)


def stricter_or_equal(asked: Privacy, declared: Privacy) -> bool:
    """Whether ``asked`` is at least as strict as ``declared`` (a task may only narrow)."""
    return _ORDER.index(asked) <= _ORDER.index(declared)


def allowed_route(privacy: Privacy, route: Route | str) -> Route:
    """``route`` narrowed to what ``privacy`` allows: a local-only agent runs local whatever
    decision it is handed, and an unknown route is local."""
    try:
        wanted = Route(route)
    except ValueError:
        return Route.LOCAL
    farthest = _FARTHEST[privacy]
    return wanted if _REACH.index(wanted) <= _REACH.index(farthest) else farthest


def parse(value: str, *, field: str = "privacy") -> Privacy:
    """A privacy from its manifest or settings spelling; a clear error names the choices."""
    try:
        return Privacy(value)
    except ValueError:
        choices = ", ".join(p.value for p in Privacy)
        raise errors.InvalidArgument(f"{field}: {value!r} is not one of {choices}") from None


_TO_PB = {
    Privacy.LOCAL_ONLY: common_pb2.PRIVACY_LOCAL_ONLY,
    Privacy.HYBRID: common_pb2.PRIVACY_HYBRID,
    Privacy.ALLOW_API: common_pb2.PRIVACY_ALLOW_API,
}
_FROM_PB = {v: k for k, v in _TO_PB.items()}
_ROUTE_TO_PB = {
    Route.LOCAL: common_pb2.ROUTE_LOCAL,
    Route.HYBRID: common_pb2.ROUTE_HYBRID,
    Route.API: common_pb2.ROUTE_API,
}
_ROUTE_FROM_PB = {v: k for k, v in _ROUTE_TO_PB.items()}


def to_pb(privacy: Privacy) -> common_pb2.Privacy.ValueType:
    return _TO_PB[privacy]


def from_pb(value: common_pb2.Privacy.ValueType, *, field: str = "privacy") -> Privacy | None:
    """The privacy of a protobuf field; ``None`` when unset. An unknown number is
    INVALID_ARGUMENT (a newer client than this server)."""
    if value == common_pb2.PRIVACY_UNSPECIFIED:
        return None
    try:
        return _FROM_PB[value]
    except KeyError:
        raise errors.InvalidArgument(f"{field}: unknown privacy value {int(value)}") from None


def route_to_pb(route: Route) -> common_pb2.Route.ValueType:
    return _ROUTE_TO_PB[route]


def route_from_pb(value: common_pb2.Route.ValueType) -> Route | None:
    """The route of a protobuf field; ``None`` when unset or unknown."""
    return _ROUTE_FROM_PB.get(value)
