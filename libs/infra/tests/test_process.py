"""Daemons: pid files, reuse, stale pids, stopping the whole process group."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest

from aion.infra.component import InfraError, wait_until
from aion.infra.paths import Layout
from aion.infra.process import Daemon, run, tail


@pytest.fixture
def layout(tmp_path: Path) -> Layout:
    return Layout(home=tmp_path / "home", cache=tmp_path / "cache")


def test_start_records_the_pid_and_a_second_start_reuses_it(layout: Layout) -> None:
    d = Daemon("sleeper", ["sleep", "30"], layout)
    pid = d.start()
    try:
        assert layout.pidfile("sleeper").read_text().strip() == str(pid)
        assert d.running()
        # Another handle on the same pid file sees the same process.
        assert Daemon("sleeper", ["sleep", "30"], layout).start() == pid
    finally:
        d.stop()
    assert not d.running()
    assert not layout.pidfile("sleeper").exists()


def test_a_stopped_daemon_starts_again_as_a_new_process(layout: Layout) -> None:
    d = Daemon("sleeper", ["sleep", "30"], layout)
    first = d.start()
    d.stop()
    # Stopped on purpose: no exit status lingers to fail the next start's readiness wait.
    assert d.exited() is None
    second = d.start()
    try:
        assert second != first
        assert d.running()
        assert d.exited() is None
    finally:
        d.stop()


def test_a_stale_pid_file_is_not_mistaken_for_the_daemon(layout: Layout) -> None:
    layout.ensure()
    # Our own pid is alive but is not `sleep`: a recycled pid must not count.
    layout.pidfile("sleeper").write_text(f"{os.getpid()}\n")
    assert Daemon("sleeper", ["sleep", "30"], layout).pid() is None
    layout.pidfile("sleeper").write_text("999999999\n")
    assert Daemon("sleeper", ["sleep", "30"], layout).pid() is None


def test_an_own_child_counts_by_its_exit_status_not_its_cmdline(layout: Layout) -> None:
    # Right after exec the kernel may not show the new cmdline yet; a renamed
    # process stands in for that: only the pid file's stranger is judged by name.
    d = Daemon("renamed", ["bash", "-c", "exec -a something-else sleep 30"], layout)
    pid = d.start()
    try:
        cmdline = Path(f"/proc/{pid}/cmdline")
        assert wait_until(lambda: cmdline.read_text().split("\0")[0] == "something-else", 5)
        assert d.pid() == pid
        assert Daemon("renamed", ["bash"], layout).pid() is None
    finally:
        d.stop()
    assert d.pid() is None


def test_stop_ends_children_too(layout: Layout) -> None:
    d = Daemon("shell", ["bash", "-c", "sleep 30 & echo child=$!; wait"], layout)
    d.start()
    assert wait_until(lambda: re.search(r"child=\d+", tail(d.log)) is not None, 5)
    match = re.search(r"child=(\d+)", tail(d.log))
    assert match is not None
    child = int(match.group(1))
    d.stop(timeout=5)
    assert wait_until(lambda: not Path(f"/proc/{child}").exists() or _zombie(child), 5)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_output_goes_to_the_log_and_exit_is_seen(layout: Layout) -> None:
    d = Daemon("talker", ["bash", "-c", "echo hello from talker; exit 3"], layout)
    d.start()
    assert wait_until(lambda: d.exited() is not None, 5)
    assert d.exited() == 3
    assert "hello from talker" in tail(d.log)
    assert not d.running()


def test_run_raises_with_output_and_logs_it(layout: Layout) -> None:
    log = layout.log("step")
    run(["bash", "-c", "echo fine"], log=log)
    with pytest.raises(Exception, match="exit status 4"):
        run(["bash", "-c", "echo broken >&2; exit 4"], log=log)
    assert "broken" in log.read_text()


def test_infra_error_carries_the_log_tail(tmp_path: Path) -> None:
    log = tmp_path / "x.log"
    log.write_text("\n".join(f"line {i}" for i in range(100)))
    err = InfraError("kafka", "not ready after 90s", log)
    assert "kafka: not ready after 90s" in str(err)
    assert "line 99" in str(err)
    assert "line 10\n" not in str(err)


def test_wait_until_stops_early_on_failure() -> None:
    started = time.monotonic()
    with pytest.raises(RuntimeError, match="died"):
        wait_until(lambda: False, 30, failed=lambda: "died")
    assert time.monotonic() - started < 5
