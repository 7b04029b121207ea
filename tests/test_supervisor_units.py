"""Feature: the supervisor's units, each on its own with a fake clock.

Description: the attempt's state machine (``launcher.attempt``), host liveness
(``launcher.liveness``), preemption (``launcher.preemption``), the stall watchdog's glue
(``launcher.stall``) and the log sink (``launcher.logsink``) are driven directly.
Expectation: each moves, times out and decides as the supervisor relies on; a move the state
machine does not allow is refused, so a late message cannot undo a stop.
"""
from __future__ import annotations

import threading

import pytest

from launcher.attempt import AttemptMachine, outcome
from launcher.lifecycle import AttemptState as S
from launcher.liveness import Keepalive
from launcher.logsink import LogSink
from launcher.preemption import PreemptAction, Preemption
from launcher.protocol import ProcessSpec
from launcher.spec import WatchdogSpec
from launcher.stall import STACKS_WAIT_S, StallAction, StallWatch
from mscluster import events
from mscluster.rank import PREEMPT_EXIT


class Clock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


def test_the_attempt_moves_through_its_states():
    clock = Clock()
    m = AttemptMachine(clock)
    assert m.state is S.STARTING
    assert m.all_started() and m.state is S.RUNNING
    assert not m.all_started()  # once
    clock.now = 60.0
    assert m.ranks_ended() and m.finishing and m.finishing_since == 60.0
    clock.now = 70.0
    assert m.stop() and m.stopping and m.stopping_since == 70.0
    assert not m.stop() and m.stopping_since == 70.0  # a second stop changes nothing
    assert not m.all_started() and not m.ranks_ended() and m.stopping  # a late message cannot undo a stop
    assert m.end(S.FAILED) is S.FAILED and m.state.ended
    with pytest.raises(ValueError):
        m.end(S.SUCCEEDED)  # it ended once
    with pytest.raises(ValueError):
        AttemptMachine(clock).end(S.RUNNING)  # not an end


def test_an_attempt_that_stops_while_starting_never_runs():
    m = AttemptMachine(Clock())
    assert m.stop()
    assert not m.all_started() and m.state is S.STOPPING


@pytest.mark.parametrize("kw, expected", [
    (dict(interrupted=True, failures=1, causes=1, all_done=False, preempted=False, preempting=False), S.INTERRUPTED),
    (dict(interrupted=False, failures=0, causes=0, all_done=True, preempted=False, preempting=False), S.SUCCEEDED),
    (dict(interrupted=False, failures=0, causes=0, all_done=True, preempted=False, preempting=True), S.SUCCEEDED),
    (dict(interrupted=False, failures=2, causes=0, all_done=True, preempted=True, preempting=True), S.PREEMPTED),
    (dict(interrupted=False, failures=2, causes=1, all_done=True, preempted=True, preempting=True), S.FAILED),
    (dict(interrupted=False, failures=0, causes=0, all_done=False, preempted=False, preempting=False), S.FAILED),
    (dict(interrupted=False, failures=1, causes=1, all_done=True, preempted=False, preempting=False), S.FAILED),
])
def test_how_an_attempt_ends(kw, expected):
    assert outcome(**kw) is expected


def test_keepalive_beats_every_interval_and_finds_a_silent_host():
    clock = Clock()
    k = Keepalive(2.0, 3, clock)
    assert k.limit == 6.0
    assert k.beat_due() and not k.beat_due()
    clock.now += 1.9
    assert not k.beat_due()
    clock.now += 0.1
    assert k.beat_due()
    heard = clock.now
    assert k.silent_for(None) is None  # not started yet: never lost
    clock.now += 6.0
    assert k.silent_for(heard) is None  # exactly the limit: not yet
    clock.now += 0.5
    assert k.silent_for(heard) == pytest.approx(6.5)
    assert k.silent_for(heard, read_at=clock.now - 1) is None  # bytes read lately: a backlog, not silence


def test_keepalive_off():
    k = Keepalive(0.0, 3, Clock())
    assert not k.beat_due() and k.silent_for(0.0) is None


def test_preemption_tells_once_and_gives_up_after_the_wait():
    clock, event = Clock(), threading.Event()
    p = Preemption(event, clock, wait=10.0)
    assert p.check(stopping=False) is PreemptAction.NONE and not p.preempting
    event.set()
    assert p.check(stopping=False) is PreemptAction.TELL_AGENTS and p.preempting
    assert p.check(stopping=False) is PreemptAction.NONE  # told once
    clock.now += 10.5
    assert p.check(stopping=False) is PreemptAction.GIVE_UP
    assert p.check(stopping=True) is PreemptAction.NONE  # already stopping


def test_preemption_during_a_stop_tells_nobody():
    event = threading.Event()
    event.set()
    p = Preemption(event, Clock())
    assert p.check(stopping=True) is PreemptAction.NONE and p.preempting


def test_the_first_rank_that_saves_and_leaves_ends_the_attempt_preempted():
    p = Preemption(None, Clock())
    assert p.left(PREEMPT_EXIT, None, 0) and not p.left(PREEMPT_EXIT, None, None)  # the scheduler is no rank
    assert not p.left(None, "SIGUSR1", 0)  # SIGUSR1 kills only after the launcher forwarded it
    assert p.saved_and_left("rank0 on a") and not p.saved_and_left("rank1 on a")
    assert p.by == "rank0 on a" and p.preempting
    assert p.left(None, "SIGUSR1", 1)


def _watch(clock, **kw):
    spec = WatchdogSpec(enabled=True, stall_timeout=10.0, startup_timeout=30.0, beat_interval=1.0, **kw)
    return StallWatch(spec, [("a", "rank0", 0), ("b", "rank1", 1)], clock)


def test_a_stall_asks_for_stacks_then_reports_when_they_are_in():
    clock = Clock()
    w = _watch(clock)
    for name, host in (("rank0", "a"), ("rank1", "b")):
        w.on_event(host, name, events.Progress(step=1, time=0.0))
        w.on_event(host, name, events.Beat(time=0.0))
    clock.now += 5
    w.on_event("a", "rank0", events.Progress(step=2, time=0.0))
    assert w.check(lambda: ["rank0", "rank1"]) is StallAction.NONE
    clock.now += 6  # rank1: 11 s without a step
    assert w.check(lambda: ["rank0", "rank1"]) is StallAction.ASK_STACKS
    assert w.check(lambda: ["rank0", "rank1"]) is StallAction.NONE  # waiting for the stacks
    w.on_stack("rank0", "Thread 1 (active): \"MainThread\"\n    step (t.py:3)", "S")
    w.on_stack("rank1", "Thread 1 (active): \"MainThread\"\n    hang (t.py:9)", "S")
    assert w.check(lambda: ["rank0", "rank1"]) is StallAction.REPORT
    procs = {("b", "rank1"): ProcessSpec(name="rank1", argv=("x",), env=(), rank=1, device_id=3)}
    failure = w.failure(procs, lambda n: f"logs/{n}.log", attempt=2, wall=lambda: 1000.0)
    assert (failure.name, failure.host, failure.rank, failure.device_id, failure.reason) == \
        ("rank1", "b", 1, 3, "stalled")
    assert failure.time == pytest.approx(1000.0 - 11.0)  # when it last made progress
    assert "last step 1" in failure.message and failure.traceback_tail
    assert failure.log_path == "logs/rank1.log" and failure.attempt == 2


def test_a_stall_reports_after_the_wait_without_every_stack():
    clock = Clock()
    w = _watch(clock)
    w.on_event("a", "rank0", events.Beat(time=0.0))
    clock.now += 31  # no first step within startup_timeout
    assert w.check(lambda: ["rank0", "rank1"]) is StallAction.ASK_STACKS
    clock.now += STACKS_WAIT_S
    assert w.check(lambda: ["rank0", "rank1"]) is StallAction.REPORT


def test_an_unwatched_or_disabled_watchdog_finds_nothing():
    clock = Clock()
    w = StallWatch(WatchdogSpec(enabled=False), [("a", "rank0", 0)], clock)
    w.on_event("a", "rank0", events.Beat(time=0.0))
    clock.now += 10_000
    assert w.check(lambda: ["rank0"]) is StallAction.NONE
    w = _watch(clock)  # no rank ever beat (a program without mscluster.rank): not watched
    clock.now += 10_000
    assert w.check(lambda: ["rank0", "rank1"]) is StallAction.NONE


def test_the_sink_logs_every_line_and_marks_a_later_attempt(tmp_path):
    sink = LogSink(str(tmp_path / "logs"), None, attempt=1)
    sink.open("rank1")
    sink.write("h", "rank0", "hello")
    sink.write("h", "scheduler", "sched line")
    sink.flush()
    sink.close()
    rank0 = (tmp_path / "logs" / "rank_0.log").read_text()
    assert rank0.startswith("===== mscluster: attempt 1") and rank0.endswith("hello\n")
    assert (tmp_path / "logs" / "rank_1.log").exists()  # a process that never printed has its log
    merged = (tmp_path / "logs" / "all.log").read_text()
    assert "[h:0] hello" in merged and "[h:sched] sched line" in merged and sink.disk_error is None
