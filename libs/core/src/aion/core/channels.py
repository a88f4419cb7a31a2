"""Client channels from one service to another, with the same options everywhere."""

from __future__ import annotations

import json

import grpc

# Transparent retries of calls that never reached the peer's handler.
_SERVICE_CONFIG = json.dumps({
    "methodConfig": [{
        "name": [{}],
        "retryPolicy": {
            "maxAttempts": 4,
            "initialBackoff": "0.1s",
            "maxBackoff": "2s",
            "backoffMultiplier": 2,
            "retryableStatusCodes": ["UNAVAILABLE"],
        },
    }],
})


def connect(target: str) -> grpc.aio.Channel:
    """An insecure channel to ``target`` (host:port) with retries on UNAVAILABLE.

    The channel is an async context manager; ``main`` enters it on its exit stack.
    """
    return grpc.aio.insecure_channel(target, options=[
        ("grpc.service_config", _SERVICE_CONFIG),
        ("grpc.enable_retries", 1),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.max_receive_message_length", 16 * 1024 * 1024),
    ])
