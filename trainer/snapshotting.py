"""In-memory snapshots during training: every ``snapshot_every_steps`` steps (or auto), on every rank.

Each snapshot first averages the BatchNorm statistics over the ranks (every rank then holds what
an uninterrupted run holds, as at a disk checkpoint), then the host's local rank 0 writes the
whole state through ``trainer.checkpoint.CheckpointWriter`` (the same atomic write, the same
sidecar with the SHA-256, in the background from a copy) into the host's tmpfs folder
(``MSCLUSTER_SNAPSHOT_DIR``), keeping only the newest complete one. The folder outlives the rank;
the agent and the launcher remove it (see docs/concepts/restarts.md).

``auto``: the first ``AUTO_PROBE_STEPS`` steps after the first are timed, one snapshot is taken and
timed (its stall and its write), and ``trainer.snapshot.auto_interval`` picks the interval; the
ranks take the largest of their picks (one all-gather), so every rank snapshots at the same steps.
"""
from __future__ import annotations

import logging
import time
from typing import Callable, Optional

from mindspore.train import Callback

from mscluster.rank import RankInfo
from trainer import snapshot as snap
from trainer.output import emit

logger = logging.getLogger(__name__)

# take(epoch, step_in_epoch, global_step, statistics already averaged) -> seconds the step was held up
Take = Callable[[int, int, int, bool], float]


class Snapshotter(Callback):
    """Takes a snapshot every ``interval`` global steps inside an epoch; picks the interval when auto."""

    def __init__(self, monitor, setting, info: RankInfo, steps_per_epoch: int, take: Take,
                 wait_write: Callable[[], float], agree: Callable[[int], int],
                 clock: Callable[[], float] = time.perf_counter):
        super().__init__()
        self.monitor, self.info, self.per_epoch, self.take = monitor, info, steps_per_epoch, take
        self.wait_write, self.agree, self.clock = wait_write, agree, clock
        self.auto = setting == snap.AUTO
        self.interval: int = 0 if self.auto else int(setting)
        self.stall_s = 0.0  # held up by snapshots, in total
        self.taken = 0
        self._t_first: Optional[float] = None  # the end of this run's first step (it compiles: not timed)
        self._timed_steps = 0
        self.step_s: Optional[float] = None
        self.probe_stall_s: Optional[float] = None
        self.due_at_epoch_end = False

    def on_train_step_end(self, run_context) -> None:
        m = self.monitor
        if self.auto and self.interval == 0:
            self._probe(m)
            return
        if m.passed_multiple(self.interval):
            if m.step_in_epoch < self.per_epoch:
                self._take(m.epoch, m.step_in_epoch, m.global_step)
            else:  # the epoch's end: the loop averages the statistics and evaluates first, then calls at_epoch_end
                self.due_at_epoch_end = True

    def at_epoch_end(self, epoch_done: int, global_step: int) -> None:
        """After the epoch's end (statistics averaged, evaluated): the snapshot due at its last step."""
        if self.due_at_epoch_end:
            self.due_at_epoch_end = False
            self._take(epoch_done, 0, global_step, synced=True)

    def _take(self, epoch: int, step_in_epoch: int, global_step: int, synced: bool = False) -> float:
        held = self.take(epoch, step_in_epoch, global_step, synced)
        self.stall_s += held
        self.taken += 1
        return held

    def _probe(self, m) -> None:
        now = self.clock()
        if self._t_first is None:
            self._t_first = now
            return
        self._timed_steps += m.last_steps
        if self._timed_steps < snap.AUTO_PROBE_STEPS or m.step_in_epoch >= self.per_epoch:
            return
        step_s = (now - self._t_first) / self._timed_steps
        held = self._take(m.epoch, m.step_in_epoch, m.global_step)
        write_s = self.wait_write()  # once: the write's length bounds the interval too
        mine = snap.auto_interval(held, write_s, step_s)
        self.interval = max(self.agree(mine), 1)
        self.step_s = step_s
        share = snap.stall_share(held, step_s, self.interval)
        self.probe_stall_s = held
        if self.info.rank == 0:  # the interval is every rank's; the stall printed is rank 0's (it writes)
            emit(f"snapshots: every {self.interval} step(s) (auto: step {step_s * 1000:.1f} ms, snapshot stall "
                 f"{held * 1000:.1f} ms, write {write_s:.3f} s; stall {share * 100:.2f}% of step time)")

    def summary(self, steps: int) -> Optional[str]:
        """One line: snapshots taken and the stall they cost over ``steps`` steps of this run."""
        if not self.taken:
            return None
        share = ""
        if self.step_s and steps:  # over this short run (the first snapshot is at step 5), and one per interval
            share = (f"; {self.stall_s / (self.step_s * steps) * 100:.2f}% of this attempt's {steps} step(s), "
                     f"{snap.stall_share(self.stall_s / self.taken, self.step_s, self.interval) * 100:.2f}% "
                     f"at one every {self.interval}")
        return (f"snapshots: {self.taken} taken, every {self.interval} step(s), held training up "
                f"{self.stall_s * 1000:.0f} ms in all{share}")
