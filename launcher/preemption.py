"""Preemption: Slurm's warning (SIGUSR1) before the time limit, and how the attempt then ends.

Once the signal came, every agent is told once (``preempt``: SIGUSR1 to each rank; the built-in
trainer's rank 0 saves a checkpoint and exits ``PREEMPT_EXIT``). The first rank that leaves so
ends the attempt ``preempted``; if none has within ``wait`` seconds, everything is stopped. Pure:
the event and the clock are passed in.
"""
from __future__ import annotations

import enum
import threading
import time
from typing import Callable, Optional

from mscluster.rank import PREEMPT_EXIT

PREEMPT_WAIT_S = 60.0  # after SIGUSR1, how long rank 0 may take to save and leave before everything is stopped


class PreemptAction(enum.Enum):
    NONE = "none"
    TELL_AGENTS = "tell"  # send `preempt` to every agent (once)
    GIVE_UP = "give up"  # nobody saved and left in time: stop the attempt


class Preemption:
    """The preemption of one attempt: when it began, who saved and left."""

    def __init__(self, event: Optional[threading.Event], clock: Callable[[], float] = time.monotonic,
                 wait: float = PREEMPT_WAIT_S) -> None:
        self.event, self.clock, self.wait = event, clock, wait
        self.since: Optional[float] = None  # monotonic time the signal was first seen (or a rank left)
        self.by: Optional[str] = None  # "rank0 on host": the process that saved and left

    @property
    def preempting(self) -> bool:
        return self.since is not None

    def check(self, stopping: bool) -> PreemptAction:
        """What to do this turn (``stopping``: the attempt is already being stopped)."""
        if self.event is None or not self.event.is_set():
            return PreemptAction.NONE
        now = self.clock()
        if self.since is None:
            self.since = now
            return PreemptAction.NONE if stopping else PreemptAction.TELL_AGENTS
        if not stopping and now - self.since > self.wait:
            return PreemptAction.GIVE_UP
        return PreemptAction.NONE

    def left(self, code: Optional[int], signal: Optional[str], rank: Optional[int]) -> bool:
        """Whether an exit is a rank saving and leaving as a preempted rank does."""
        return rank is not None and (code == PREEMPT_EXIT or (self.since is not None and signal == "SIGUSR1"))

    def saved_and_left(self, who: str) -> bool:
        """The first rank that saved and left ends the attempt preempted (True: this one was first)."""
        if self.by is not None:
            return False
        self.by = who
        self.since = self.since if self.since is not None else self.clock()
        return True
