"""Feature: the watchdog's limits (``stall_timeout: auto``, sections) and its frozen rule, pure.

Description: ``launcher.watchdog``'s Learned / limit_for / stalled / frozen are driven with made-up
liveness on a made-up clock; ``launcher.stall.StallWatch`` is fed events and agent beats as the
supervisor feeds it.
Expectation: a fast job's stuck rank is found within a minute, a long checkpoint save is not a
stall, a limit set by hand still rules, and a rank is frozen only when its beats stopped and the
kernel says it is stopped (or uninterruptible for as long).
"""
from __future__ import annotations

import pytest

from launcher import watchdog
from launcher.protocol import ProcessSpec
from launcher.spec import WatchdogSpec
from launcher.stall import StallAction, StallWatch
from mscluster import events

AUTO = WatchdogSpec()  # the defaults: auto, startup 900 s, beats every 5 s


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _steps(w: StallWatch, clock: Clock, n: int, seconds: float, ranks=(("a", "rank0"), ("b", "rank1"))) -> None:
    for step in range(n):
        clock.now += seconds
        for host, name in ranks:
            w.on_event(host, name, events.Progress(step=step, time=0.0))


def _watch(clock: Clock, spec: WatchdogSpec = AUTO) -> StallWatch:
    w = StallWatch(spec, [("a", "rank0", 0), ("b", "rank1", 1)], clock)
    for host, name in (("a", "rank0"), ("b", "rank1")):
        w.on_event(host, name, events.Beat(time=0.0))
    return w


def test_auto_learns_a_step_limit_from_the_slowest_step_within_its_bounds():
    learned = watchdog.Learned()
    assert learned.limit("step", AUTO) == watchdog.AUTO_FIRST_S  # nothing timed yet: generous
    assert learned.limit("startup", AUTO) == AUTO.startup_timeout
    for seconds in (0.1, 0.12, 0.1, 0.3, 0.1):
        learned.step(seconds)
    assert learned.limit("step", AUTO) == watchdog.AUTO_FLOOR_S  # 10 x 0.3 s is under the floor
    learned.step(20.0)
    assert learned.limit("step", AUTO) == 200.0  # 10 x the slowest
    learned.step(1000.0)
    assert learned.limit("step", AUTO) == watchdog.AUTO_CEILING_S
    by_hand = WatchdogSpec(stall_timeout=300.0)
    assert learned.limit("step", by_hand) == learned.limit("checkpoint", by_hand) == 300.0


def test_a_section_gets_a_generous_first_limit_then_a_multiple_of_its_slowest():
    learned = watchdog.Learned()
    for _ in range(5):
        learned.step(0.1)
    assert learned.limit("checkpoint", AUTO) == watchdog.AUTO_FIRST_S
    learned.section("checkpoint", 60.0)
    learned.section("checkpoint", 40.0)
    assert learned.limit("checkpoint", AUTO) == 180.0  # 3 x 60 s
    assert learned.in_force(AUTO) == {"startup": 900.0, "step": 30.0, "checkpoint": 180.0}


def test_a_rank_stuck_at_fast_steps_is_stalled_within_a_minute():
    clock = Clock()
    w = _watch(clock)
    _steps(w, clock, 50, 0.1)  # 0.1 s steps: the limit becomes the 30 s floor
    assert w.in_force()["limits"]["step"] == watchdog.AUTO_FLOOR_S
    _steps(w, clock, 1, 0.1, ranks=(("a", "rank0"),))  # rank1 stops making steps (it still beats)
    for _ in range(29):
        clock.now += 1.0
        w.on_event("b", "rank1", events.Beat(time=0.0))
        assert w.check(lambda: ["rank0", "rank1"]) is StallAction.NONE
    clock.now += 1.5
    w.on_event("b", "rank1", events.Beat(time=0.0))
    assert w.check(lambda: ["rank0", "rank1"]) is StallAction.ASK_STACKS
    failure = w.failure({}, lambda n: n, attempt=0, wall=lambda: 0.0)
    assert failure.reason == "stalled" and "no step for 31 s (limit 30 s, auto)" in failure.message


def test_a_long_checkpoint_save_at_fast_steps_is_not_a_stall():
    clock = Clock()
    w = _watch(clock)
    _steps(w, clock, 50, 0.1)
    w.on_event("a", "rank0", events.Section(name="checkpoint", time=0.0))  # rank 0 saves; rank 1 waits for it
    for _ in range(60):
        clock.now += 1.0
        for host, name in (("a", "rank0"), ("b", "rank1")):
            w.on_event(host, name, events.Beat(time=0.0))
        assert w.check(lambda: ["rank0", "rank1"]) is StallAction.NONE
    _steps(w, clock, 1, 0.1, ranks=(("b", "rank1"),))  # rank 1's step may arrive before the save's end
    w.on_event("a", "rank0", events.Section(name="checkpoint", time=0.0, end=True))
    assert w.in_force()["limits"]["checkpoint"] == pytest.approx(3 * 60.1)
    _steps(w, clock, 3, 0.1)
    # the save's time is not a step interval: the step limit stays at the floor
    assert w.in_force()["limits"]["step"] == watchdog.AUTO_FLOOR_S
    w.on_event("a", "rank0", events.Section(name="checkpoint", time=0.0))
    clock.now += 100.0  # a second save, slower than the first, within 3 x the first
    w.on_event("a", "rank0", events.Section(name="checkpoint", time=0.0, end=True))
    clock.now += 20.0  # the steps' limit counts from the save's end, not from the last step
    assert w.check(lambda: ["rank0", "rank1"]) is StallAction.NONE
    assert w.in_force()["limits"]["checkpoint"] == 300.0


def test_a_section_past_its_learned_limit_is_a_stall_named_by_its_section():
    clock = Clock()
    w = _watch(clock)
    _steps(w, clock, 10, 0.1)
    for _ in range(2):
        w.on_event("a", "rank0", events.Section(name="eval", time=0.0))
        clock.now += 20.0
        w.on_event("a", "rank0", events.Section(name="eval", time=0.0, end=True))
        _steps(w, clock, 2, 0.1)
    w.on_event("a", "rank0", events.Section(name="eval", time=0.0))
    clock.now += 59.0
    assert w.check(lambda: []) is StallAction.NONE
    clock.now += 2.0
    assert w.check(lambda: []) is StallAction.ASK_STACKS
    failure = w.failure({}, lambda n: n, attempt=0, wall=lambda: 0.0)
    assert "stalled: in eval for 61 s (limit 60 s, auto)" in failure.message


def test_frozen_needs_silent_beats_and_the_kernels_word():
    spec = AUTO
    live = watchdog.Liveness("rank1", "b", 1, last_beat=0.0, last_step=5, last_progress=0.0)
    busy = watchdog.Liveness("rank0", "a", 0, last_beat=0.0, last_step=5, last_progress=0.0, kernel_state="R",
                             kernel_state_since=0.0)
    after = spec.frozen_after + 0.5
    assert watchdog.frozen([live, busy], after, spec) == []  # no word from the kernel; R: MindSpore's busy wait
    live.kernel_state, live.kernel_state_since = "T", after - 1.0
    assert watchdog.frozen([live, busy], after, spec) == [live]
    assert watchdog.frozen([live], spec.frozen_after - 0.5, spec) == []  # its beats are not late yet
    live.kernel_state = "D"  # uninterruptible: frozen only once it has been so for frozen_after
    assert watchdog.frozen([live], after, spec) == []
    assert watchdog.frozen([live], after - 1.0 + spec.frozen_after, spec) == [live]
    assert watchdog.frozen([live], after, WatchdogSpec(enabled=False)) == []


def test_a_stopped_rank_is_named_frozen_after_three_beats_whatever_stall_timeout_says():
    clock = Clock()
    w = _watch(clock, WatchdogSpec(stall_timeout=3000.0))
    _steps(w, clock, 10, 0.1)
    w.on_states("b", {"rank1": "T"})  # SIGSTOP: its agent's next beat says so
    w.on_states("a", {"rank0": "S"})
    for _ in range(15):
        clock.now += 1.0
        w.on_event("a", "rank0", events.Beat(time=0.0))
        assert w.check(lambda: ["rank0", "rank1"]) is StallAction.NONE
    clock.now += 1.5
    assert w.check(lambda: ["rank0", "rank1"]) is StallAction.ASK_STACKS
    w.on_stack("rank0", 'Thread 1 (idle): "MainThread"\n    wait (mindspore/x.py:1)', "S")
    w.on_stack("rank1", 'Thread 2 (idle): "MainThread"\n    step (t.py:9)', "T")
    assert w.check(lambda: ["rank0", "rank1"]) is StallAction.REPORT
    procs = {("b", "rank1"): ProcessSpec(name="rank1", argv=("x",), env=(), rank=1, device_id=0)}
    failure = w.failure(procs, lambda n: n, attempt=0, wall=lambda: 0.0)
    assert (failure.name, failure.reason) == ("rank1", "frozen")
    assert "frozen: the kernel says it is stopped (SIGSTOP or a debugger)" in failure.message
    assert failure.traceback_tail == ("step (t.py:9)",)


def test_a_silent_rank_the_kernel_says_runs_is_left_to_the_stall_limit():
    clock = Clock()
    w = _watch(clock)
    _steps(w, clock, 10, 0.1)
    w.on_states("b", {"rank1": "R"})  # MindSpore's graph run holds the GIL: no beats, but busy
    clock.now += 25.0
    assert w.check(lambda: ["rank0", "rank1"]) is StallAction.NONE
    clock.now += 6.0
    assert w.check(lambda: ["rank0", "rank1"]) is StallAction.ASK_STACKS
    assert not w.frozen_ranks


@pytest.mark.parametrize("line", ['{"v":1,"kind":"section","time":1,"name":"step"}',
                                  '{"v":1,"kind":"section","time":1,"name":"a b"}',
                                  '{"v":1,"kind":"section","time":1,"name":"ckpt","end":1}'])
def test_a_bad_section_event_is_refused(line):
    with pytest.raises(events.EventError):
        events.decode(line)


def test_the_agents_beat_carries_each_ranks_kernel_state():
    from launcher.protocol import Alive, ProtocolError, decode_message, encode_message

    beat = Alive(time=5.0, states={"rank0": "T", "rank1": "S"})
    assert decode_message(encode_message(beat)) == beat
    assert decode_message('{"ev":"alive","time":5}') == Alive(time=5.0)  # an older agent's beat
    with pytest.raises(ProtocolError):
        decode_message('{"ev":"alive","time":5,"states":{"rank0":"stopped"}}')
