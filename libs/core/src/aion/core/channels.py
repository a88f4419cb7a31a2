"""Client channels from one service to another, over mTLS, with the same options everywhere.

There is no plaintext channel between services: each call presents this
process's certificate and checks that the server is ``peer`` (its certificate
names ``<peer>.aion.internal``), whatever address it was dialled at.
"""

from __future__ import annotations

import json

import grpc

from aion.core import tls as tls_mod

# Transparent retries of calls that never reached the peer's handler.
_SERVICE_CONFIG = json.dumps(
    {
        "methodConfig": [
            {
                "name": [{}],
                "retryPolicy": {
                    "maxAttempts": 4,
                    "initialBackoff": "0.1s",
                    "maxBackoff": "2s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ],
    }
)


def connect(target: str, *, tls: tls_mod.Tls, peer: str) -> grpc.aio.Channel:
    """An mTLS channel to ``target`` (host:port) as ``tls``'s identity, to a server whose
    certificate names ``peer`` (``router``, ``agent``...), with retries on UNAVAILABLE.

    The channel is an async context manager; ``main`` enters it on its exit stack.
    """
    return grpc.aio.secure_channel(
        target,
        tls.channel_credentials(),
        options=[
            *tls.channel_options(peer),
            ("grpc.service_config", _SERVICE_CONFIG),
            ("grpc.enable_retries", 1),
            ("grpc.keepalive_time_ms", 30_000),
            ("grpc.max_receive_message_length", 16 * 1024 * 1024),
        ],
    )
