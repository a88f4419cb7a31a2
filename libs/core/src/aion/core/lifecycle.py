"""Run a service until SIGTERM or SIGINT, then let it drain.

Each service's ``main`` stacks its resources with ``AsyncExitStack`` and
awaits ``wait_for_signal``; leaving the stack drains the gRPC server first
(it was entered last) and then closes the clients it used.
"""

from __future__ import annotations

import asyncio
import logging
import signal

log = logging.getLogger(__name__)


async def wait_for_signal(*signals: signal.Signals) -> signal.Signals:
    """Wait until one of ``signals`` (default SIGTERM and SIGINT) arrives; return it."""
    wanted = signals or (signal.SIGTERM, signal.SIGINT)
    loop = asyncio.get_running_loop()
    received: asyncio.Future[signal.Signals] = loop.create_future()

    def on_signal(sig: signal.Signals) -> None:
        if not received.done():
            received.set_result(sig)

    for sig in wanted:
        loop.add_signal_handler(sig, on_signal, sig)
    try:
        sig = await received
    finally:
        for s in wanted:
            loop.remove_signal_handler(s)
    log.info("received %s, shutting down", sig.name)
    return sig
