"""Straggler scores: which rank runs slower than the others, from the step reports the launcher receives.

As nvidia-resiliency-ext's straggler detector: each rank keeps its last ``window_steps`` step
times; its **relative** score is the fastest rank's median over its window divided by its own
(1.0: as fast as the fastest), its **individual** score its own best window median divided by
its current one (1.0: as fast as it ever was). A rank whose relative score stays below
``threshold`` for a whole window (``window_steps`` of its reports in a row) is named a straggler;
once it stays at or above it for a whole window again it is no longer one.

Which time: in a synchronous data-parallel job every rank's wall step time is the slowest one's
(the others wait for it in the gradient exchange), so the step time that tells the straggler
from the ranks waiting for it is the time it spends outside the exchange: the progress scalar
``compute_s`` (``mscluster.events.COMPUTE_S``), preferred whenever a rank reports it. Without it
the interval between a rank's reports is used, and then only a rank slow enough to fall behind
the others (one whose reports come slower than theirs) is seen.

Pure: no I/O, no clock; the supervisor feeds it (``launcher.supervisor``).
"""
from __future__ import annotations

import collections
import enum
import math
import statistics
from dataclasses import dataclass, field
from typing import Deque, Optional

from launcher.spec import StragglerSpec


@dataclass(frozen=True)
class StragglerScore:
    """One rank's scores; ``since_step``/``since_time``: when its relative score went below the threshold."""

    rank: int
    host: str
    relative: float
    individual: float
    since_step: Optional[int] = None
    since_time: Optional[float] = None

    def to_dict(self) -> dict:
        """As status.json and result.json keep it."""
        return {"host": self.host, "rank": self.rank, "relative": round(self.relative, 3),
                "individual": round(self.individual, 3), "since_step": self.since_step, "since": self.since_time}


class Change(enum.Enum):
    NAMED = "named"  # the rank became a straggler
    RECOVERED = "recovered"  # it is no longer one


@dataclass(frozen=True)
class StragglerChange:
    """A rank named a straggler, or recovered, by the report just observed."""

    change: Change
    score: StragglerScore


@dataclass
class _Rank:
    host: str
    times: Deque[float]  # the last window_steps step times (seconds per step)
    last_step: Optional[int] = None
    last_time: Optional[float] = None
    best: float = math.inf  # its fastest window median so far
    below: int = 0  # its reports in a row with the relative score under the threshold
    above: int = 0  # while named: its reports in a row at or above it
    below_since: Optional[tuple[int, float]] = None  # (step, time) the current run below began
    named: bool = False
    score: Optional[StragglerScore] = None


@dataclass
class StragglerScorer:
    """Every rank's rolling step times and scores over one attempt."""

    spec: StragglerSpec
    ranks: dict[int, _Rank] = field(default_factory=dict)
    # each rank's median over a full window, kept as it changes: a fleet reports thousands of steps a
    # second, and the fastest rank's median is asked at every one of them
    medians: dict[int, float] = field(default_factory=dict)

    def observe(self, rank: int, host: str, step: int, time: float,
                compute_s: Optional[float] = None) -> Optional[StragglerChange]:
        """A rank's report of ``step`` at ``time`` (its own clock, seconds), with the seconds per step it
        spent outside the gradient exchange where it measured them; returns a change of its standing."""
        if not self.spec.enabled:
            return None
        state = self.ranks.get(rank)
        if state is None or state.host != host:
            state = self.ranks[rank] = _Rank(host, collections.deque(maxlen=self.spec.window_steps))
            self.medians.pop(rank, None)
        seconds: Optional[float] = None
        if compute_s is not None and math.isfinite(compute_s) and compute_s > 0:
            seconds = compute_s
        elif state.last_step is not None and state.last_time is not None and step > state.last_step:
            seconds = (time - state.last_time) / (step - state.last_step)
        if state.last_step is not None and step <= state.last_step:
            state.times.clear()  # a resumed attempt counts again from an earlier step: its old pace is no clock
            self.medians.pop(rank, None)
        state.last_step, state.last_time = step, time
        if seconds is None or seconds <= 0:
            return None
        state.times.append(seconds)
        if len(state.times) == self.spec.window_steps:
            self.medians[rank] = statistics.median(state.times)
        return self._score(rank, state, step, time)

    def _score(self, rank: int, state: _Rank, step: int, time: float) -> Optional[StragglerChange]:
        mine = self.medians.get(rank)
        if mine is None or len(self.medians) < 2:
            return None  # a window of its own and another rank's to compare with
        state.best = min(state.best, mine)
        relative = min(self.medians.values()) / mine
        if relative < self.spec.threshold:
            if state.below == 0:
                state.below_since = (step, time)
            state.below += 1
            state.above = 0
        else:
            state.below = 0
            state.above += 1
            if not state.named:
                state.below_since = None
        since = state.below_since if state.named or state.below else None
        state.score = StragglerScore(rank, state.host, relative, state.best / mine,
                                     since[0] if since else None, since[1] if since else None)
        if not state.named and state.below >= self.spec.window_steps:
            state.named, state.above = True, 0
            return StragglerChange(Change.NAMED, state.score)
        if state.named and state.above >= self.spec.window_steps:
            state.named, state.below_since = False, None
            return StragglerChange(Change.RECOVERED, state.score)
        return None

    def stragglers(self) -> list[StragglerScore]:
        """The ranks named now, in rank order, with their latest scores."""
        return [s.score for r, s in sorted(self.ranks.items()) if s.named and s.score is not None]

    def scores(self) -> list[StragglerScore]:
        """Every scored rank's latest scores, in rank order."""
        return [s.score for r, s in sorted(self.ranks.items()) if s.score is not None]


def describe(score: StragglerScore, window_steps: int) -> str:
    """The warning line naming a straggler."""
    return (f"straggler: rank {score.rank} on {score.host} runs at {score.relative:.2f} of the fastest rank's "
            f"speed over its last {window_steps} steps (individual score {score.individual:.2f})")
