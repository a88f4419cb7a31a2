"""Retries, shared by both clients: which failures are tried again, and after how long.

All the attempts of one call share the call's deadline. Only two statuses are
retried: UNAVAILABLE, and RESOURCE_EXHAUSTED when the server sent RetryInfo
(the gateway's backpressure; the delay it asks for is honoured, up to a cap).
DEADLINE_EXCEEDED is not retried: the deadline is spent. A call that is not
idempotent (a Submit or a new Stream without an idempotency key) is retried
only when it failed to connect, so it never reached the server.
"""

from __future__ import annotations

import dataclasses
import random
import time

import grpc
from grpc_status import rpc_status

from aion.sdk import errors

# What grpc core says when no connection could be made; the call was never sent.
_CONNECT_FAILURES = (
    "failed to connect to all addresses",
    "dns resolution failed",
    "empty address list",
    "connection refused",
)
# An attempt gets at least this long, so a nearly spent deadline still reaches the server.
_MIN_ATTEMPT_S = 0.01


@dataclasses.dataclass(frozen=True, kw_only=True)
class RetryPolicy:
    """How many times, and how patiently, a failed call is tried again."""

    max_attempts: int = 3
    initial_backoff_s: float = 0.2
    max_backoff_s: float = 5.0
    multiplier: float = 2.0
    max_retry_after_s: float = 30.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")

    def delay_s(self, retry: int, *, retry_after_s: float | None = None) -> float:
        """Seconds to wait before retry number ``retry`` (1 for the first)."""
        if retry_after_s is not None:
            # Never sooner than the server asked; a little later spreads callers out.
            return min(retry_after_s * random.uniform(1.0, 1.1), self.max_retry_after_s)
        ceiling = min(self.max_backoff_s, self.initial_backoff_s * self.multiplier ** (retry - 1))
        return random.uniform(ceiling / 2, ceiling)


def reached_server(exc: grpc.RpcError) -> bool:
    """False only when the call failed to connect and so was never sent."""
    if not isinstance(exc, grpc.Call | grpc.aio.AioRpcError):
        return True
    if exc.code() != grpc.StatusCode.UNAVAILABLE:
        return True
    try:
        if rpc_status.from_call(exc) is not None:
            return True
    except ValueError:
        return True
    details = (exc.details() or "").lower()
    return not any(marker in details for marker in _CONNECT_FAILURES)


class Attempts:
    """The attempts of one call, under the one deadline they share."""

    def __init__(self, policy: RetryPolicy, *, timeout_s: float, idempotent: bool) -> None:
        self._policy = policy
        self._idempotent = idempotent
        self._deadline = time.monotonic() + timeout_s
        self.count = 0

    def start(self) -> float:
        """Count a new attempt and return its timeout: what is left of the deadline."""
        self.count += 1
        return max(self._deadline - time.monotonic(), _MIN_ATTEMPT_S)

    def failed(self, exc: grpc.RpcError, *, retry: bool = True) -> float:
        """Seconds to wait before the next attempt; raises the SDK's error when there is none.

        ``retry=False`` rules out another attempt (a stream that already yielded).
        """
        err = errors.from_rpc_error(exc)
        if not (retry and self._may_retry(exc, err)):
            raise err from exc
        delay = self._policy.delay_s(self.count, retry_after_s=err.retry_after_s)
        if delay >= self._deadline - time.monotonic():
            raise err from exc
        return delay

    def _may_retry(self, exc: grpc.RpcError, err: errors.AionError) -> bool:
        if self.count >= self._policy.max_attempts:
            return False
        if isinstance(err, errors.ResourceExhausted):
            # Without RetryInfo it is a local limit (a message too large): retrying won't help.
            return err.retry_after_s is not None and self._idempotent
        if isinstance(err, errors.Unavailable):
            return self._idempotent or not reached_server(exc)
        return False
