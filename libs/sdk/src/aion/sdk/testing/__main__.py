"""``make dev``: start the suite with the demo agent and keep it up until Ctrl-C."""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path

from aion.sdk.testing import suite


def _progress(name: str, status: str, elapsed: float) -> None:
    what = "loading the model" if name == "executor" else "starting"
    print(f"\r  {name}: {what} ({status.lower()}) {elapsed:5.1f}s", end="", flush=True)


def main() -> int:
    """Run until SIGINT or SIGTERM; exit non-zero if the suite cannot start."""
    parser = argparse.ArgumentParser(prog="python -m aion.sdk.testing",
                                     description="Run the aion suite locally.")
    parser.add_argument("--agents", type=Path, default=Path("deploy/examples/demo-agent.yaml"))
    parser.add_argument("--log-dir", type=Path, default=Path(".aion/dev/logs"))
    args = parser.parse_args()
    local = suite.LocalSuite(log_dir=args.log_dir, agents_file=args.agents.resolve(),
                             ports=suite.DEV_PORTS)
    stop = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    started = time.monotonic()
    print(f"starting aion (logs in {args.log_dir}/)")
    local.start()
    try:
        local.wait_ready(on_wait=_progress)
    except suite.SuiteError as exc:
        print(f"\nerror: {exc}", file=sys.stderr)
        local.stop()
        return 1
    print(f"\r\033[Kaion is up in {time.monotonic() - started:.1f}s:")
    for svc in local.services.values():
        print(f"  {svc.name:<10} grpc {svc.target:<17} metrics "
              f"http://127.0.0.1:{svc.metrics_port}/metrics  log {svc.log_path}")
    print('\ntry:  uv run aionctl stream --agent demo "What is Kubernetes?"\n'
          "Ctrl-C stops everything.", flush=True)
    while not stop:
        for svc in local.services.values():
            if svc.process is not None and svc.process.poll() is not None:
                print(f"error: {svc.name} exited ({svc.process.returncode}):\n"
                      f"{svc.log_tail()}", file=sys.stderr)
                stop = True
        time.sleep(0.5)
    print("\nstopping...", flush=True)
    t0 = time.monotonic()
    codes = local.stop()
    print(f"stopped in {time.monotonic() - t0:.1f}s "
          + " ".join(f"{n}={c}" for n, c in codes.items()))
    return 0


sys.exit(main())
