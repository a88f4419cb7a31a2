"""``python -m aion.operator.uninstall``: the chart's pre-delete hook.

Agents are deleted behind the operator's finalizer, which deregisters them from
the agent service. ``helm uninstall`` deletes the operator and the agent service
together with the chart's own Agents (the knowledge service's embedding Agent),
so nothing would be left to release the finalizer and the uninstall would hang.
This hook runs first, while both still serve: it deletes the release's Agents
and waits until they are gone.

    python -m aion.operator.uninstall --namespace NS --selector LABELS [--timeout-s S]
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Iterable
from typing import Any

import lightkube
from lightkube import ApiError, operators

from aion.operator import conventions, kube

log = logging.getLogger(__name__)


def delete_agents(
    client: lightkube.Client, *, namespace: str, selector: str, timeout_s: float
) -> list[str]:
    """Deletes the Agents ``selector`` matches in ``namespace`` and waits until they are
    gone; returns their names. Raises TimeoutError naming those still there."""
    names = [
        a.metadata.name
        for a in client.list(kube.Agent, namespace=namespace, labels=_labels(selector))
        if a.metadata is not None and a.metadata.name
    ]
    for name in names:
        try:
            client.delete(kube.Agent, name, namespace=namespace)
        except ApiError as exc:
            if exc.status.code != kube.NOT_FOUND:
                raise
        log.info("deleting Agent %s/%s", namespace, name)
    deadline = time.monotonic() + timeout_s
    while True:
        left = [
            a.metadata.name
            for a in client.list(kube.Agent, namespace=namespace, labels=_labels(selector))
            if a.metadata is not None and a.metadata.name in names
        ]
        if not left:
            return names
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"Agents {', '.join(str(n) for n in left)} in {namespace} still there after "
                f"{timeout_s:.0f} s; `kubectl describe agent` shows why (the operator "
                "deregisters each from the agent service before it lets it go)"
            )
        time.sleep(1)


Labels = dict[str, str | operators.Operator[Any] | Iterable[Any] | None]


def _labels(selector: str) -> Labels:
    pairs = [part.split("=", 1) for part in selector.split(",") if part.strip()]
    if any(len(p) != 2 for p in pairs):
        raise ValueError(f"--selector takes key=value pairs separated by commas: {selector!r}")
    return {k.strip(): v.strip() for k, v in pairs}


def main(argv: list[str] | None = None) -> int:
    """Entry point; exit status 1 (with the reason) when the Agents do not go in time."""
    parser = argparse.ArgumentParser(
        prog="python -m aion.operator.uninstall",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--namespace", required=True)
    parser.add_argument("--selector", required=True, help="labels, as key=value,...")
    parser.add_argument("--timeout-s", type=float, default=240.0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        names = delete_agents(
            lightkube.Client(field_manager=conventions.FIELD_MANAGER),
            namespace=args.namespace,
            selector=args.selector,
            timeout_s=args.timeout_s,
        )
    except (TimeoutError, ApiError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    log.info("deleted %d Agent(s): %s", len(names), ", ".join(names) or "none")
    return 0


if __name__ == "__main__":
    sys.exit(main())
