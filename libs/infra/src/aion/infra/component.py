"""The shape every local infrastructure component shares."""

from __future__ import annotations

import functools
import socket
import subprocess
import time
import urllib.error
import urllib.request
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from aion.infra.paths import BUILD_SCRIPT, Layout
from aion.infra.process import Daemon, tail

T = TypeVar("T")


class InfraError(RuntimeError):
    """A component failed to build or start; the message ends with its log tail."""

    def __init__(self, component: str, problem: str, log: Path | None = None) -> None:
        self.component = component
        self.log = log
        text = f"{component}: {problem}"
        if log is not None:
            text += f"\n---- last lines of {log} ----\n{tail(log)}"
        super().__init__(text)


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


# No proxy for a server on the loopback, whatever http_proxy says.
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http_get(url: str, timeout: float = 2.0, method: str = "GET") -> tuple[int | None, bytes]:
    """The HTTP status and body of a GET (or `method`, without a body), an error
    status too, or (None, b"") when nothing answers."""
    try:
        with _opener.open(urllib.request.Request(url, method=method), timeout=timeout) as resp:
            status: int = resp.status
            return status, resp.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read()
    except (urllib.error.URLError, OSError):
        return None, b""


def poll(
    fetch: Callable[[], T], done: Callable[[T], bool], timeout: float = 60.0, interval: float = 0.5
) -> T:
    """Fetch until `done(value)` holds or `timeout` passes; returns the last value,
    so the caller's assertion can show what was seen instead."""
    deadline = time.monotonic() + timeout
    value = fetch()
    while not done(value) and time.monotonic() < deadline:
        time.sleep(interval)
        value = fetch()
    return value


def wait_until(
    check: Callable[[], bool],
    timeout: float,
    interval: float = 0.2,
    failed: Callable[[], str | None] | None = None,
) -> bool:
    """Poll `check` until it holds or `timeout` passes; `failed` may end it early
    by returning a reason, which is raised as RuntimeError."""
    deadline = time.monotonic() + timeout
    while True:
        if check():
            return True
        if failed is not None and (reason := failed()) is not None:
            raise RuntimeError(reason)
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


class Component(ABC):
    """A piece of infrastructure: built once, started detached, probed, reused.

    Subclasses list their daemons in start order, say how to tell they are
    ready, and what to do once before the first start (format, initdb).
    """

    name: str
    build_target: str | None = None  # deploy/local/build.sh's names for it, space-separated
    start_timeout: float = 90.0

    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self._daemons: list[Daemon] | None = None

    # -- what subclasses provide ------------------------------------------------
    @abstractmethod
    def make_daemons(self) -> list[Daemon]:
        """The processes, in start order."""

    @abstractmethod
    def ready(self) -> bool:
        """True when the component serves (the probe a second `up` reuses)."""

    @abstractmethod
    def endpoints(self) -> dict[str, str]:
        """Addresses, as the environment variables aion's settings read."""

    def path_dirs(self) -> list[Path]:
        """Folders of command-line tools worth putting on PATH (kubectl, helm)."""
        return []

    def prepare(self) -> None:  # noqa: B027 - optional hook
        """One-time set-up before the first start (idempotent)."""

    def after_start(self) -> None:  # noqa: B027 - optional hook
        """Steps once every daemon serves (idempotent), such as creating nodes."""

    def daemon_ready(self, daemon: Daemon) -> bool:
        """Whether one daemon serves, for components whose daemons depend in order."""
        return True

    # -- shared behaviour ---------------------------------------------------------
    def daemons(self) -> list[Daemon]:
        """The processes, in start order; the same objects for the component's life,
        so a daemon this process started is also the one it waits on and reaps."""
        if self._daemons is None:
            self._daemons = self.make_daemons()
        return self._daemons

    def detach(self) -> None:
        """Leave the daemons running after this process exits (AION_INFRA_KEEP)."""
        for d in self.daemons():
            d.detach()

    def build(self) -> None:
        if self.build_target is None:
            return
        proc = subprocess.run(["bash", str(BUILD_SCRIPT), *self.build_target.split()], check=False)
        if proc.returncode != 0:
            raise InfraError(self.name, f"build failed (deploy/local/build.sh {self.build_target})")

    def running(self) -> bool:
        return all(d.running() for d in self.daemons())

    def up(self) -> dict[str, str]:
        """Start (or reuse) the component; returns its endpoints."""
        self.layout.ensure()
        if self.running() and self.ready():
            self.after_start()
            return self.endpoints()
        self.build()
        self.prepare()
        for daemon in self.daemons():
            if not daemon.running():
                daemon.start()
            self._wait(daemon, functools.partial(self.daemon_ready, daemon))
        self._wait(None, self.ready)
        self.after_start()
        return self.endpoints()

    def down(self) -> None:
        for daemon in reversed(self.daemons()):
            daemon.stop()

    def status(self) -> str:
        if not any(d.running() for d in self.daemons()):
            return "stopped"
        if self.running() and self.ready():
            return "ready"
        return "starting or broken"

    def logs(self) -> list[Path]:
        return [d.log for d in self.daemons()]

    def _wait(self, daemon: Daemon | None, check: Callable[[], bool]) -> None:
        watched = [daemon] if daemon is not None else self.daemons()

        def failed() -> str | None:
            for d in watched:
                code = d.exited()
                if code is not None:
                    return f"{d.name} exited with code {code}"
                if not d.running():
                    return f"{d.name} is not running"
            return None

        log = (daemon or self.daemons()[-1]).log
        try:
            ok = wait_until(check, self.start_timeout, failed=failed)
        except RuntimeError as exc:
            raise InfraError(self.name, str(exc), exc_log(exc, watched) or log) from None
        if not ok:
            what = daemon.name if daemon else self.name
            raise InfraError(self.name, f"{what} not ready after {self.start_timeout:.0f}s", log)


def exc_log(exc: RuntimeError, daemons: list[Daemon]) -> Path | None:
    """The log of the daemon an exit message names."""
    for d in daemons:
        if str(exc).startswith(d.name + " "):
            return d.log
    return None
