"""The stall watchdog of one attempt: liveness of each rank, stacks on a stall, the culprit's failure.

``launcher.watchdog`` decides (pure functions); this unit keeps what the decisions need: each
rank's last beat, step and section (``on_event``, on the launcher's monotonic clock), the kernel's
state of each rank (``on_states``, from its agent's beat), what the job has shown of its pace
(``watchdog.Learned``), the time a stall or a frozen rank was found, and the stacks the agents send back. ``check`` says what the supervisor does this turn:
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
        self.learned = watchdog.Learned()
        self.resumed_at: Optional[float] = None  # when the last section ended: steps are timed from then
        self.section_at: Optional[float] = None  # when any rank last entered or left a section
        self.frozen_ranks: dict[str, str] = {}  # found at ``since``: the frozen ranks' kernel states (else a stall)

    def on_event(self, host: str, name: str, event: events.RankEvent) -> Optional[watchdog.Liveness]:
        """A beat, a step or a section of a rank: it is alive (returns its liveness, None for another
        event or process). A step interval and a section's time teach ``learned``."""
        live = self.liveness.get((host, name))
        if live is None or not isinstance(event, (events.Beat, events.Progress, events.Section)):
            return None
        now = live.last_beat = self.clock()  # any word from it: it is alive
        if isinstance(event, events.Progress):
            # the time since its previous step teaches the step limit, unless a section (of any
            # rank: the others wait for it) overlapped it; its first interval holds the compilation
            quiet = not any(r.section for r in self.liveness.values()) and \
                (self.section_at is None or live.last_progress is None or self.section_at < live.last_progress)
            if live.last_progress is not None and live.steps_seen >= 2 and quiet:
                self.learned.step(now - live.last_progress)
            live.last_step, live.last_progress = event.step, now
            live.steps_seen += 1
        elif isinstance(event, events.Section):
            self.section_at = now
            if event.end:
                if live.section == event.name and live.section_since is not None:
                    self.learned.section(event.name, now - live.section_since)
                live.section = live.section_since = None
                self.resumed_at = now
            else:
                live.section, live.section_since = event.name, now
        return live

    def on_states(self, host: str, states: Mapping[str, str]) -> None:
        """The kernel's state of this host's ranks, as its agent read them (/proc/<pid>/stat)."""
        now = self.clock()
        for name, state in states.items():
            live = self.liveness.get((host, name))
            if live is None:
                continue
            if state != live.kernel_state:
                live.kernel_state, live.kernel_state_since = state, now

    def in_force(self) -> dict:
        """The watchdog's limits now, for status.json: mode, frozen_after, each section's seconds."""
        return {"stall_timeout": "auto" if self.spec.auto else self.spec.stall_timeout,
                "frozen_after": self.spec.frozen_after,
                "steps_learned": self.learned.steps, "slowest_step_s": round(self.learned.slowest_step, 3),
                "limits": self.learned.in_force(self.spec)}

    def on_stack(self, name: str, text: str, state: str) -> None:
        self.stacks[name] = text
        self.proc_states[name] = state

    def check(self, alive: Callable[[], Iterable[str]]) -> StallAction:
        """This turn's action; ``alive()``: the names of the processes still running (asked only during a stall)."""
        if not self.spec.enabled:
            return StallAction.NONE
        now = self.clock()
        if self.since is None:
            ranks = list(self.liveness.values())
            self.frozen_ranks = {r.name: r.kernel_state or "?" for r in watchdog.frozen(ranks, now, self.spec)}
            if not self.frozen_ranks and not watchdog.stalled(ranks, now, self.started, self.spec,
                                                              self.learned, self.resumed_at):
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
        # the kernel's state at the stack capture; a rank found frozen by its agent's beats stays so
        states = {**self.proc_states, **self.frozen_ranks}
        culprit = watchdog.choose_culprit(ranks, self.stacks, now, spec, states)
        at = self.since or now
        stalled = watchdog.stalled(ranks, at, self.started, spec, self.learned, self.resumed_at)
        reason = "stalled"
        if self.frozen_ranks:
            reason = "frozen"
            summary = f"frozen: no liveness beat for over {spec.frozen_after:g} s (beat_interval x 3)"
        elif stalled:
            worst = max(stalled, key=lambda r: at - watchdog.limit_for(r, ranks, self.started, self.resumed_at,
                                                                       self.learned, spec).deadline)
            limit = watchdog.limit_for(worst, ranks, self.started, self.resumed_at, self.learned, spec)
            how = "auto" if spec.auto else "stall_timeout"
            if limit.section == events.STEP_SECTION:
                summary = f"stalled: no step for {at - limit.since:.0f} s (limit {limit.seconds:g} s, {how})"
            else:
                summary = (f"stalled: in {limit.section} for {at - limit.since:.0f} s "
                           f"(limit {limit.seconds:g} s, {'startup_timeout' if limit.section == events.STARTUP_SECTION else how})")
        else:
            summary = "stalled"
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
                               traceback_tail=tuple(frames), attempt=attempt, reason=reason)
        lead = min(ranks, key=lambda r: r.rank)
        frames = watchdog.main_thread_frames(self.stacks.get(lead.name, ""))[:watchdog.TOP_FRAMES]
        return RankFailure(host=lead.host, name="all ranks", rank=None, device_id=None, exit_code=None,
                           signal=None, time=wall(), log_path=None,
                           message=f"{summary}: {culprit.why}; every stack is in errors/stacks-attempt{attempt}/",
                           traceback_tail=tuple(frames), attempt=attempt, reason=reason)
