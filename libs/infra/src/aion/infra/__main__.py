"""python -m aion.infra up|down|status|env|build [component|infra|all]...

Examples:
  python -m aion.infra up infra     # Kafka, Postgres, MinIO, Jaeger, Prometheus
  python -m aion.infra up cluster   # etcd, kube-apiserver, controller-manager,
                                    # scheduler, kwok and the GPU node pools
  python -m aion.infra env all      # export lines for the running components
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time

from aion.infra.component import InfraError
from aion.infra.paths import Layout
from aion.infra.registry import make, resolve


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m aion.infra",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("action", choices=["up", "down", "status", "env", "build"])
    parser.add_argument("names", nargs="*", help="components or groups (default: infra)")
    args = parser.parse_args(argv)
    layout = Layout.from_env()
    try:
        names = resolve(args.names)
    except ValueError as exc:
        parser.error(str(exc))
    components = [make(n, layout) for n in names]
    if args.action == "down":
        for c in reversed(components):
            c.down()
            print(f"{c.name}: stopped")
        return 0
    if args.action == "status":
        for c in components:
            print(f"{c.name:<10} {c.status():<10} logs: {', '.join(str(p) for p in c.logs())}")
        return 0
    if args.action == "env":
        for c in components:
            if c.status() == "ready":
                for key, value in c.endpoints().items():
                    print(f"export {key}={shlex.quote(value)}")
                dirs = ":".join(shlex.quote(str(d)) for d in c.path_dirs())
                if dirs:
                    print(f'export PATH={dirs}:"$PATH"')
        return 0
    for c in components:
        started = time.monotonic()
        reused = c.running() and c.ready()
        try:
            if args.action == "build":
                c.build()
                print(f"{c.name}: built")
                continue
            endpoints = c.up()
        except InfraError as exc:
            if not reused:
                c.down()  # leave no half-started process; the logs stay
            print(f"error: {exc}", file=sys.stderr)
            return 1
        how = "reused" if reused else f"started in {time.monotonic() - started:.1f}s"
        print(f"{c.name}: {how}; log {', '.join(str(p) for p in c.logs())}")
        for key, value in endpoints.items():
            print(f"  {key}={value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
