"""Run one attempt of a job: an agent per host, every line relayed, all stopped at the first failure.

An attempt's life is ``launcher.lifecycle.AttemptState`` (the state machine is drawn there):
STARTING -> RUNNING -> SUCCEEDED, or -> FINISHING (every rank ended well, the scheduler is left:
its agent stops it) -> SUCCEEDED, or -> STOPPING -> FAILED | INTERRUPTED | PREEMPTED. The loop's
control flow branches on that state.

STARTING: agents are being started; RUNNING: every process of every host has started. STOPPING
closes every agent's stdin; each agent then stops its processes (TERM to the process group, a
grace period, KILL) and exits. An agent that does not exit within its grace period plus a margin
is cut off (its SSH channel closed, or its process group killed locally), which also makes it
stop its ranks. The executors are passed in, so the same code runs local and SSH hosts.

What the ranks say reaches this module as typed messages (``launcher.protocol``), their events
(``mscluster.events``) among them: progress and evaluations are never read from printed text.
"""
from __future__ import annotations

import collections
import logging
import os
import queue
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Deque, Mapping, Optional, Union

from launcher.attempt import AttemptMachine, outcome
from launcher.executor import Executor, Session
from launcher.liveness import Keepalive
from launcher.logsink import LogSink, console_levels, is_notable, mindspore_log_level  # noqa: F401 - re-exported
from launcher.lifecycle import AttemptState, interrupt_reason, interrupt_signal
from launcher.protocol import (ControlMessage, AgentMessage, AgentSpec, Alive, Done, Exited, Output,
                               ProtocolError, Relayed, Stacks, Started, decode_message,
                               encode_control)
from launcher.preemption import PREEMPT_WAIT_S, PreemptAction, Preemption  # noqa: F401 - PREEMPT_WAIT_S re-exported
from launcher.report import RankFailure, traceback_tail
from launcher.spec import StragglerAction, StragglerSpec, WatchdogSpec
from launcher.stall import STACKS_WAIT_S, StallAction, StallWatch  # noqa: F401 - STACKS_WAIT_S re-exported
from launcher.status import StatusWriter
from launcher.stragglers import Change, StragglerScore, StragglerScorer, describe as describe_straggler
from mscluster import events
from mscluster.rank import PREEMPT_EXIT

logger = logging.getLogger(__name__)

STOP_MARGIN_S = 15.0
STATUS_EVERY_S = 0.5  # status.json is rewritten at most this often while the attempt runs
# every rank has ended well: how long the scheduler may take to leave by itself before its agent stops it. It has
# no worker left to serve: a program that never joined the cluster leaves it waiting forever, the built-in
# trainer leaves without MindSpore's teardown (trainer.distributed.skips_cluster_teardown), and a program that
# runs the teardown has finished it by the time its process ended
LEFTOVER_WAIT_S = 0.5
OUTPUT_TAIL = 30
AGENT = "agent"  # the name of a host's agent in logs and failure tables


@dataclass
class AttemptResult:
    """How one attempt ended."""

    state: AttemptState
    failures: list[RankFailure] = field(default_factory=list)
    eval: dict[str, float] = field(default_factory=dict)
    started_at: float = 0.0
    ended_at: float = 0.0
    first_step_at: Optional[float] = None  # wall time the first step of any rank arrived
    last_step: Optional[int] = None  # the highest step rank 0 reported
    last_checkpoint_step: Optional[int] = None  # the step of the last complete checkpoint reported
    stopped_at: Optional[float] = None  # wall time the teardown began (None: it ended by itself)
    step_seconds: float = 0.0  # wall time between rank 0's first and last step of this attempt
    all_started_at: Optional[float] = None  # wall time every process of every host had started
    all_progress_at: Optional[float] = None  # wall time every rank had reported its first step
    interrupted_by: Optional[str] = None  # the signal that interrupted it (SIGINT, SIGTERM, SIGHUP)
    stragglers: list[dict] = field(default_factory=list)  # each rank named a straggler, as it was when named

    @property
    def ok(self) -> bool:
        return self.state is AttemptState.SUCCEEDED

    @property
    def interrupted(self) -> bool:
        return self.state is AttemptState.INTERRUPTED

    @property
    def preempted(self) -> bool:
        return self.state is AttemptState.PREEMPTED


# -- what reaches the loop besides agent messages ----------------------------------------------------

@dataclass(frozen=True)
class AgentStderr:
    """A line the agent process itself (or the SSH session) wrote to stderr."""

    line: str


@dataclass(frozen=True)
class AgentGone:
    """The agent's session ended (after Done, or without it: a crash, a lost connection)."""

    code: Optional[int]
    message: str = ""


HostItem = Union[AgentMessage, AgentStderr, AgentGone]

@dataclass
class _Host:
    spec: AgentSpec
    executor: Executor
    session: Optional[Session] = None
    started: set = field(default_factory=set)  # names of its processes that have started
    done: bool = False
    gone: bool = False
    heard_at: Optional[float] = None  # monotonic time of its agent's last word (None: not started yet)
    read_at: float = float("-inf")  # when its reader thread last got bytes: a busy launcher's backlog is no silence
    start_error: str = ""  # why its agent could not be given its spec (the EOF that follows reports it)


class Supervisor:
    """Runs one attempt across every host and returns how it ended."""

    def __init__(self, specs: Mapping[str, AgentSpec], executors: Mapping[str, Executor],
                 agent_argv: Callable[[str], list[str]], agent_cwd: Callable[[str], Optional[str]],
                 sink: LogSink, attempt: int = 0, agent_env: Callable[[str], Mapping[str, str]] = lambda h: {},
                 watch: WatchdogSpec = WatchdogSpec(enabled=False), preempt: Optional[threading.Event] = None,
                 clock: Callable[[], float] = time.monotonic,
                 stragglers: StragglerSpec = StragglerSpec(action=StragglerAction.OFF),
                 hosts_info: Optional[Mapping] = None):
        self.clock = clock  # monotonic seconds: every timeout of the attempt is measured on it (tests drive it)
        self.hosts = {h: _Host(spec, executors[h]) for h, spec in specs.items()}
        self.preemption = Preemption(preempt, clock)  # preempt: set by a SIGUSR1 handler (Slurm's warning)
        self.agent_argv, self.agent_cwd, self.sink, self.attempt = agent_argv, agent_cwd, sink, attempt
        self.agent_env = agent_env
        self.stall = StallWatch(watch, [(h, p.name, p.rank) for h, host in self.hosts.items()
                                        for p in host.spec.processes if p.rank is not None], clock)
        self.stragglers = StragglerScorer(stragglers)
        # stragglers.action: exclude: the straggler named, rank 0 saves as a preempted rank does (the same
        # `preempt` word), then the attempt stops with the straggler as its root cause (launcher.hostpool)
        self.evicting: Optional[StragglerScore] = None
        self.eviction = Preemption(threading.Event(), clock)
        self.exited: set = set()
        self.finished: set = set()  # (host, name) of processes whose entry point returned (events.Finished)
        self._rank0_first_step_at: Optional[float] = None
        self._waiting_first_step = set(self.stall.liveness)  # (host, name) of ranks yet to report a step
        first = next(iter(specs.values()), None)
        self.keepalive = Keepalive(first.keepalive_interval if first is not None else 0.0,
                                   first.keepalive_count if first is not None else 3, clock)
        self.items: "queue.Queue[tuple[str, Union[HostItem, list[HostItem]]]]" = queue.Queue()
        self.tails: dict[tuple[str, str, str], Deque[str]] = collections.defaultdict(  # (host, name, stream)
            lambda: collections.deque(maxlen=OUTPUT_TAIL))
        self.machine = AttemptMachine(clock)  # the attempt's state: the loop branches on it
        self.leftover_stopped_at: Optional[float] = None  # when its agent was told to stop the leftover processes
        self.result = AttemptResult(state=AttemptState.STARTING, started_at=time.time())
        self._proc_info = {(h, p.name): p for h, host in self.hosts.items() for p in host.spec.processes}
        # <job>/status.json for `mscluster status` (the sink's logs_dir is <job>/logs)
        self.status = StatusWriter(os.path.dirname(os.path.abspath(sink.logs_dir)), specs, attempt,
                                   every=STATUS_EVERY_S, hosts=hosts_info)

    # -- starting ----------------------------------------------------------------------------------
    def _start(self, name: str, host: _Host) -> None:
        """Start a host's agent (a thread per host while it starts). Its lines then reach the queue
        as typed items from the session's own reader thread: none of the launcher's per host."""

        def on_lines(session: Session, lines: Optional[list[str]]) -> None:
            if lines is None:  # EOF: how the agent's session ended
                host.session = host.session or session  # its stderr tail, for the failure table
                self.items.put((name, AgentGone(session.wait(timeout=30), host.start_error)))
                return
            host.read_at = self.clock()  # one hand-over per read: a fleet sends thousands of lines a second
            batch: list[HostItem] = []
            for line in lines:
                try:
                    batch.append(decode_message(line))
                except ProtocolError as exc:
                    batch.append(AgentStderr(f"mscluster: a bad message from the agent on {name}: {exc}"))
            self.items.put((name, batch))

        try:
            session = host.executor.start(self.agent_argv(name), env=self.agent_env(name),
                                          cwd=self.agent_cwd(name),
                                          on_stderr=lambda line, n=name: self.items.put((n, AgentStderr(line))),
                                          on_lines=on_lines)
        except Exception as exc:  # noqa: BLE001 - any failure to start is this host's failure, reported once
            self.items.put((name, AgentGone(None, f"could not start the agent on {name}: {exc}")))
            return
        try:  # the spec is the session's first line: the session is shared (beats, stops) only after it
            session.write(host.spec.to_json() + "\n")
        except Exception as exc:  # noqa: BLE001 - reported once, by the EOF that follows
            host.start_error = f"could not start the agent on {name}: {exc}"
            session.kill()
            return
        host.heard_at = self.clock()
        host.session = session
        if self.stopping:  # stop() ran before this session existed
            session.close_stdin()

    # -- stopping ----------------------------------------------------------------------------------
    @property
    def state(self) -> AttemptState:
        return self.machine.state

    @property
    def stopping(self) -> bool:
        """Every agent was told to stop (the attempt is STOPPING; it ends once every agent is gone)."""
        return self.machine.stopping

    def stop(self, why: str) -> None:
        if not self.machine.stop():
            return
        self.result.stopped_at = time.time()
        logger.warning("stopping every rank: %s", why)
        for host in self.hosts.values():
            if host.session is not None:
                try:  # said before the EOF: a stop asked for, the launcher lives (an EOF alone: it died)
                    host.session.write(encode_control(ControlMessage.STOP))
                except Exception:  # noqa: BLE001 - the EOF below still stops it
                    pass
                host.session.close_stdin()

    def _finish_leftovers(self) -> None:
        """Every rank has ended and none failed, but a process without a rank (the scheduler) still runs.

        It has no worker left to serve: a program that never joins MindSpore's dynamic cluster (a
        data-preparation step, a program that is not MindSpore) leaves it waiting forever, and the
        built-in trainer's workers leave without the cluster teardown it would wait for. It gets
        LEFTOVER_WAIT_S to leave by itself, then its agent stops it (TERM, the grace period, KILL);
        the attempt ends by the ranks' results. A scheduler that ends while ranks still run is
        judged as any process is.
        """
        if self.state not in (AttemptState.STARTING, AttemptState.RUNNING, AttemptState.FINISHING):
            return
        if self.stopping:
            return
        ranks = [key for key, p in self._proc_info.items() if p.rank is not None]
        if not ranks or any(key not in self.exited for key in ranks):
            return
        left = [(h, n) for (h, n), p in self._proc_info.items()
                if p.rank is None and (h, n) not in self.exited and not self.hosts[h].gone]
        if not left:
            return
        now = self.clock()
        if self.machine.ranks_ended():
            return
        if self.leftover_stopped_at is not None or now - (self.machine.finishing_since or now) < LEFTOVER_WAIT_S:
            return
        self.leftover_stopped_at = now
        for host in sorted({h for h, _ in left}):
            names = ", ".join(n for h, n in left if h == host)
            logger.info("every rank has ended; stopping %s on %s", names, host)
            for proc_name in (n for h, n in left if h == host):  # said in its own log, where its lines stop
                self.sink.write(host, proc_name, f"mscluster: every rank has ended well: stopping {proc_name} "
                                                 "(no worker left to serve)")
            session = self.hosts[host].session
            if session is not None:
                try:
                    session.write(encode_control(ControlMessage.STOP))
                except BrokenPipeError:
                    pass

    def _cut_off_stragglers(self) -> None:
        grace = max(h.spec.grace_period for h in self.hosts.values())
        if self.leftover_stopped_at is not None and not self.stopping and \
                self.clock() - self.leftover_stopped_at >= grace + STOP_MARGIN_S:
            self.stop(f"the leftover processes did not stop within {grace + STOP_MARGIN_S:.0f} s")
        since = self.machine.stopping_since
        if not self.stopping or since is None or self.clock() - since < grace + STOP_MARGIN_S:
            return
        for name, host in self.hosts.items():
            if not host.gone and host.session is not None:
                logger.warning("%s: agent did not stop within %.0f s; cutting it off", name, grace + STOP_MARGIN_S)
                host.session.kill()
        self.machine.stopping_since = self.clock()  # give the cut-off its own margin

    # -- items -------------------------------------------------------------------------------------
    def _on_exit(self, host: str, msg: Exited) -> None:
        if msg.code == 0:
            return
        if self.state is AttemptState.FINISHING and msg.rank is None:
            how = f"signal {msg.signal}" if msg.signal else f"exit code {msg.code}"
            self.sink.write(host, msg.name, f"mscluster: every rank had ended; {msg.name} was stopped ({how}): "
                                            "not counted as a failure")
            return
        if (host, msg.name) in self.finished and msg.code != PREEMPT_EXIT:
            how = f"signal {msg.signal}" if msg.signal else f"exit code {msg.code}"
            line = (f"mscluster: {msg.name} on {host} ended by {how} after it reported its work finished "
                    "(a crash in the teardown at exit): not counted as a failure")
            logger.warning("%s", line.removeprefix("mscluster: "))
            self.sink.write(host, AGENT, line)
            return
        if self.evicting is not None and self.eviction.left(msg.code, msg.signal, msg.rank) and \
                self.eviction.saved_and_left(f"{msg.name} on {host}"):
            self._evicted(self.evicting, f"{msg.name} on {host} saved a checkpoint and left")
            return
        if self.preemption.left(msg.code, msg.signal, msg.rank) and \
                self.preemption.saved_and_left(f"{msg.name} on {host}"):
            # saved its checkpoint and left, as a preempted rank does: the attempt ends preempted
            self.stop(f"preempted: {msg.name} on {host} saved a checkpoint and exited {PREEMPT_EXIT}")
            return
        proc = self._proc_info.get((host, msg.name))
        # a program that left no error file: the last lines of its stderr (else of its stdout)
        tail = self.tails[(host, msg.name, "stderr")] or self.tails[(host, msg.name, "stdout")]
        message, tb = traceback_tail(dict(msg.error) if msg.error else None, list(tail))
        failure = RankFailure(host=host, name=msg.name, rank=msg.rank,
                              device_id=proc.device_id if proc else None, exit_code=msg.code,
                              signal=msg.signal, time=msg.time, log_path=self.sink.path(msg.name), message=message,
                              traceback_tail=tb, during_teardown=self.stopping,
                              attempt=self.attempt)
        self.result.failures.append(failure)
        self.stop(f"{msg.name} on {host} ended with {failure.outcome()}")

    def _on_gone(self, host: str, item: AgentGone) -> None:
        state = self.hosts[host]
        state.gone = True
        self.status.host_lost(host, orderly=state.done)
        if state.done:
            return
        stderr = state.session.stderr_tail(8) if state.session is not None else []
        message = item.message or f"the agent on {host} ended without reporting (exit code {item.code})"
        self.result.failures.append(RankFailure(
            host=host, name=AGENT, rank=None, device_id=None, exit_code=item.code, signal=None,
            time=time.time(), log_path=None, message=message, traceback_tail=tuple(stderr),
            during_teardown=self.stopping, attempt=self.attempt))
        self.stop(f"lost the agent on {host}")

    def _handle(self, host: str, item: HostItem) -> None:
        state = self.hosts[host]
        if state.gone and not isinstance(item, AgentGone):
            return  # a host given up for lost: what its stale reader still hands over changes nothing
        state.heard_at = self.clock()
        if isinstance(item, (Started, Output, Relayed, Exited, Stacks)) and (host, item.name) not in self._proc_info:
            self.sink.write(host, AGENT, f"mscluster: the agent on {host} spoke of an unknown process {item.name!r}")
            return
        if not isinstance(item, (AgentStderr, AgentGone)):
            self.status.on_message(host, item, stopping=self.stopping
                                   or self.state is AttemptState.FINISHING)
        if isinstance(item, Output):
            if not self.sink.chatter(item.name, item.line):  # the failure table's tail: no exit chatter
                self.tails[(host, item.name, item.stream)].append(item.line)
            self.sink.write(host, item.name, item.line)
        elif isinstance(item, Relayed):
            live = self.stall.on_event(host, item.name, item.event)
            if live is not None:
                if isinstance(item.event, events.Progress):
                    self._count_step(live.rank, item.event.step)
                    self._score_step(host, live.rank, item.event)
                    if self._waiting_first_step:
                        self._waiting_first_step.discard((host, item.name))
                        if not self._waiting_first_step:
                            self.result.all_progress_at = time.time()
            if isinstance(item.event, events.Finished):
                self.finished.add((host, item.name))
            if isinstance(item.event, events.Checkpoint):
                self.result.last_checkpoint_step = item.event.step
            if isinstance(item.event, events.Eval):
                self.result.eval = {"epoch": item.event.epoch, **item.event.metrics}
        elif isinstance(item, Stacks):
            self.stall.on_stack(item.name, item.text, item.state)
        elif isinstance(item, Alive):
            self.stall.on_states(host, item.states)
        elif isinstance(item, Started):
            self.sink.open(item.name)
            h = self.hosts[host]
            h.started.add(item.name)
            if self.state is AttemptState.STARTING and all(
                    len(x.started) == len(x.spec.processes) for x in self.hosts.values()) \
                    and self.machine.all_started():
                self.result.all_started_at = time.time()
        elif isinstance(item, Exited):
            self.exited.add((host, item.name))
            self._on_exit(host, item)
        elif isinstance(item, Done):
            self.hosts[host].done = True
            if not item.ok and not self.stopping and self.state is not AttemptState.FINISHING:
                self.stop(f"the agent on {host} reported a failure")
        elif isinstance(item, AgentStderr):
            self.sink.write(host, AGENT, item.line)
        elif isinstance(item, AgentGone):
            if not state.gone or item.message:
                self._on_gone(host, item)

    def _count_step(self, rank: int, step: int) -> None:
        """Goodput bookkeeping: when steps began to arrive, how far rank 0 got, and in what time."""
        now = time.time()
        if self.result.first_step_at is None:
            self.result.first_step_at = now
        if rank == 0:
            if self._rank0_first_step_at is None:
                self._rank0_first_step_at = now
            self.result.last_step = step
            self.result.step_seconds = now - self._rank0_first_step_at

    def _score_step(self, host: str, rank: int, event: events.Progress) -> None:
        """Straggler scores (launcher.stragglers): a change is said once; status.json lists the ranks named."""
        change = self.stragglers.observe(rank, host, event.step, event.time, event.scalars.get(events.COMPUTE_S))
        if change is not None:
            line = describe_straggler(change.score, self.stragglers.spec.window_steps)
            if change.change is Change.NAMED:
                logger.warning("%s", line)
                self.result.stragglers.append(change.score.to_dict())
                if self.stragglers.spec.action is StragglerAction.EXCLUDE and self.evicting is None \
                        and not self.stopping and self.preemption.since is None:
                    self.evicting = change.score
                    self.eviction.event.set()  # type: ignore[union-attr] - made with an Event
                    logger.warning("stragglers.action is exclude: rank 0 saves a checkpoint, then the attempt stops "
                                   "and %s is replaced", host)
            else:
                logger.info("rank %s on %s is no longer a straggler (relative score %.2f)", rank, host,
                            change.score.relative)
        if change is not None or self.stragglers.stragglers():  # their scores move with every step
            self.status.set_stragglers([s.to_dict() for s in self.stragglers.stragglers()])

    def _check_disk(self) -> None:
        """Logs that cannot be written (a full disk): stop the job cleanly, naming the cause."""
        if self.sink.disk_error is None or self.stopping:
            return
        self.result.failures.append(RankFailure(
            host=socket.gethostname(), name="launcher", rank=None, device_id=None, exit_code=None, signal=None,
            time=time.time(), log_path=None, message=self.sink.disk_error, attempt=self.attempt, reason="disk"))
        self.stop(self.sink.disk_error)

    # -- host liveness ----------------------------------------------------------------------------
    def _keepalive(self) -> None:
        """Beat to every agent; a host whose agent has been silent past the limit is lost (the root
        cause, if nothing failed before), the others are stopped, and its reader is not waited for."""
        if self.keepalive.beat_due():
            self._tell_agents(ControlMessage.BEAT)
        limit = self.keepalive.limit
        for name, h in self.hosts.items():
            silent = None if h.gone else self.keepalive.silent_for(h.heard_at, h.read_at)
            if silent is None:
                continue
            h.gone = True
            self.status.host_lost(name)
            self.result.failures.append(RankFailure(
                host=name, name=AGENT, rank=None, device_id=None, exit_code=None, signal=None,
                time=time.time() - (silent - limit), log_path=None,
                message=f"no word from the agent on {name} for {silent:.0f} s (ssh.keepalive_interval x "
                        f"keepalive_count = {limit:g} s): the host or the network to it is down",
                during_teardown=self.stopping, attempt=self.attempt, reason="lost"))
            session = h.session
            if session is not None:  # closing a channel over a dead link may block: not in this thread
                threading.Thread(target=session.kill, daemon=True, name=f"cut-{name}").start()
            self.stop(f"lost the host {name}")

    def _tell_agents(self, msg: ControlMessage) -> None:
        """One control line to every agent still there (one that is gone just misses it)."""
        for host in self.hosts.values():
            if host.session is not None and not host.gone:
                try:
                    host.session.write(encode_control(msg))
                except BrokenPipeError:
                    pass

    # -- preemption --------------------------------------------------------------------------------
    def _evicted(self, score: StragglerScore, how: str) -> None:
        """Stop the attempt with the straggler being excluded (``score``) as its root cause."""
        self.result.failures.append(RankFailure(
            host=score.host, name=f"rank{score.rank}", rank=score.rank, device_id=None, exit_code=None, signal=None,
            time=score.since_time or time.time(), log_path=self.sink.path(f"rank{score.rank}"),
            message=describe_straggler(score, self.stragglers.spec.window_steps).removeprefix("straggler: ")
            + f"; {how}", attempt=self.attempt, reason="straggler"))
        self.stop(f"straggler rank {score.rank} on {score.host}: {how}")

    def _check_preempt(self) -> None:
        """SIGUSR1 came (Slurm's warning before the time limit): forward it to every rank once; stop
        everything once a rank has saved and left, or after PREEMPT_WAIT_S. The same for a straggler
        to exclude (``stragglers.action: exclude``)."""
        evict = self.eviction.check(self.stopping)
        if evict is PreemptAction.TELL_AGENTS:
            self._tell_agents(ControlMessage.PREEMPT)
        elif evict is PreemptAction.GIVE_UP and self.evicting is not None:
            self._evicted(self.evicting, f"no rank saved and left within {self.eviction.wait:g} s")
        action = self.preemption.check(self.stopping)
        if action is PreemptAction.TELL_AGENTS:
            logger.warning("preempted (SIGUSR1): every rank is told; rank 0 saves a checkpoint and leaves")
            self._tell_agents(ControlMessage.PREEMPT)
        elif action is PreemptAction.GIVE_UP:
            self.stop(f"preempted: no rank saved and left within {self.preemption.wait:g} s")

    # -- the stall watchdog ------------------------------------------------------------------------
    def _watch(self) -> None:
        """Find a stall; then gather every process's stack, name the culprit, and stop the job."""
        if self.stopping:
            return
        action = self.stall.check(lambda: [n for (h, n) in self._proc_info
                                           if (h, n) not in self.exited and not self.hosts[h].gone])
        if action is StallAction.ASK_STACKS:
            logger.warning("a rank has stalled: capturing every rank's stack before stopping the job")
            self._tell_agents(ControlMessage.STACKS)
        elif action is StallAction.REPORT:
            failure = self.stall.failure(self._proc_info, self.sink.path, self.attempt)
            self.result.failures.append(failure)
            self.stop(f"{failure.name} on {failure.host} stalled")

    # -- the loop ----------------------------------------------------------------------------------
    def run(self) -> AttemptResult:
        """Start every agent, relay until every one is gone, and say how the attempt ended."""
        self.start_agents()
        try:
            while not self.all_gone():
                self.turn()
        except KeyboardInterrupt as exc:  # Ctrl-C, or launcher.lifecycle.Interrupted from a SIGTERM/SIGHUP handler
            self.interrupt(exc)
            self._drain_after_interrupt()
        finally:
            if not self.all_gone():
                self.stop("the launcher is exiting")
            self.sink.close()
        return self.finish()

    def start_agents(self, threaded: bool = True) -> None:
        """Start each host's agent (a thread per host: an SSH connection may take seconds)."""
        if not threaded:
            for name, host in self.hosts.items():
                self._start(name, host)
            return
        for name, host in self.hosts.items():
            threading.Thread(target=self._start, args=(name, host), daemon=True, name=f"agent-{name}").start()

    def all_gone(self) -> bool:
        return all(h.gone for h in self.hosts.values())

    def turn(self, wait: float = 0.25) -> None:
        """One turn of the loop: the timers (cut-off, leftovers, preemption, stall, keepalive, disk),
        then the next item from the agents (waiting up to ``wait`` seconds for one)."""
        self._cut_off_stragglers()  # every turn: a chatty host must not postpone it
        self._finish_leftovers()
        self._check_preempt()
        self._watch()
        self._keepalive()
        self._check_disk()
        if self.stall.spec.enabled:
            self.status.set_watchdog(self.stall.in_force())
        self.status.flush()
        try:
            host, item = self.items.get(timeout=wait) if wait > 0 else self.items.get_nowait()
        except queue.Empty:
            return
        self._handle_all(host, item)

    def interrupt(self, exc: BaseException) -> None:
        """The launcher was interrupted (Ctrl-C, SIGTERM, SIGHUP): stop every rank, naming the signal."""
        self.result.interrupted_by = interrupt_signal(exc)
        self.stop(interrupt_reason(self.result.interrupted_by))

    def finish(self) -> AttemptResult:
        """Every agent is gone: the attempt's end state, in the result and in status.json."""
        self.result.ended_at = time.time()
        failures = self.result.failures
        self.result.state = self.machine.end(outcome(
            interrupted=self.result.interrupted_by is not None, failures=len(failures),
            causes=sum(1 for f in failures if not f.during_teardown), all_done=all(h.done for h in self.hosts.values()),
            preempted=self.preemption.by is not None, preempting=self.preemption.preempting))
        self.status.attempt_ended(self.result.ok, self.result.interrupted, self.result.preempted,
                                  interrupted_by=self.result.interrupted_by)
        return self.result

    def _drain_after_interrupt(self) -> None:
        """After Ctrl-C: keep relaying until every agent has stopped its ranks (a second Ctrl-C cuts off)."""
        while not all(h.gone for h in self.hosts.values()):
            try:
                host, item = self.items.get(timeout=0.5)
            except queue.Empty:
                self._cut_off_stragglers()
                continue
            except KeyboardInterrupt:
                for h in self.hosts.values():
                    if h.session is not None and not h.gone:
                        h.session.kill()
                continue
            self._handle_all(host, item)

    def _handle_all(self, host: str, item: Union[HostItem, list[HostItem]]) -> None:
        """One item, or a read's batch of them; then the logs are flushed (one flush per batch)."""
        for one in item if isinstance(item, list) else (item,):
            self._handle(host, one)
        self.sink.flush()
