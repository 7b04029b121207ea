"""The stall watchdog's decisions: which ranks have stalled, and which one is the culprit. Pure.

Times are the launcher's own (``time.monotonic()`` when a message arrived), so no clock of any
host has to agree with another. A rank is watched once it has sent a liveness beat
(``mscluster.rank`` sends one every ``beat_interval`` seconds from a thread): a program that never
uses ``mscluster.rank`` is not watched.

A rank has stalled when it has reported no step for longer than the limit of the section the job
is in (``Limit``): before its first step ``startup_timeout``; between steps ``stall_timeout``, or
with ``stall_timeout: auto`` (the default) a multiple of the slowest step seen; inside a section a
rank marked (``mscluster.rank.section``: a checkpoint save, an evaluation) that section's own
limit, learned from the slowest time it took before (``Learned``; see ``AUTO_*`` for the bounds).
A section is job-wide: while one rank saves, the others wait for it in the next collective.

A rank is frozen, whatever the timeouts say, when its liveness beats stopped for
``frozen_after`` (three beats) and the kernel says it is stopped (T/t: SIGSTOP, a debugger) or has
been in an uninterruptible call (D) for that long (``frozen``). Beats alone do not tell: MindSpore's
graph run holds the GIL while it waits in a collective, so healthy ranks stop beating too; a
silent rank the kernel says runs or sleeps (R/S) is left to the stall limits.

The culprit, in this order:

1. the frozen rank: the kernel says it is stopped (SIGSTOP) or in an uninterruptible call, or its
   liveness beats stopped while it is outside MindSpore (MindSpore's graph run holds the GIL
   while it waits in a collective, so waiting ranks stop beating too: beats alone do not tell);
2. otherwise the rank with the lowest step: the others wait for it in a collective;
3. otherwise the rank whose stack is outside MindSpore: stuck in Python (a sleep, a lock, I/O)
   while the others wait inside MindSpore's collective;
4. otherwise no one: "all ranks stuck at step N", with every stack.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Mapping, Optional, Sequence

from launcher.spec import WatchdogSpec
from mscluster.events import STARTUP_SECTION, STEP_SECTION

# stall_timeout: auto. A step's limit is AUTO_STEP_MULTIPLE x the slowest step interval seen (a
# sink's on Ascend: one progress event per sink), once AUTO_LEARN_STEPS intervals are in (before,
# and for a section never seen, AUTO_FIRST_S: compilation, a first save); a section's limit is
# AUTO_SECTION_MULTIPLE x its slowest time. Every learned limit lies within AUTO_FLOOR_S..AUTO_CEILING_S:
# the floor absorbs the jitter a fast job's steps have (a garbage collection, a data-loader worker's
# restart at an epoch boundary: seconds, whatever the step time) and keeps a 0.1 s-step job's stuck
# rank named within a minute; the ceiling is HCCL's own default collective wait (1836 s, less a
# margin), so with auto the backend never gives up before the watchdog names the culprit.
AUTO_STEP_MULTIPLE = 10.0
AUTO_SECTION_MULTIPLE = 3.0
AUTO_LEARN_STEPS = 5
AUTO_FIRST_S = 600.0
AUTO_FLOOR_S = 30.0
AUTO_CEILING_S = 1800.0

TOP_FRAMES = 6


@dataclass
class Liveness:
    """What the launcher has heard from one rank in this attempt."""

    name: str
    host: str
    rank: int
    last_beat: Optional[float] = None
    last_step: Optional[int] = None
    last_progress: Optional[float] = None  # when the last step arrived
    section: Optional[str] = None  # the section it is in (mscluster.rank.section), None: between steps
    section_since: Optional[float] = None  # when it entered that section
    steps_seen: int = 0  # progress events this attempt
    kernel_state: Optional[str] = None  # /proc/<pid>/stat's state letter, as its agent last read it
    kernel_state_since: Optional[float] = None  # when that state was first read (in a row)

    @property
    def watched(self) -> bool:
        return self.last_beat is not None


@dataclass
class Learned:
    """What the job has shown of its own pace: the slowest step interval and section times (seconds)."""

    slowest_step: float = 0.0
    steps: int = 0  # step intervals measured
    sections: dict[str, float] = field(default_factory=dict)  # section name -> its slowest time

    def step(self, seconds: float) -> None:
        self.steps += 1
        self.slowest_step = max(self.slowest_step, seconds)

    def section(self, name: str, seconds: float) -> None:
        self.sections[name] = max(self.sections.get(name, 0.0), seconds)

    def limit(self, section: str, spec: WatchdogSpec) -> float:
        """The seconds the job may spend in ``section`` (``startup``, ``step`` or a rank's own)."""
        if section == STARTUP_SECTION:
            return spec.startup_timeout
        if spec.stall_timeout is not None:  # set by hand: one number for everything after the first step
            return spec.stall_timeout
        if self.steps >= AUTO_LEARN_STEPS:
            step = _bounded(AUTO_STEP_MULTIPLE * self.slowest_step)
        else:
            step = AUTO_FIRST_S
        if section == STEP_SECTION:
            return step
        if section not in self.sections:
            return max(AUTO_FIRST_S, step)
        return max(_bounded(AUTO_SECTION_MULTIPLE * self.sections[section]), step)

    def in_force(self, spec: WatchdogSpec, sections: Sequence[str] = ()) -> dict[str, float]:
        """Each known section's limit now (``status.json``'s ``watchdog.limits``)."""
        names = [STARTUP_SECTION, STEP_SECTION, *sorted(set(self.sections) | set(sections))]
        return {name: round(self.limit(name, spec), 1) for name in names}


def _bounded(seconds: float) -> float:
    return min(max(seconds, AUTO_FLOOR_S), AUTO_CEILING_S)


@dataclass(frozen=True)
class Limit:
    """The section a rank is timed in, since when, and for how long it may last."""

    section: str
    since: float
    seconds: float

    @property
    def deadline(self) -> float:
        return self.since + self.seconds


def limit_for(rank: Liveness, ranks: Sequence[Liveness], started_at: float, resumed_at: Optional[float],
              learned: Learned, spec: WatchdogSpec) -> Limit:
    """The limit ``rank`` is held to now.

    Inside a section (any rank's: the others wait for it in the next collective) the latest-ending
    open section's limit; before the rank's first step, startup's; else a step's, counted from its
    last step or from the end of the last section (``resumed_at``), whichever is later.
    """
    open_ = [Limit(r.section, r.section_since, learned.limit(r.section, spec)) for r in ranks
             if r.section is not None and r.section_since is not None]
    if open_:
        return max(open_, key=lambda limit: limit.deadline)
    if rank.last_progress is None:
        return Limit(STARTUP_SECTION, started_at, learned.limit(STARTUP_SECTION, spec))
    since = max(rank.last_progress, resumed_at or rank.last_progress)
    return Limit(STEP_SECTION, since, learned.limit(STEP_SECTION, spec))


def frozen(ranks: Sequence[Liveness], now: float, spec: WatchdogSpec) -> list[Liveness]:
    """The watched ranks frozen now: beats stopped for ``frozen_after`` and the kernel says stopped
    (T, t), or uninterruptible (D) for that long (none when the watchdog is off)."""
    if not spec.enabled:
        return []
    out = []
    for r in ranks:
        if r.last_beat is None or now - r.last_beat <= spec.frozen_after:
            continue
        if r.kernel_state in ("T", "t"):
            out.append(r)
        elif r.kernel_state == "D" and r.kernel_state_since is not None and \
                now - r.kernel_state_since >= spec.frozen_after:
            out.append(r)
    return out


@dataclass(frozen=True)
class Culprit:
    name: Optional[str]  # None: every rank is stuck alike
    host: Optional[str]
    why: str


def stalled(ranks: Sequence[Liveness], now: float, started_at: float, spec: WatchdogSpec,
            learned: Optional[Learned] = None, resumed_at: Optional[float] = None) -> list[Liveness]:
    """The watched ranks past their limit (``limit_for``; none when the watchdog is off)."""
    if not spec.enabled:
        return []
    learned = learned if learned is not None else Learned()
    return [r for r in ranks if r.watched
            and now > limit_for(r, ranks, started_at, resumed_at, learned, spec).deadline]


def idle_seconds(rank: Liveness, now: float, started_at: float) -> float:
    return now - (rank.last_progress if rank.last_progress is not None else started_at)


_FAULTHANDLER_FRAME = re.compile(r'\s*File "(.*)", line (\d+) in (.*)')


def main_thread_frames(stack: str) -> list[str]:
    """The frames of the main thread (innermost first) as ``func (file:line)``, from a ``py-spy
    dump``, or from faulthandler's dump (its "Current thread": the agent signals the main thread)."""
    if "(most recent call first):" in stack:
        return _faulthandler_frames(stack)
    lines = stack.splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("Thread ")]
    if not starts:
        return [line.strip() for line in lines if line.strip()][:TOP_FRAMES]
    main = next((i for i in starts if '"MainThread"' in lines[i]), starts[0])
    frames = []
    for line in lines[main + 1:]:
        if not line.startswith((" ", "\t")) or not line.strip():
            break
        frames.append(line.strip())
    return frames


def _faulthandler_frames(stack: str) -> list[str]:
    blocks = stack.split("\n\n")
    current = [b for b in blocks if b.lstrip().startswith("Current thread")]
    block = (current or [b for b in blocks if "(most recent call first):" in b] or [""])[-1]
    frames = []
    for line in block.splitlines()[1:]:
        match = _FAULTHANDLER_FRAME.fullmatch(line)
        if match:
            frames.append(f"{match.group(3)} ({match.group(1)}:{match.group(2)})")
    return frames


# the trainer's shared-memory gradient exchange: a rank in its barrier waits for the others, as in
# MindSpore's collective (trainer/hostexchange.py)
EXCHANGE_FILE = "hostexchange.py"


def inside_mindspore(stack: str) -> bool:
    """Whether the main thread waits on the others: its innermost frame is MindSpore's (a collective,
    a graph run), or it is in the trainer's shared-memory gradient exchange (its barrier)."""
    frames = main_thread_frames(stack)
    return bool(frames) and ("mindspore" in frames[0] or any(EXCHANGE_FILE in f for f in frames[:3]))


FROZEN_STATES = {"T": "stopped (SIGSTOP or a debugger)", "t": "stopped by a tracer", "D": "in an uninterruptible "
                 "kernel call (a hung disk or driver)"}


def choose_culprit(ranks: Sequence[Liveness], stacks: Mapping[str, str], now: float, spec: WatchdogSpec,
                   states: Mapping[str, str] = {}) -> Culprit:
    """The rank to blame (see the module's docstring).

    ``states`` are the kernel's process states when the stacks were taken. A rank counts as frozen
    when the kernel says it is stopped or stuck in an uninterruptible call, or when its beats
    stopped while its main thread is outside MindSpore: MindSpore's graph run holds the GIL while it
    waits in a collective, so the healthy ranks waiting for a culprit stop beating too.
    """
    watched = [r for r in ranks if r.watched]
    by_kernel = [r for r in watched if states.get(r.name) in FROZEN_STATES]
    if by_kernel:
        r = by_kernel[0]
        beats = "" if r.last_beat is None else f"; its liveness beats stopped {now - r.last_beat:.0f} s ago"
        return Culprit(r.name, r.host, f"frozen: the kernel says it is {FROZEN_STATES[states[r.name]]}{beats}")
    silent = [r for r in watched if now - (r.last_beat or now) > spec.frozen_after
              and not (r.name in stacks and inside_mindspore(stacks[r.name]))]
    if silent:
        r = min(silent, key=lambda x: x.last_beat or 0.0)
        frame = main_thread_frames(stacks.get(r.name, ""))[:1]
        where = f" in Python outside MindSpore ({frame[0]})" if frame else ""
        return Culprit(r.name, r.host, f"frozen{where}: its liveness beats stopped {now - (r.last_beat or now):.0f} s ago")
    steps = {r.name: (r.last_step if r.last_step is not None else -1) for r in watched}
    if len(set(steps.values())) > 1:
        r = min(watched, key=lambda x: (steps[x.name], x.rank))
        behind = "no step yet" if steps[r.name] < 0 else f"at step {steps[r.name]}"
        return Culprit(r.name, r.host, f"the lowest step: {behind} while others reached {max(steps.values())}")
    outside = [r for r in watched if r.name in stacks and not inside_mindspore(stacks[r.name])]
    if len(outside) == 1 or (outside and len(outside) < len(watched)):
        r = outside[0]
        frame = main_thread_frames(stacks[r.name])[:1]
        return Culprit(r.name, r.host, "stuck in Python outside MindSpore" + (f" ({frame[0]})" if frame else "")
                       + " while the others wait in a collective")
    step = next(iter(steps.values()), -1)
    return Culprit(None, None, f"all ranks stuck at step {step}" if step >= 0 else "all ranks stuck before their first step")
