"""The executor's load: sliding windows of throughput and latency, and their Prometheus gauges.

The same ``Load`` snapshot answers the Stats RPC, backs the
``aion_executor_*`` gauges, and is what ``load_report`` publishes to Kafka.
Both pipelines (the scheduler and the batcher) keep theirs with a ``Meter``.
"""

from __future__ import annotations

import collections
import dataclasses
import math
from collections.abc import Callable

import prometheus_client

from aion.core import errors

QUEUE_DEPTH = prometheus_client.Gauge(
    "aion_executor_queue_depth", "Requests admitted and waiting for the model."
)
IN_FLIGHT = prometheus_client.Gauge("aion_executor_in_flight", "Requests generating now.")
MAX_QUEUE = prometheus_client.Gauge(
    "aion_executor_max_queue", "Requests admitted at most (waiting + generating)."
)
TOKENS_PER_SECOND = prometheus_client.Gauge(
    "aion_executor_tokens_per_second",
    "Tokens per second over the recent window: completion tokens (generate) or input tokens "
    "(embed).",
)
P95_LATENCY = prometheus_client.Gauge(
    "aion_executor_p95_latency_seconds",
    "95th percentile of request latency (admission to last token) over the recent window.",
)
MODEL_READY = prometheus_client.Gauge(
    "aion_executor_model_ready", "1 once the model is loaded, else 0."
)
MAX_BATCH = prometheus_client.Gauge(
    "aion_executor_max_batch",
    "Generation streams decoded together, or texts per embedding batch, at most.",
)
TOKENS = prometheus_client.Counter(
    "aion_executor_completion_tokens", "Completion tokens generated."
)
EMBEDDED_TEXTS = prometheus_client.Counter("aion_executor_embedded_texts", "Texts embedded.")
BATCH_SIZE = prometheus_client.Histogram(
    "aion_executor_batch_size",
    "Texts per embedding batch, or streams decoded together per decoding step "
    "(those that sampled a token in it).",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)
REJECTED = prometheus_client.Counter(
    "aion_executor_rejected", "Requests refused because the queue was full."
)
RATE_WINDOW_S = 30.0
LATENCY_WINDOW_S = 300.0
MAX_RETRY_S = 30.0


@dataclasses.dataclass(frozen=True)
class Load:
    """How busy the executor is right now."""

    model_ready: bool
    queue_depth: int
    in_flight: int
    max_queue: int
    tokens_per_s: float
    p95_latency_s: float | None
    max_batch: int = 1


class RateWindow:
    """Events per second over the last ``window_s`` seconds, in one-second buckets."""

    def __init__(self, *, window_s: float, now: float) -> None:
        self._window_s = window_s
        self._started = now
        self._buckets: collections.deque[list[float]] = collections.deque()

    def add(self, count: float, *, now: float) -> None:
        """Record ``count`` events at time ``now``."""
        second = math.floor(now)
        if self._buckets and self._buckets[-1][0] == second:
            self._buckets[-1][1] += count
        else:
            self._buckets.append([second, count])
        self._evict(now)

    def rate(self, *, now: float) -> float:
        """Events per second over the window (over the time since creation, if shorter)."""
        self._evict(now)
        span = min(self._window_s, max(now - self._started, 1.0))
        return sum(count for _, count in self._buckets) / span

    def _evict(self, now: float) -> None:
        while self._buckets and self._buckets[0][0] <= now - self._window_s - 1:
            self._buckets.popleft()


class LatencyWindow:
    """Durations observed over the last ``window_s`` seconds (at most ``max_samples``)."""

    def __init__(self, *, window_s: float, max_samples: int = 2048) -> None:
        self._window_s = window_s
        self._samples: collections.deque[tuple[float, float]] = collections.deque(
            maxlen=max_samples
        )

    def add(self, seconds: float, *, now: float) -> None:
        """Record one duration that ended at ``now``."""
        self._samples.append((now, seconds))

    def percentile(self, q: float, *, now: float) -> float | None:
        """The ``q`` quantile (0 < q <= 1, nearest rank) of the window, or None when empty."""
        while self._samples and self._samples[0][0] < now - self._window_s:
            self._samples.popleft()
        if not self._samples:
            return None
        ordered = sorted(seconds for _, seconds in self._samples)
        return ordered[max(math.ceil(q * len(ordered)) - 1, 0)]


class Meter:
    """One pipeline's recent throughput and latency, its ``Load``, and the refusal of a
    full queue with a retry delay of about one request's latency here now (at least
    ``min_retry_s``)."""

    def __init__(self, *, clock: Callable[[], float], min_retry_s: float) -> None:
        self._clock = clock
        self._min_retry_s = min_retry_s
        self.tokens = RateWindow(window_s=RATE_WINDOW_S, now=clock())
        self.latency = LatencyWindow(window_s=LATENCY_WINDOW_S)

    def load(
        self, *, model_ready: bool, queue_depth: int, in_flight: int, max_queue: int, max_batch: int
    ) -> Load:
        """The current load, with the windows' figures."""
        now = self._clock()
        return Load(
            model_ready=model_ready,
            queue_depth=queue_depth,
            in_flight=in_flight,
            max_queue=max_queue,
            tokens_per_s=self.tokens.rate(now=now),
            p95_latency_s=self.latency.percentile(0.95, now=now),
            max_batch=max_batch,
        )

    def retry_after_s(self) -> float:
        """How long a refused caller should wait."""
        p95 = self.latency.percentile(0.95, now=self._clock())
        return self._min_retry_s if p95 is None else min(max(p95, self._min_retry_s), MAX_RETRY_S)

    def queue_full(self, max_queue: int) -> errors.ResourceExhausted:
        """The refusal of one request more than ``max_queue`` (counted in REJECTED)."""
        REJECTED.inc()
        return errors.ResourceExhausted(
            f"executor queue is full ({max_queue} requests); retry later",
            retry_after_s=round(self.retry_after_s(), 3),
        )


def export(source: Callable[[], Load]) -> None:
    """Make the ``aion_executor_*`` gauges read from ``source`` at every scrape."""
    QUEUE_DEPTH.set_function(lambda: source().queue_depth)
    IN_FLIGHT.set_function(lambda: source().in_flight)
    MAX_QUEUE.set_function(lambda: source().max_queue)
    TOKENS_PER_SECOND.set_function(lambda: source().tokens_per_s)
    P95_LATENCY.set_function(lambda: source().p95_latency_s or 0.0)
    MODEL_READY.set_function(lambda: float(source().model_ready))
    MAX_BATCH.set_function(lambda: source().max_batch)
