"""Test-only fault injection, kept out of the training loop's way: the ``debug_*`` settings.

``debug_fail_step`` (with ``debug_fail_rank``, ``debug_fail_exit_code``, ``debug_fail_signal``)
makes a rank fail at a global step as a crashing program would; ``debug_hang_step`` (with
``debug_hang_rank``) makes it sleep inside a step, stuck in Python; ``debug_pause_in_save`` holds a
checkpoint half-written; ``debug_fail_attempt`` limits both to one attempt of a job (a restart
then runs clean). The loop only adds the callbacks ``fault_callbacks`` returns and wraps its
``Model.train`` call in ``dying_as_asked``.
"""
from __future__ import annotations

import contextlib
import os
import time
from typing import Iterator

from mindspore.train import Callback

from mscluster.rank import RankInfo
from trainer.config import TrainConfig


class InjectedFault(Exception):
    """Raised by the test-only ``debug_fail_*`` settings; the process exits with ``exit_code``."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


def armed(cfg: TrainConfig, info: RankInfo) -> bool:
    """Whether the debug hooks fire in this attempt of the job."""
    return cfg.debug_fail_attempt is None or cfg.debug_fail_attempt == info.restart_count


def save_pause_s(cfg: TrainConfig, info: RankInfo) -> float:
    """How long a checkpoint stays half-written in this attempt (0: not at all)."""
    return cfg.debug_pause_in_save if armed(cfg, info) else 0.0


class FaultInjector(Callback):
    """Fail this rank when the monitor's global step reaches ``step``."""

    def __init__(self, monitor, step: int, exit_code: int, rank: int):
        super().__init__()
        self.monitor, self.step, self.exit_code, self.rank = monitor, step, exit_code, rank

    def on_train_step_end(self, run_context) -> None:
        if self.monitor.passed(self.step):
            raise InjectedFault(f"debug_fail_step: rank {self.rank} fails at step {self.step} as asked",
                                self.exit_code)


class Hang(Callback):
    """Sleep inside the step once the monitor's global step reaches ``step``: stuck in Python."""

    def __init__(self, monitor, step: int):
        super().__init__()
        self.monitor, self.step = monitor, step

    def on_train_step_end(self, run_context) -> None:
        if self.monitor.passed(self.step):
            hang_in_python(3600.0)


def hang_in_python(seconds: float) -> None:
    """The frame the watchdog's stack shows for a rank stuck in Python."""
    time.sleep(seconds)


def fault_callbacks(cfg: TrainConfig, info: RankInfo, monitor) -> list:
    """The callbacks the settings ask for on this rank in this attempt (usually none)."""
    if not armed(cfg, info):
        return []
    out: list = []
    if cfg.debug_fail_step is not None and cfg.debug_fail_rank in (None, info.rank):
        out.append(FaultInjector(monitor, cfg.debug_fail_step, cfg.debug_fail_exit_code, info.rank))
    if cfg.debug_hang_step is not None and cfg.debug_hang_rank in (None, info.rank):
        out.append(Hang(monitor, cfg.debug_hang_step))
    return out


@contextlib.contextmanager
def dying_as_asked(cfg: TrainConfig) -> Iterator[None]:
    """With ``debug_fail_signal``, an injected fault kills the process by that signal instead
    (as a killed process dies: no cleanup, no error file)."""
    try:
        yield
    except InjectedFault:
        if cfg.debug_fail_signal:
            os.kill(os.getpid(), cfg.debug_fail_signal)
        raise
