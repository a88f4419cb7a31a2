"""``make dev``: start the suite with the demo agent and keep it up until Ctrl-C."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from pathlib import Path

from aion.sdk.testing import suite


class Progress:
    """Says what each service is doing while the suite starts, and the executor's own news."""

    def __init__(self, executor_log: Path) -> None:
        self._tty = sys.stdout.isatty()
        self._last: tuple[str, str] | None = None
        self._log = executor_log
        self._read = 0

    def executor_news(self) -> None:
        """Print what the executor logged about its model since the last call."""
        try:
            with self._log.open() as f:
                f.seek(self._read)
                lines = f.readlines()
                self._read = f.tell()
        except OSError:
            return
        for line in lines:
            try:
                message = json.loads(line).get("message", "")
            except ValueError:
                continue
            if "model" in message:
                print(f"\r\033[K  executor: {message}" if self._tty
                      else f"  executor: {message}", flush=True)

    def __call__(self, name: str, status: str, elapsed: float) -> None:
        """Called by LocalSuite.wait_ready while ``name`` is not SERVING yet."""
        self.executor_news()
        what = {"UNREACHABLE": "starting", "NOT_SERVING": "loading"}.get(status, status.lower())
        if name == "executor" and status == "NOT_SERVING":
            what = "loading the model"
        if self._tty:
            print(f"\r\033[K  {name}: {what} {elapsed:5.1f}s", end="", flush=True)
        elif self._last != (name, what):
            print(f"  {name}: {what}", flush=True)
        self._last = (name, what)


def main() -> int:
    """Run until SIGINT or SIGTERM; exit non-zero if the suite cannot start."""
    parser = argparse.ArgumentParser(prog="python -m aion.sdk.testing",
                                     description="Run the aion suite locally.")
    parser.add_argument("--agents", type=Path, default=Path("deploy/examples/demo-agent.yaml"))
    parser.add_argument("--log-dir", type=Path, default=Path(".aion/dev/logs"))
    args = parser.parse_args()
    local = suite.LocalSuite(log_dir=args.log_dir, agents_file=args.agents.resolve(),
                             ports=suite.DEV_PORTS, metrics_ports=suite.DEV_METRICS_PORTS)
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
        progress = Progress(local.services["executor"].log_path)
        local.wait_ready(on_wait=progress)
        progress.executor_news()
    except suite.SuiteError as exc:
        print(f"\nerror: {exc}", file=sys.stderr)
        local.stop()
        return 1
    print(("\r\033[K" if sys.stdout.isatty() else "")
          + f"aion is up in {time.monotonic() - started:.1f}s:")
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
