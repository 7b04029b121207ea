"""Feature: the supervisor runs one attempt across hosts and says how it ended.

Description: a whole ``launcher.supervisor.Supervisor`` runs in-process against fake executors
whose sessions play a host's agent: they read the spec and the control lines the supervisor
writes, and answer with encoded agent messages (Started, Output, Relayed events, Exited, Stacks,
Done) the way ``launcher.agent`` does; a fake clock drives every timeout.
Expectation: the end state, the failures (root cause first), status.json and the control lines
sent are what a user of a real job sees: success; a rank failure stopping the others; a host gone
silent is lost; a stall asks for stacks and names the culprit; preemption; the scheduler left
over by a program that never joins the cluster; an interrupt names its signal; a full disk.
"""
from __future__ import annotations

import json
import os
import re
import signal
import time
from typing import Callable, Mapping, Optional, Sequence

import pytest

from launcher.executor import Session
from launcher.hostpool import Why, host_cause
from launcher.lifecycle import AttemptState, Interrupted
from launcher.protocol import (AgentSpec, Alive, Done, Exited, Output, ProcessSpec, Relayed, Stacks, Started,
                               decode_control, encode_message, ControlMessage)
from launcher.report import order_failures
from launcher.spec import StragglerAction, StragglerSpec, WatchdogSpec
from launcher.status import format_status, read_status
from launcher.supervisor import LEFTOVER_WAIT_S, LogSink, Supervisor
from mscluster import events
from mscluster.rank import PREEMPT_EXIT


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FakeAgent(Session):
    """A host's agent as the supervisor sees it: the spec, then control lines in; messages out.

    It answers as ``launcher.agent`` does: ``stop`` or EOF stops what still runs (Exited by
    SIGTERM), a failed process stops the host's others, ``stacks`` sends each live process's
    stack, and when every process has ended it sends Done and its session ends.
    """

    def __init__(self, host: str, on_stderr, on_lines) -> None:
        super().__init__(host, on_stderr, on_lines)
        self.spec: Optional[AgentSpec] = None
        self.controls: list[str] = []  # the control words the launcher sent, in order
        self.live: dict[str, ProcessSpec] = {}
        self.failed = False
        self.code: Optional[int] = None
        self.silent = False  # a host gone dark: nothing it would say arrives
        self.killed = False
        self.stacks: Callable[[str], str] = lambda name: f"Thread 1 (active): \"MainThread\"\n    main (x.py:1)"
        self.ended = False

    # -- the session seam the supervisor drives
    def _write(self, data: bytes) -> None:
        for line in data.decode().splitlines():
            if self.spec is None:
                self.spec = AgentSpec.from_json(line)
                continue
            word = decode_control(line)
            self.controls.append(word.value)
            if word is ControlMessage.STOP:
                self.stop_all()
            elif word is ControlMessage.STACKS:
                self.say(*[Stacks(name=n, text=self.stacks(n), method="py-spy", state="S") for n in self.live])

    def _close_stdin(self) -> None:
        self.controls.append("EOF")
        self.stop_all()

    def _wait(self, timeout):
        return self.code

    def _kill(self) -> None:
        self.killed = True
        self.end(-9)

    # -- what the test (or its answers) make the agent say
    def say(self, *messages) -> None:
        if not self.silent and not self.ended:
            self._on_lines(self, [encode_message(m) for m in messages])

    def start_all(self) -> None:
        assert self.spec is not None
        self.live = {p.name: p for p in self.spec.processes}
        self.say(*[Started(name=p.name, pid=100 + i) for i, p in enumerate(self.spec.processes)])

    def exit(self, name: str, code: Optional[int] = 0, sig: Optional[str] = None, error=None) -> None:
        proc = self.live.pop(name, None)
        if proc is None:
            return  # already ended (stopped with its host's others)
        self.say(Exited(name=name, rank=proc.rank, code=code, signal=sig, time=time.time(), error=error))
        if code != 0:
            self.failed = True
            self.stop_all()  # one failed: the host's others go too
        self._done_if_all_ended()

    def stop_all(self) -> None:
        if self.live:
            self.failed = True
        for name in list(self.live):
            self.exit(name, None, "SIGTERM")
        self._done_if_all_ended()

    def _done_if_all_ended(self) -> None:
        if not self.live and not self.ended and self.spec is not None:
            self.say(Done(ok=not self.failed))
            self.end(1 if self.failed else 0)

    def end(self, code: int) -> None:
        if not self.ended:
            self.ended, self.code = True, code
            self._on_lines(self, None)


class FakeExecutor:
    def __init__(self, host: str) -> None:
        self.host = host
        self.agent: Optional[FakeAgent] = None

    def start(self, argv: Sequence[str], *, env: Mapping[str, str], cwd, on_stderr=None, on_lines=None) -> FakeAgent:
        self.agent = FakeAgent(self.host, on_stderr, on_lines)
        return self.agent

    def run(self, *args, **kwargs):
        raise AssertionError("the supervisor runs nothing to completion")

    def close(self) -> None:
        pass


def _specs(job_dir: str, hosts: int = 2, ranks_per_host: int = 2, scheduler: bool = False,
           keepalive: float = 0.0) -> dict[str, AgentSpec]:
    specs = {}
    for h in range(hosts):
        procs = []
        if scheduler and h == 0:
            procs.append(ProcessSpec(name="scheduler", argv=("python", "-m", "trainer.scheduler"), env=()))
        for local in range(ranks_per_host):
            rank = h * ranks_per_host + local
            procs.append(ProcessSpec(name=f"rank{rank}", argv=("python", "train.py"), env=(), rank=rank,
                                     device_id=local, local_rank=local, local_size=ranks_per_host))
        specs[f"host{h}"] = AgentSpec(host=f"host{h}", job_dir=job_dir, processes=tuple(procs),
                                      keepalive_interval=keepalive, keepalive_count=3)
    return specs


class Attempt:
    """A supervisor over fake hosts, driven turn by turn on a fake clock."""

    def __init__(self, tmp_path, console=None, **kwargs) -> None:
        self.job_dir = str(tmp_path / "job")
        watch = kwargs.pop("watch", WatchdogSpec(enabled=False))
        preempt = kwargs.pop("preempt", None)
        stragglers = kwargs.pop("stragglers", StragglerSpec(action=StragglerAction.OFF))
        self.specs = _specs(self.job_dir, **kwargs)
        self.executors = {h: FakeExecutor(h) for h in self.specs}
        self.clock = FakeClock()
        self.sink = LogSink(os.path.join(self.job_dir, "logs"), console, 0)
        self.sup = Supervisor(self.specs, self.executors, agent_argv=lambda h: ["agent"], agent_cwd=lambda h: None,
                              sink=self.sink, watch=watch, preempt=preempt, clock=self.clock, stragglers=stragglers)
        self.sup.start_agents(threaded=False)

    def agent(self, host: str) -> FakeAgent:
        agent = self.executors[host].agent
        assert agent is not None
        return agent

    def start_all(self) -> None:
        for h in self.specs:
            self.agent(h).start_all()
        self.drive(0)

    def drive(self, seconds: float, tick: float = 0.25) -> None:
        """Run the loop for ``seconds`` of the fake clock (every queued item handled)."""
        end = self.clock.now + seconds
        while True:
            while not self.sup.items.empty():
                self.sup.turn(wait=0)
            self.sup.turn(wait=0)
            if self.clock.now >= end or self.sup.all_gone():
                break
            self.clock.advance(tick)

    def finish(self, limit: float = 120.0):
        self.drive(limit)
        assert self.sup.all_gone(), "the attempt did not end"
        self.sink.close()
        return self.sup.finish()

    def status(self) -> dict:
        with open(os.path.join(self.job_dir, "status.json"), encoding="utf-8") as handle:
            return json.load(handle)


def test_every_rank_exiting_0_succeeds(tmp_path):
    a = Attempt(tmp_path)
    a.start_all()
    assert a.sup.state is AttemptState.RUNNING
    for h in a.specs:
        for p in a.specs[h].processes:
            a.agent(h).exit(p.name, 0)
    result = a.finish()
    assert result.state is AttemptState.SUCCEEDED and result.ok and result.failures == []
    status = a.status()
    assert status["state"] == "succeeded"
    assert {p["state"] for p in status["processes"].values()} == {"succeeded"}
    assert all(a.agent(h).controls == [] for h in a.specs)  # nobody was told to stop


def test_a_rank_failure_stops_the_others_and_is_the_root_cause(tmp_path):
    a = Attempt(tmp_path)
    a.start_all()
    a.agent("host1").say(Output(name="rank3", line="ValueError: bad batch", stream="stderr"))
    a.agent("host1").exit("rank3", 1)
    result = a.finish()
    assert result.state is AttemptState.FAILED
    assert a.agent("host0").controls == ["stop", "EOF"]  # the other host was told to stop (the word, then EOF: a launcher alive)
    root = order_failures(result.failures)[0]
    assert (root.name, root.host, root.exit_code, root.during_teardown) == ("rank3", "host1", 1, False)
    assert "ValueError: bad batch" in root.message + "".join(root.traceback_tail)
    stopped = [f for f in result.failures if f.host == "host0"]
    assert stopped and all(f.during_teardown for f in stopped)
    status = a.status()
    assert status["state"] == "failed"
    assert status["processes"]["rank3"]["state"] == "failed"
    assert status["processes"]["rank0"]["state"] == "stopped"


def test_ranks_a_stop_reached_before_they_started_are_stopped_not_lost(tmp_path):
    """A fleet whose rank fails within a second: a late host's agent gets the stop before it started its
    ranks, starts none, and ends in order (Done): its ranks were stopped, nothing was lost."""
    a = Attempt(tmp_path)
    a.agent("host0").start_all()
    a.drive(0)
    a.agent("host0").exit("rank0", 1)  # host1's agent has not started its ranks yet
    result = a.finish()
    assert a.agent("host1").controls == ["stop", "EOF"]
    assert [f.name for f in result.failures if not f.during_teardown] == ["rank0"]
    assert not [f for f in result.failures if f.host == "host1"]
    states = {name: p["state"] for name, p in a.status()["processes"].items()}
    assert states == {"rank0": "failed", "rank1": "stopped", "rank2": "stopped", "rank3": "stopped"}


def test_an_agent_gone_without_done_loses_its_ranks(tmp_path):
    a = Attempt(tmp_path)
    a.start_all()
    a.agent("host1").end(1)  # no Done: its ranks' ends are unknown
    result = a.finish()
    assert order_failures(result.failures)[0].name == "agent"
    states = {name: p["state"] for name, p in a.status()["processes"].items()}
    assert (states["rank2"], states["rank3"]) == ("lost", "lost") and states["rank0"] == "stopped"


def test_a_scheduler_left_waiting_by_ranks_that_never_joined_is_stopped_and_the_job_succeeds(tmp_path):
    a = Attempt(tmp_path, scheduler=True)
    a.start_all()
    for h in a.specs:
        for p in a.specs[h].processes:
            if p.rank is not None:
                a.agent(h).exit(p.name, 0)
    a.drive(LEFTOVER_WAIT_S - 1.0)
    assert a.sup.state is AttemptState.FINISHING and a.agent("host0").controls == []  # it may still leave by itself
    a.drive(2.0)
    assert a.agent("host0").controls == ["stop"]  # its agent TERMs it
    result = a.finish()
    assert result.state is AttemptState.SUCCEEDED and result.failures == []
    status = a.status()
    assert status["state"] == "succeeded"
    assert status["processes"]["scheduler"]["state"] == "stopped"
    assert status["processes"]["rank0"]["state"] == "succeeded"
    assert a.clock.now - 1000.0 < 10  # within seconds of the last rank


def test_a_scheduler_that_leaves_while_ranks_run_is_a_failure_naming_it(tmp_path):
    a = Attempt(tmp_path, scheduler=True)
    a.start_all()
    a.agent("host0").exit("scheduler", 1)
    result = a.finish()
    assert result.state is AttemptState.FAILED
    root = order_failures(result.failures)[0]
    assert (root.name, root.host, root.exit_code) == ("scheduler", "host0", 1)


def test_a_rank_failure_with_the_scheduler_waiting_still_fails(tmp_path):
    a = Attempt(tmp_path, scheduler=True)
    a.start_all()
    a.agent("host1").exit("rank2", 0)
    a.agent("host1").exit("rank3", 0)
    a.agent("host0").exit("rank1", 0)
    a.agent("host0").exit("rank0", 2)
    result = a.finish()
    assert result.state is AttemptState.FAILED
    assert order_failures(result.failures)[0].name == "rank0"


@pytest.mark.parametrize("exc, reason, signame", [
    (Interrupted(signal.SIGTERM), "interrupted (SIGTERM)", "SIGTERM"),
    (Interrupted(signal.SIGHUP), "interrupted (SIGHUP)", "SIGHUP"),
    (KeyboardInterrupt(), "interrupted (Ctrl-C)", "SIGINT"),
])
def test_an_interrupt_names_its_signal(tmp_path, caplog, exc, reason, signame):
    a = Attempt(tmp_path)
    a.start_all()
    with caplog.at_level("WARNING", logger="launcher.supervisor"):
        a.sup.interrupt(exc)
    assert f"stopping every rank: {reason}" in caplog.text
    result = a.finish()
    assert result.state is AttemptState.INTERRUPTED and result.interrupted_by == signame
    status = a.status()
    assert status["state"] == "interrupted" and status["interrupted_by"] == signame
    assert all(a.agent(h).controls == ["stop", "EOF"] for h in a.specs)


def _step(a: Attempt, host: str, name: str, step: int) -> None:
    a.agent(host).say(Relayed(name=name, event=events.Progress(step=step, time=time.time(), loss=1.0)))


def test_a_slow_rank_is_named_a_straggler_in_the_log_status_and_result(tmp_path, caplog):
    a = Attempt(tmp_path, stragglers=StragglerSpec())  # warn, threshold 0.75, window 10
    a.start_all()
    ranks = (("rank0", "host0"), ("rank1", "host0"), ("rank2", "host1"), ("rank3", "host1"))
    now, named_at = 5000.0, None
    with caplog.at_level("WARNING", logger="launcher.supervisor"):
        for step in range(1, 60):
            # rank 3 computes at 60% speed from step 20; every rank waits in the exchange for the slowest
            compute = {name: 0.1 * (1 + 0.05 * ((step * (i + 3)) % 5 - 2)) / (0.6 if name == "rank3" and step >= 20
                                                                                  else 1.0)
                       for i, (name, _) in enumerate(ranks)}
            now += max(compute.values()) + 0.02
            for name, host in ranks:
                a.agent(host).say(Relayed(name=name, event=events.Progress(
                    step=step, time=now, loss=1.0, scalars={events.COMPUTE_S: compute[name]})))
            a.drive(0)
            if named_at is None and "straggler:" in caplog.text:
                named_at = step
    assert named_at is not None and named_at - 20 < 20, named_at
    warnings = [r.getMessage() for r in caplog.records if "straggler:" in r.getMessage()]
    assert len(warnings) == 1 and "rank 3 on host1 runs at 0." in warnings[0], warnings
    said = re.search(r"runs at ([0-9.]+) of the fastest rank's speed over its last 10 steps", warnings[0])
    assert said and 0.5 < float(said.group(1)) < 0.7, warnings[0]
    for host in a.specs:
        for p in a.specs[host].processes:
            a.agent(host).exit(p.name, 0)
    result = a.finish()
    assert result.ok and [(s["rank"], s["host"]) for s in result.stragglers] == [(3, "host1")]
    named = a.status()["stragglers"]
    assert [(s["rank"], s["host"]) for s in named] == [(3, "host1")]
    assert 0.5 < named[0]["relative"] < 0.7 and named[0]["since_step"] >= 20 and named[0]["since"] > 5000
    shown = format_status(read_status(a.job_dir))
    assert f"straggler: rank 3 on host1 at {named[0]['relative']:.2f} of the fastest" in shown and f"since step {named[0]['since_step']}" in shown


def test_a_straggler_with_action_exclude_makes_rank0_save_then_ends_the_attempt_with_its_host_at_fault(tmp_path):
    """stragglers.action: exclude: once named, every rank is told (`preempt`: rank 0 saves and leaves); the
    attempt then fails with the straggler as its root cause, which launcher.hostpool reads as the host's fault."""
    a = Attempt(tmp_path, stragglers=StragglerSpec(action=StragglerAction.EXCLUDE))
    a.start_all()
    ranks = (("rank0", "host0"), ("rank1", "host0"), ("rank2", "host1"), ("rank3", "host1"))
    now = 5000.0
    for step in range(1, 40):
        compute = {name: 0.1 / (0.6 if name == "rank2" and step >= 5 else 1.0) for name, _ in ranks}
        now += max(compute.values()) + 0.02
        for name, host in ranks:
            a.agent(host).say(Relayed(name=name, event=events.Progress(
                step=step, time=now, loss=1.0, scalars={events.COMPUTE_S: compute[name]})))
        a.drive(0)
        if a.agent("host0").controls:
            break
    assert step < 30 and all(a.agent(h).controls == ["preempt"] for h in a.specs), step
    a.agent("host0").say(Relayed(name="rank0", event=events.Checkpoint(step=step, path="ckpt", time=now)))
    a.agent("host0").exit("rank0", PREEMPT_EXIT)  # saved a checkpoint and left
    result = a.finish()
    assert result.state is AttemptState.FAILED and not result.preempted
    root = order_failures(result.failures)[0]
    assert (root.reason, root.host, root.rank) == ("straggler", "host1", 2)
    assert "rank 2 on host1 runs at 0.6" in root.message and "rank0 on host0 saved a checkpoint and left" in root.message
    assert host_cause(root) is Why.STRAGGLER
    assert result.last_checkpoint_step == step  # nothing done after the save: no step lost


def test_a_host_gone_silent_is_lost_and_the_others_stopped(tmp_path):
    a = Attempt(tmp_path, keepalive=1.0)  # silent past 1 s x 3 beats: lost
    a.start_all()
    a.agent("host1").silent = True  # the host (or the network to it) went down
    for _ in range(8):
        a.agent("host0").say(Alive(time=time.time()))
        a.drive(0.5)
    assert a.agent("host0").controls.count("beat") >= 3  # the launcher beats to every agent
    assert a.agent("host1").killed  # its session is cut off, not waited for
    result = a.finish()
    assert result.state is AttemptState.FAILED
    root = order_failures(result.failures)[0]
    assert (root.host, root.name, root.reason) == ("host1", "agent", "lost")
    assert "no word from the agent on host1" in root.message
    assert a.agent("host0").controls[-1] == "EOF"
    assert {a.status()["processes"][n]["state"] for n in ("rank2", "rank3")} == {"lost"}


def test_a_beating_host_is_not_lost(tmp_path):
    a = Attempt(tmp_path, keepalive=1.0)
    a.start_all()
    for _ in range(20):
        for h in a.specs:
            a.agent(h).say(Alive(time=time.time()))
        a.drive(0.5)
    assert a.sup.state is AttemptState.RUNNING and a.sup.result.failures == []


def test_a_stall_asks_for_stacks_and_names_the_culprit(tmp_path):
    watch = WatchdogSpec(enabled=True, stall_timeout=10.0, startup_timeout=60.0, beat_interval=1.0)
    a = Attempt(tmp_path, watch=watch)
    a.start_all()
    for name, host in (("rank0", "host0"), ("rank1", "host0"), ("rank2", "host1"), ("rank3", "host1")):
        _step(a, host, name, 1)
    for step in range(2, 5):  # rank 2 hangs at step 1; the others reach step 4 and wait for it
        for name, host in (("rank0", "host0"), ("rank1", "host0"), ("rank3", "host1")):
            _step(a, host, name, step)
        a.drive(1.0)
    a.drive(6.0)  # rank 2's last step was 9 s ago
    assert a.sup.state is AttemptState.RUNNING and "stacks" not in a.agent("host0").controls  # not yet 10 s
    a.drive(2.0)
    assert "stacks" in a.agent("host0").controls and "stacks" in a.agent("host1").controls
    result = a.finish()
    assert result.state is AttemptState.FAILED
    root = order_failures(result.failures)[0]
    assert (root.name, root.host, root.reason) == ("rank2", "host1", "stalled")
    # its beats stopped and its stack is outside MindSpore: frozen in Python
    assert "the culprit: frozen in Python outside MindSpore (main (x.py:1))" in root.message
    assert root.traceback_tail  # its main thread's frames, from the stack the agent sent


def test_a_stopped_rank_is_named_frozen_from_its_agents_word_and_status_shows_the_limits(tmp_path):
    a = Attempt(tmp_path, watch=WatchdogSpec())  # the defaults: stall_timeout auto, beats every 5 s
    a.start_all()
    ranks = (("rank0", "host0"), ("rank1", "host0"), ("rank2", "host1"), ("rank3", "host1"))
    for step in range(1, 4):
        for name, host in ranks:
            _step(a, host, name, step)
        a.drive(0.5)
    # rank 2 is SIGSTOPped: its agent's beat says T; the others wait in MindSpore (no beats, kernel S)
    a.agent("host0").say(Alive(time=time.time(), states={"rank0": "S", "rank1": "S"}))
    a.agent("host1").say(Alive(time=time.time(), states={"rank2": "T", "rank3": "S"}))
    a.drive(15.0)
    assert "stacks" not in a.agent("host1").controls  # three beats (16 s) have not passed yet
    a.drive(2.0)
    assert "stacks" in a.agent("host1").controls  # frozen, long before any stall limit
    result = a.finish()
    root = order_failures(result.failures)[0]
    assert (root.name, root.host, root.reason) == ("rank2", "host1", "frozen")
    assert "the kernel says it is stopped" in root.message
    watch = a.status()["watchdog"]  # what was in force, for `mscluster status`
    assert watch["stall_timeout"] == "auto" and watch["frozen_after"] == 16.0
    assert watch["limits"]["step"] == 600.0  # too few steps timed yet: the first, generous limit


def test_preemption_tells_the_agents_and_ends_preempted_when_rank0_saved(tmp_path):
    import threading

    preempt = threading.Event()
    a = Attempt(tmp_path, preempt=preempt)
    a.start_all()
    preempt.set()  # SIGUSR1 to the launcher
    a.drive(0.5)
    assert all(a.agent(h).controls == ["preempt"] for h in a.specs)
    a.agent("host0").exit("rank0", PREEMPT_EXIT)  # saved a checkpoint and left
    result = a.finish()
    assert result.state is AttemptState.PREEMPTED and result.preempted
    assert not [f for f in result.failures if not f.during_teardown]
    assert a.status()["state"] == "preempted"


def test_preemption_with_no_rank_leaving_stops_after_the_wait(tmp_path):
    import threading

    from launcher.supervisor import PREEMPT_WAIT_S

    preempt = threading.Event()
    a = Attempt(tmp_path, preempt=preempt)
    a.start_all()
    preempt.set()
    a.drive(PREEMPT_WAIT_S - 1)
    assert a.sup.state is AttemptState.RUNNING
    a.drive(2.0)
    assert a.agent("host0").controls == ["preempt", "stop", "EOF"]
    assert a.finish().state is AttemptState.PREEMPTED


class FullDisk:
    """A log file on a full disk: every write fails with ENOSPC."""

    def write(self, data: str) -> int:
        raise OSError(28, "No space left on device")

    def flush(self) -> None:
        raise OSError(28, "No space left on device")

    def close(self) -> None:
        pass


def test_a_full_disk_under_the_logs_stops_the_job_naming_it(tmp_path, monkeypatch):
    import launcher.logsink

    a = Attempt(tmp_path)
    a.start_all()
    monkeypatch.setattr(launcher.logsink, "_open_log", lambda path: FullDisk())
    a.sink._files.clear()
    a.agent("host0").say(Output(name="rank0", line="epoch 1"))
    result = a.finish()
    assert result.state is AttemptState.FAILED
    root = order_failures(result.failures)[0]
    assert root.name == "launcher" and root.reason == "disk"
    assert "cannot write the logs" in root.message and "No space left on device" in root.message


def test_the_console_shows_rank0_and_what_is_notable_from_others(tmp_path):
    import io

    console = io.StringIO()
    a = Attempt(tmp_path, console=console)
    a.start_all()
    a.agent("host0").say(Output(name="rank0", line="epoch 1 loss 2.0"), Output(name="rank1", line="epoch 1 loss 2.1"),
                         Output(name="rank1", line="WARNING: slow data"),
                         Output(name="rank0", line="[INFO] DISTRIBUTED chatter"))
    a.drive(0)
    shown = console.getvalue()
    assert "[host0:0] epoch 1 loss 2.0" in shown and "[host0:1] WARNING: slow data" in shown
    assert "loss 2.1" not in shown and "chatter" not in shown
    with open(os.path.join(a.job_dir, "logs", "all.log"), encoding="utf-8") as handle:
        merged = handle.read()
    assert "[host0:1] epoch 1 loss 2.1" in merged and "[host0:0] [INFO] DISTRIBUTED chatter" in merged


def test_a_sigkilled_rank_is_the_root_cause_by_its_signal(tmp_path):
    a = Attempt(tmp_path)
    a.start_all()
    a.agent("host0").exit("rank1", None, "SIGKILL")
    result = a.finish()
    root = order_failures(result.failures)[0]
    assert (root.name, root.signal, root.outcome(), root.during_teardown) == ("rank1", "SIGKILL", "SIGKILL", False)
    assert a.agent("host1").controls == ["stop", "EOF"]


@pytest.mark.parametrize("finished_first", [True, False])
def test_a_crash_after_the_rank_reported_its_work_finished_is_not_a_failure(tmp_path, finished_first):
    a = Attempt(tmp_path, hosts=1)
    a.start_all()
    a.agent("host0").exit("rank1", 0)
    if finished_first:
        a.agent("host0").say(Relayed(name="rank0", event=events.Finished(time=time.time())))
    a.agent("host0").exit("rank0", None, "SIGSEGV")
    result = a.finish()
    if finished_first:
        # the agent reports its host not ok (a process ended by a signal) but nothing failed: succeeded
        assert result.state is AttemptState.SUCCEEDED and result.failures == []
        assert {p["state"] for p in a.status()["processes"].values()} == {"succeeded"}
        with open(os.path.join(a.job_dir, "logs", "all.log"), encoding="utf-8") as handle:
            assert "after it reported its work finished (a crash in the teardown at exit)" in handle.read()
    else:
        assert result.state is AttemptState.FAILED and result.failures[0].signal == "SIGSEGV"


def test_an_agent_that_cannot_start_fails_the_attempt_naming_its_host(tmp_path):
    class Unreachable(FakeExecutor):
        def start(self, argv, **kwargs):
            raise OSError("connection refused")

    job_dir = str(tmp_path / "job")
    specs = _specs(job_dir)
    executors = {"host0": FakeExecutor("host0"), "host1": Unreachable("host1")}
    clock = FakeClock()
    sink = LogSink(os.path.join(job_dir, "logs"), None, 0)
    sup = Supervisor(specs, executors, agent_argv=lambda h: ["agent"], agent_cwd=lambda h: None, sink=sink,
                     clock=clock)
    sup.start_agents(threaded=False)
    executors["host0"].agent.start_all()
    while not sup.all_gone():
        sup.turn(wait=0)
        clock.advance(0.25)
    result = sup.finish()
    assert result.state is AttemptState.FAILED
    root = order_failures(result.failures)[0]
    assert root.host == "host1" and root.name == "agent" and "could not start the agent on host1" in root.message
    assert executors["host0"].agent.controls == ["stop", "EOF"]


def test_run_starts_agents_in_threads_and_returns_the_end(tmp_path):
    """``run()`` itself (agents started from threads, the loop on the real clock) with agents that
    run their processes to a clean end as soon as they have their spec."""

    class QuickAgent(FakeAgent):
        def _write(self, data: bytes) -> None:
            first = self.spec is None
            super()._write(data)
            if first:
                self.start_all()
                for name in list(self.live):
                    self.exit(name, 0)

    class QuickExecutor(FakeExecutor):
        def start(self, argv, *, env, cwd, on_stderr=None, on_lines=None):
            self.agent = QuickAgent(self.host, on_stderr, on_lines)
            return self.agent

    job_dir = str(tmp_path / "job")
    specs = _specs(job_dir, hosts=3)
    sink = LogSink(os.path.join(job_dir, "logs"), None, 0)
    sup = Supervisor(specs, {h: QuickExecutor(h) for h in specs}, agent_argv=lambda h: ["agent"],
                     agent_cwd=lambda h: None, sink=sink)
    began = time.monotonic()
    result = sup.run()
    assert result.state is AttemptState.SUCCEEDED and result.all_started_at is not None
    assert time.monotonic() - began < 5
