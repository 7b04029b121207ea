"""One lifecycle vocabulary: the states of a process, of an attempt and of a job, and why a launch ends.

Every state is a ``str`` enum: the words ``status.json``, ``result.json`` and ``mscluster status``
show are the enum values, so the files keep the words they always had.

A process (``status.json``'s ``processes.<name>.state``)::

    PENDING --Started--> RUNNING --Exited 0 (or after it reported Finished)--> SUCCEEDED
       |                    +------Exited != 0, the attempt running--------> FAILED
       |                    +------Exited != 0, the attempt stopping-------> STOPPED
       +--------------------+------its host's agent gone------------------> LOST
    (when the attempt ends, a process still PENDING/RUNNING becomes SUCCEEDED if it succeeded, else STOPPED)

An attempt (``launcher.supervisor``; ``status.json``'s ``state`` once it ended)::

    STARTING --every process started--> RUNNING --every process exited 0--------------------> SUCCEEDED
        |                                  |  \\--every rank ended well, the scheduler left---> FINISHING
        |                                  |                (its agent stops it) --all done--> SUCCEEDED
        +----------------------------------+--a failure, a lost host, a stall, a signal--> STOPPING
                                                STOPPING --every agent gone--> FAILED | INTERRUPTED | PREEMPTED

STARTING: agents are being started; RUNNING: every process of every host has started;
FINISHING: every rank ended and none failed, a process without a rank (MindSpore's scheduler,
which a program that never joins the cluster leaves waiting) is being stopped; STOPPING: every
agent was told to stop its processes (TERM, a grace period, KILL) and the supervisor waits for
them. The attempt ends in one of the terminal states. ``status.json`` says ``running`` until
then (STARTING, FINISHING and STOPPING are the supervisor's own), then the end's word.

A job (``result.json``'s ``status``; ``mscluster status`` while it runs)::

    RUNNING --an attempt SUCCEEDED--> SUCCEEDED
       +-----an attempt FAILED, no restart left or none can help--> FAILED (else the next attempt)
       +-----an attempt INTERRUPTED (Ctrl-C, SIGTERM, SIGHUP)-----> INTERRUPTED
       +-----an attempt PREEMPTED (SIGUSR1: Slurm's warning)------> PREEMPTED

Pure data: no I/O here.
"""
from __future__ import annotations

import enum
import signal
from typing import Optional


class ProcessState(str, enum.Enum):
    """One process of an attempt (a rank or the scheduler)."""

    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    STOPPED = "stopped"  # ended by the teardown (or stopped as a leftover), not by a fault of its own
    LOST = "lost"  # its host's agent went away before it reported its end

    def __str__(self) -> str:
        return self.value


class AttemptState(str, enum.Enum):
    """One attempt of a job: the supervisor's state machine."""

    STARTING = "starting"
    RUNNING = "running"
    FINISHING = "finishing"  # every rank ended well; a process without a rank (the scheduler) is being stopped
    STOPPING = "stopping"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    INTERRUPTED = "interrupted"
    PREEMPTED = "preempted"

    @property
    def ended(self) -> bool:
        return self in ATTEMPT_ENDS

    def __str__(self) -> str:
        return self.value


ATTEMPT_ENDS = frozenset({AttemptState.SUCCEEDED, AttemptState.FAILED, AttemptState.INTERRUPTED,
                          AttemptState.PREEMPTED})


class JobState(str, enum.Enum):
    """The whole job: ``result.json``'s ``status`` and what ``mscluster status`` says."""

    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    INTERRUPTED = "interrupted"
    PREEMPTED = "preempted"

    def __str__(self) -> str:
        return self.value


def job_state_of(attempt: AttemptState) -> JobState:
    """The job's state when an attempt ended so (a running attempt: the job runs)."""
    return JobState(attempt.value) if attempt.ended else JobState.RUNNING


class Interrupted(KeyboardInterrupt):
    """The launcher was told to stop by a signal: Ctrl-C (SIGINT), SIGTERM, or SIGHUP (its terminal closed).

    Raised by the CLI's signal handler; a plain KeyboardInterrupt is Python's own for SIGINT.
    """

    def __init__(self, signum: int = signal.SIGINT) -> None:
        super().__init__(signal_name(signum))
        self.signum = int(signum)

    @property
    def name(self) -> str:
        return signal_name(self.signum)


def signal_name(signum: int) -> str:
    """``SIGTERM`` for 15; ``signal 99`` for a number Python has no name for."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def interrupt_signal(exc: BaseException) -> str:
    """The signal's name for an interrupt (a plain KeyboardInterrupt is SIGINT)."""
    return exc.name if isinstance(exc, Interrupted) else "SIGINT"


def interrupt_reason(signame: Optional[str]) -> str:
    """The stop reason users read: ``interrupted (Ctrl-C)`` for SIGINT, else ``interrupted (SIGTERM)``."""
    return "interrupted (Ctrl-C)" if signame in (None, "SIGINT") else f"interrupted ({signame})"
