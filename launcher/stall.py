"""The stall watchdog of one attempt: liveness of each rank, stacks on a stall, the culprit's failure.

``launcher.watchdog`` decides (pure functions); this unit keeps what the decisions need: each
rank's last beat and step (``on_event``, on the launcher's monotonic clock), the time a stall was
found, and the stacks the agents send back. ``check`` says what the supervisor does this turn:
nothing, ask every agent for stacks, or report (``failure`` builds the root cause). The clock is
passed in.
"""
from __future__ import annotations

import enum
import time
from typing import Callable, Iterable, Mapping, Optional

from launcher import watchdog
from launcher.protocol import ProcessSpec
from launcher.report import RankFailure
from launcher.spec import WatchdogSpec
from mscluster import events

STACKS_WAIT_S = 12.0  # how long a stall waits for every process's stack before it reports


class StallAction(enum.Enum):
    NONE = "none"
    ASK_STACKS = "ask stacks"  # a stall was just found: ask every agent for its processes' stacks
    REPORT = "report"  # every live process's stack is in (or STACKS_WAIT_S passed): name the culprit


class StallWatch:
    """One attempt's stall watchdog."""

    def __init__(self, spec: WatchdogSpec, ranks: Iterable[tuple[str, str, int]],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.spec, self.clock = spec, clock
        self.started = clock()
        self.liveness = {(h, n): watchdog.Liveness(n, h, r) for h, n, r in ranks}  # (host, name) -> its liveness
        self.since: Optional[float] = None  # a stall was found at this time; stacks are being gathered
        self.stacks: dict[str, str] = {}
        self.proc_states: dict[str, str] = {}

    def on_event(self, host: str, name: str, event: events.RankEvent) -> Optional[watchdog.Liveness]:
        """A beat or a step of a rank: it is alive (returns its liveness, None for another event or process)."""
        live = self.liveness.get((host, name))
        if live is None or not isinstance(event, (events.Beat, events.Progress)):
            return None
        live.last_beat = self.clock()  # any word from it: it is alive
        if isinstance(event, events.Progress):
            live.last_step, live.last_progress = event.step, live.last_beat
        return live

    def on_stack(self, name: str, text: str, state: str) -> None:
        self.stacks[name] = text
        self.proc_states[name] = state

    def check(self, alive: Callable[[], Iterable[str]]) -> StallAction:
        """This turn's action; ``alive()``: the names of the processes still running (asked only during a stall)."""
        if not self.spec.enabled:
            return StallAction.NONE
        now = self.clock()
        if self.since is None:
            if not watchdog.stalled(list(self.liveness.values()), now, self.started, self.spec):
                return StallAction.NONE
            self.since = now
            return StallAction.ASK_STACKS
        if now - self.since < STACKS_WAIT_S and not all(n in self.stacks for n in alive()):
            return StallAction.NONE
        return StallAction.REPORT

    def failure(self, procs: Mapping[tuple[str, str], ProcessSpec], log_path: Callable[[str], str],
                attempt: int, wall: Callable[[], float] = time.time) -> RankFailure:
        """The stall as the attempt's root cause: the culprit with its top frames, or every rank."""
        now = self.clock()
        ranks = list(self.liveness.values())
        spec = self.spec
        culprit = watchdog.choose_culprit(ranks, self.stacks, now, spec, self.proc_states)
        stalled = watchdog.stalled(ranks, self.since or now, self.started, spec)
        longest = max((watchdog.idle_seconds(r, self.since or now, self.started) for r in stalled), default=0.0)
        summary = f"stalled: no step for {longest:.0f} s (stall_timeout {spec.stall_timeout:g} s)"
        if culprit.name is not None:
            live = next(r for r in ranks if r.name == culprit.name and r.host == culprit.host)
            proc = procs.get((culprit.host or "", culprit.name))
            frames = watchdog.main_thread_frames(self.stacks.get(culprit.name, ""))[:watchdog.TOP_FRAMES]
            step = "no step yet" if live.last_step is None else f"last step {live.last_step}"
            # its time is when it last made progress (or began): the table and detect_s say how long it hung
            since = live.last_progress if live.last_progress is not None else self.started
            return RankFailure(host=culprit.host or "?", name=culprit.name, rank=live.rank,
                               device_id=proc.device_id if proc else None, exit_code=None, signal=None,
                               time=wall() - (now - since), log_path=log_path(culprit.name),
                               message=f"{summary}, {step}; the culprit: {culprit.why}",
                               traceback_tail=tuple(frames), attempt=attempt, reason="stalled")
        lead = min(ranks, key=lambda r: r.rank)
        frames = watchdog.main_thread_frames(self.stacks.get(lead.name, ""))[:watchdog.TOP_FRAMES]
        return RankFailure(host=lead.host, name="all ranks", rank=None, device_id=None, exit_code=None,
                           signal=None, time=wall(), log_path=None,
                           message=f"{summary}: {culprit.why}; every stack is in errors/stacks-attempt{attempt}/",
                           traceback_tail=tuple(frames), attempt=attempt, reason="stalled")
