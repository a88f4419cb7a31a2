"""The gateway's Prometheus metrics (served by ``aion.core.metrics.MetricsServer``).

Beside every service's RPC metrics, the gateway times its own part of a task's
path (what it adds before the agent service sees the task) and, for a stream that
starts a task, the time its caller waits for the first token.
"""

from __future__ import annotations

import prometheus_client

ADDED_LATENCY = prometheus_client.Histogram(
    "aion_gateway_added_latency_seconds",
    "Time from a task's call reaching the gateway to its hand-over to the agent service: "
    "authentication, rate limits, the agent's lookup and the router's decision.",
    ["grpc_method"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
for _method in ("Submit", "Stream"):
    ADDED_LATENCY.labels(_method)  # at 0 from the start, so rate() sees the first call
TIME_TO_FIRST_TOKEN = prometheus_client.Histogram(
    "aion_gateway_time_to_first_token_seconds",
    "Time from a Stream call that starts a task reaching the gateway to its first token "
    "sent to the caller.",
    buckets=(0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
