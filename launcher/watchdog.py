"""The stall watchdog's decisions: which ranks have stalled, and which one is the culprit. Pure.

Times are the launcher's own (``time.monotonic()`` when a message arrived), so no clock of any
host has to agree with another. A rank is watched once it has sent a liveness beat
(``mscluster.rank`` sends one every ``beat_interval`` seconds from a thread): a program that never
uses ``mscluster.rank`` is not watched.

A rank has stalled when it has reported no step for ``stall_timeout`` seconds after its first
step, or for ``startup_timeout`` seconds before it. The culprit, in this order:

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
from dataclasses import dataclass
from typing import Mapping, Optional, Sequence

from launcher.spec import WatchdogSpec

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

    @property
    def watched(self) -> bool:
        return self.last_beat is not None


@dataclass(frozen=True)
class Culprit:
    name: Optional[str]  # None: every rank is stuck alike
    host: Optional[str]
    why: str


def stalled(ranks: Sequence[Liveness], now: float, started_at: float, spec: WatchdogSpec) -> list[Liveness]:
    """The watched ranks past their timeout (none when the watchdog is off)."""
    if not spec.enabled:
        return []
    out = []
    for r in ranks:
        if not r.watched:
            continue
        if r.last_progress is not None:
            if now - r.last_progress > spec.stall_timeout:
                out.append(r)
        elif now - started_at > spec.startup_timeout:
            out.append(r)
    return out


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
