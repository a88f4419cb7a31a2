"""Detached daemons with a pid file and a log file each."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from aion.infra.paths import Layout


def tail(path: Path, lines: int = 40) -> str:
    """The last `lines` lines of a log, or a note that there is none."""
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return f"(no log at {path})"
    return "\n".join(text.splitlines()[-lines:])


def _state(stat_file: Path) -> str:
    # The state follows the parenthesised command name.
    try:
        return stat_file.read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return "X"


def _alive(pid: int) -> bool:
    """Whether any thread of `pid` still runs.

    A JVM or a Go program exits thread by thread: its main thread can be a
    zombie while others still run, so every thread is looked at.
    """
    tasks = Path(f"/proc/{pid}/task")
    try:
        return any(_state(task / "stat") not in ("Z", "X") for task in tasks.iterdir())
    except (FileNotFoundError, ProcessLookupError):
        return False


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return []
    return [p.decode(errors="replace") for p in raw.split(b"\0") if p]


@dataclass
class Daemon:
    """One long-running process of a component.

    It runs in its own session (so a signal reaches its children too), writes
    stdout and stderr to `layout.log(name)`, and records its pid in
    `layout.pidfile(name)`. `user` runs it as another account (Postgres).
    """

    name: str
    argv: Sequence[str]
    layout: Layout
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: Path | None = None
    user: str | None = None
    _popen: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)

    @property
    def log(self) -> Path:
        return self.layout.log(self.name)

    @property
    def pidfile(self) -> Path:
        return self.layout.pidfile(self.name)

    def pid(self) -> int | None:
        """The pid of the running daemon, or None (a stale pid file is ignored)."""
        try:
            pid = int(self.pidfile.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        if self._popen is not None and self._popen.pid == pid:
            # Our own child: its exit status is the truth. (Its /proc cmdline can
            # still be empty for a moment after Popen returns: the kernel closes
            # the exec-status pipe before it sets up the new program's arguments.)
            return pid if self._popen.poll() is None else None
        if not _alive(pid):
            return None
        # A recycled pid belongs to some other program: compare the executable.
        # (An empty cmdline is a program still being exec'd: see above.)
        cmd = _cmdline(pid)
        if cmd and Path(cmd[0]).name != Path(self.argv[0]).name:
            return None
        return pid

    def running(self) -> bool:
        return self.pid() is not None

    def start(self) -> int:
        """Start the daemon unless it runs; returns its pid."""
        pid = self.pid()
        if pid is not None:
            return pid
        self.layout.ensure()
        env = {**os.environ, **self.env}
        with self.log.open("ab") as log:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
            log.write(f"\n==== {stamp} starting {self.name}: {' '.join(self.argv)}\n".encode())
            log.flush()
            self._popen = subprocess.Popen(
                list(self.argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.cwd,
                env=env,
                start_new_session=True,
                user=self.user,
                group=self.user and _primary_group(self.user),
                extra_groups=[] if self.user else None,
            )
        self.pidfile.write_text(f"{self._popen.pid}\n")
        return self._popen.pid

    def detach(self) -> None:
        """Forget the child handle: the daemon outlives this process on purpose."""
        if self._popen is not None and self._popen.poll() is None:
            # Popen warns when collected with its child alive; this one is meant to be.
            self._popen.returncode = 0
        self._popen = None

    def exited(self) -> int | None:
        """The exit code when this process started the daemon and it has exited."""
        if self._popen is None:
            return None
        return self._popen.poll()

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM the daemon's process group, then SIGKILL after `timeout`."""
        pid = self.pid()
        if pid is not None:
            _signal_group(pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and _alive(pid):
                self._reap()
                time.sleep(0.1)
            if _alive(pid):
                _signal_group(pid, signal.SIGKILL)
                while _alive(pid):
                    self._reap()
                    time.sleep(0.05)
        self._reap(wait=True)
        if pid is not None and self._popen is None:
            # Started by another process (the CLI): init reaps it a moment later.
            deadline = time.monotonic() + 3
            while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
                time.sleep(0.05)
        self.pidfile.unlink(missing_ok=True)
        # Stopped on purpose: a later start() is a new daemon, not this exit status.
        self._popen = None

    def kill(self) -> None:
        """SIGKILL the daemon's process group at once: a crash, not a shutdown."""
        pid = self.pid()
        if pid is not None:
            _signal_group(pid, signal.SIGKILL)
        self.stop()  # waits for the exit, reaps, forgets the pid file

    def _reap(self, wait: bool = False) -> None:
        if self._popen is not None:
            with contextlib.suppress(ChildProcessError, subprocess.TimeoutExpired):
                if wait:
                    self._popen.wait(timeout=5)
                else:
                    self._popen.poll()


def _primary_group(user: str) -> int:
    import pwd

    return pwd.getpwnam(user).pw_gid


def _signal_group(pid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        return
    except PermissionError:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def run(
    argv: Sequence[str],
    *,
    log: Path,
    env: Mapping[str, str] | None = None,
    user: str | None = None,
    cwd: Path | None = None,
    timeout: float = 600,
) -> None:
    """Run a one-off step (format storage, initdb), appending its output to `log`.

    Raises `subprocess.CalledProcessError` with the step's output on failure.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        list(argv),
        capture_output=True,
        env={**os.environ, **(env or {})},
        user=user,
        group=user and _primary_group(user),
        extra_groups=[] if user else None,
        cwd=cwd,
        timeout=timeout,
        check=False,
    )
    with log.open("ab") as f:
        f.write(f"\n==== {' '.join(argv)}\n".encode() + proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise subprocess.CalledProcessError(proc.returncode, list(argv), proc.stdout, proc.stderr)
