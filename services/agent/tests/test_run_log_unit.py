"""A run's log batches its writes: by size, by time (events and step records) and at the end.

The store is a fake that records each write; the followers are the real ones, so the
events they hand out are checked against what was stored.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any, cast

import pytest

from aion.agent import follow, model, run_log


class FakeStore:
    def __init__(self) -> None:
        self.writes: list[tuple[list[int], str | None, list[int]]] = []
        self.finished: list[tuple[list[int], str, list[int]]] = []
        self.fail: BaseException | None = None
        self.attempts = 0
        self.reads: list[int] = []  # each read's ``after``
        self.stored: list[model.Event] = []  # what a read returns (after ``after``)
        self.followers = follow.Followers(self._read)

    def running_here(self, task: model.TaskRecord) -> None:
        pass

    def ran(self, task: model.TaskRecord) -> None:
        pass

    async def _read(self, task_id: str, after: int) -> list[model.Event]:
        self.reads.append(after)
        return [e for e in self.stored if e.seq > after]

    async def write(
        self,
        task: model.TaskRecord,
        logged: list[model.Event],
        *,
        output: str | None = None,
        steps: Sequence[model.StepRecord] = (),
    ) -> None:
        self.attempts += 1
        if self.fail is not None:
            raise self.fail
        self.writes.append(([e.seq for e in logged], output, [s.step for s in steps]))

    async def finish(
        self,
        task: model.TaskRecord,
        status: model.Status,
        *,
        output: str,
        error: model.TaskError | None,
        latency_ms: int,
        logged: list[model.Event],
        citations: Sequence[model.Citation] = (),
        steps: Sequence[model.StepRecord] = (),
    ) -> model.TaskRecord:
        self.finished.append(([e.seq for e in logged], output, [s.step for s in steps]))
        seq = (logged[-1].seq if logged else task.seq) + 1
        return model.TaskRecord(
            id=task.id,
            spec=task.spec,
            decision=task.decision,
            model_name=task.model_name,
            status=status,
            output=output,
            seq=seq,
            citations=tuple(citations),
        )


def _task() -> model.TaskRecord:
    return model.TaskRecord(
        id="t1",
        spec=model.TaskSpec(tenant="acme", agent="echo", input="hi"),
        decision=model.Decision(),
        model_name="m",
        status=model.Status.RUNNING,
        attempts=1,
        worker_id="w",
        seq=1,  # its STARTED event
    )


async def _until(check: Callable[[], object], timeout: float = 5.0) -> None:
    """Wait for ``check`` to hold, failing after ``timeout`` seconds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.005)


def _log(store: FakeStore, **kwargs: Any) -> run_log.RunLog:
    return run_log.RunLog(cast(Any, store), _task(), **kwargs)


async def test_tokens_are_stored_in_batches_of_max_events_and_the_rest_at_the_end() -> None:
    store = FakeStore()
    events = _log(store, flush_s=60, max_events=64)
    for i in range(150):
        await events.add(model.EventKind.TOKEN, text=f"w{i} ")
    assert [seqs[0] for seqs, _, _ in store.writes] == [2, 66]
    assert [len(seqs) for seqs, _, _ in store.writes] == [64, 64]
    ended = await events.finish(model.Status.OK, error=None, latency_ms=1)
    assert store.finished[0][0] == list(range(130, 152))  # the last 22, with the end
    assert store.finished[0][1] == "".join(f"w{i} " for i in range(150))
    assert ended.seq == 152
    await events.close()


async def test_a_lone_token_is_stored_after_flush_s() -> None:
    store = FakeStore()
    events = _log(store, flush_s=0.05, max_events=64)
    await events.add(model.EventKind.TOKEN, text="a")
    await events.add(model.EventKind.TOKEN, text="b")
    assert store.writes == []
    await _until(lambda: store.writes)  # the timer's write, flush_s later
    assert store.writes == [([2, 3], "ab", [])]


async def test_a_step_record_is_stored_flush_s_later_with_what_waits_and_the_whole_output() -> None:
    store = FakeStore()
    events = _log(store, flush_s=0.05)
    await events.add(model.EventKind.TOKEN, text="x")
    await events.step(model.StepRecord(step=1, kind="model"))
    assert store.writes == []  # not a transaction of its own at the step's end
    await _until(lambda: store.writes)
    assert store.writes == [([2], "x", [1])]
    await events.add(model.EventKind.TOKEN, text="y")
    await events.step(model.StepRecord(step=2, kind="model"))
    await events.finish(model.Status.OK, error=None, latency_ms=1)
    assert store.finished == [([3], "xy", [2])]  # the last step ends with the task
    assert len(store.writes) == 1
    await events.close()


async def test_the_output_is_rewritten_only_when_it_has_doubled() -> None:
    store = FakeStore()
    events = _log(store, flush_s=60, max_events=1)  # a write per token
    for _ in range(16):
        await events.add(model.EventKind.TOKEN, text="ab")
    written = [len(out) for _, out, _ in store.writes if out is not None]
    assert written == [2, 4, 8, 16, 32]  # log2 rewrites, not one per token
    assert len(store.writes) == 16


async def test_followers_get_each_event_before_it_is_stored() -> None:
    store = FakeStore()
    events = _log(store, flush_s=60)
    stream = store.followers.follow("t1", after=1, poll_s=60)
    await events.add(model.EventKind.TOKEN, text="a")
    got = await asyncio.wait_for(anext(stream), 5)
    assert (got.seq, got.text) == (2, "a")
    assert store.writes == []
    await events.finish(model.Status.OK, error=None, latency_ms=1)
    final = await asyncio.wait_for(anext(stream), 5)
    assert (final.seq, final.kind) == (3, model.EventKind.DONE)
    assert store.followers.ended("t1") is not None  # the record, without a read
    await events.close()
    await cast(Any, stream).aclose()


async def test_the_caller_that_launched_a_run_follows_it_without_a_single_read() -> None:
    store = FakeStore()
    stream = store.followers.follow(
        "t1", poll_s=60, started=model.Event(seq=1, kind=model.EventKind.STARTED)
    )
    first = await asyncio.wait_for(anext(stream), 5)
    assert (first.seq, first.kind) == (1, model.EventKind.STARTED)
    waiting = asyncio.ensure_future(anext(stream))  # the run has handed out nothing yet
    events = _log(store, flush_s=60)
    await events.add(model.EventKind.TOKEN, text="a")
    got = await asyncio.wait_for(waiting, 5)
    assert (got.seq, got.text) == (2, "a")
    await events.finish(model.Status.OK, error=None, latency_ms=1)
    final = await asyncio.wait_for(anext(stream), 5)
    assert final.kind is model.EventKind.DONE
    assert store.reads == []
    await events.close()


async def test_a_launched_run_that_stops_before_its_first_event_sends_its_follower_to_read() -> (
    None
):
    store = FakeStore()
    stream = store.followers.follow(
        "t1", poll_s=60, started=model.Event(seq=1, kind=model.EventKind.STARTED)
    )
    await asyncio.wait_for(anext(stream), 5)
    waiting = asyncio.ensure_future(anext(stream))
    events = _log(store, flush_s=60)
    # Ended elsewhere (recovery, after this run lost its lease): only the store knows.
    store.stored = [model.Event(seq=2, kind=model.EventKind.ERROR)]
    await events.close()  # the run stops having stored nothing
    got = await asyncio.wait_for(waiting, 5)
    assert (got.seq, got.kind) == (2, model.EventKind.ERROR)
    assert store.reads == [1]


async def test_a_failed_timed_write_stops_the_run_at_its_next_event() -> None:
    store = FakeStore()
    events = _log(store, flush_s=0.01)
    store.fail = model.LeaseLost("t1")
    await events.add(model.EventKind.TOKEN, text="a")
    await _until(lambda: store.attempts)  # the timer tried its write, and failed
    await asyncio.sleep(0)  # and recorded why
    with pytest.raises(model.LeaseLost):
        await events.add(model.EventKind.TOKEN, text="b")


def _cite(document_id: str, chunk: int, *, version: int = 1, score: float = 0.5) -> model.Citation:
    return model.Citation("docs", document_id, version, chunk, score=score)


async def test_citations_are_kept_once_each_in_order_of_use_and_stored_with_the_end() -> None:
    store = FakeStore()
    events = _log(store, flush_s=60)
    events.cite([_cite("a", 0), _cite("b", 3)])
    # a passage used again (another search, another score) is kept where it came first
    events.cite([_cite("b", 3, score=0.9), _cite("a", 1), _cite("a", 0)])
    # another version of a document is another passage
    events.cite([_cite("a", 0, version=2)])
    ended = await events.finish(model.Status.ERROR, error=None, latency_ms=1)
    assert ended.citations == (
        _cite("a", 0),
        _cite("b", 3),
        _cite("a", 1),
        _cite("a", 0, version=2),
    )
    await events.close()
