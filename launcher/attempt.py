"""The state machine of one attempt: its state, the moves allowed between states, how it ends.

The states and the drawing are ``launcher.lifecycle.AttemptState``'s. The supervisor asks this
unit to move (``all_started``, ``ranks_ended``, ``stop``) and branches on ``state``; a move the
machine does not allow is refused (returns False), so a late message cannot undo a stop. Pure:
the clock is passed in.
"""
from __future__ import annotations

import time
from typing import Callable, Optional

from launcher.lifecycle import AttemptState

S = AttemptState
MOVES: dict[AttemptState, frozenset[AttemptState]] = {
    S.STARTING: frozenset({S.RUNNING, S.FINISHING, S.STOPPING}),
    S.RUNNING: frozenset({S.FINISHING, S.STOPPING}),
    S.FINISHING: frozenset({S.STOPPING}),
    S.STOPPING: frozenset(),
}
# once every agent is gone, an attempt ends from whatever state it was in: `outcome` chooses the end
for _state in MOVES:
    MOVES[_state] = MOVES[_state] | {S.SUCCEEDED, S.FAILED, S.INTERRUPTED, S.PREEMPTED}

def outcome(*, interrupted: bool, failures: int, causes: int, all_done: bool, preempted: bool,
            preempting: bool) -> AttemptState:
    """How an attempt whose agents are all gone ended.

    ``failures``: its failures; ``causes``: those not caused by the teardown; ``all_done``: every
    agent reported Done; ``preempted``: a rank saved and left (PREEMPT_EXIT); ``preempting``:
    SIGUSR1 came.
    """
    if interrupted:
        return S.INTERRUPTED
    if not failures and all_done and not preempted:
        return S.SUCCEEDED
    if preempting and not causes:
        return S.PREEMPTED
    return S.FAILED


class AttemptMachine:
    """One attempt's state and the monotonic times of its moves."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.state = S.STARTING
        self.stopping_since: Optional[float] = None  # when STOPPING began (the cut-off's timer)
        self.finishing_since: Optional[float] = None  # when every rank had ended, a leftover still running

    def _move(self, to: AttemptState) -> bool:
        if to not in MOVES.get(self.state, frozenset()):
            return False
        self.state = to
        return True

    @property
    def stopping(self) -> bool:
        return self.state is S.STOPPING

    @property
    def finishing(self) -> bool:
        return self.state is S.FINISHING

    def all_started(self) -> bool:
        """Every process of every host has started: STARTING -> RUNNING."""
        return self.state is S.STARTING and self._move(S.RUNNING)

    def ranks_ended(self) -> bool:
        """Every rank ended well, a process without a rank still runs: -> FINISHING."""
        if self.state not in (S.STARTING, S.RUNNING) or not self._move(S.FINISHING):
            return False
        self.finishing_since = self.clock()
        return True

    def stop(self) -> bool:
        """Every agent is to stop its processes: -> STOPPING (False: already stopping or ended)."""
        if not self._move(S.STOPPING):
            return False
        self.stopping_since = self.clock()
        return True

    def end(self, state: AttemptState) -> AttemptState:
        """Every agent is gone: the attempt ends in ``state`` (a terminal one)."""
        if not state.ended:
            raise ValueError(f"{state} is not an end of an attempt")
        if not self._move(state):
            raise ValueError(f"an attempt cannot end {state} from {self.state}")
        return state
