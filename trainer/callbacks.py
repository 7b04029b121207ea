"""Callbacks for ``Model.train``: step monitoring (log line, TensorBoard), checkpoints, fault injection."""
from __future__ import annotations

import logging
import time
from typing import Callable, Optional

import numpy as np
from mindspore.train import Callback

from trainer.config import TrainConfig
from trainer.distributed import RankInfo

logger = logging.getLogger(__name__)


def _loss_value(outputs) -> float:
    if isinstance(outputs, (tuple, list)):  # (loss, overflow, scale) with a loss-scale manager
        outputs = outputs[0]
    return float(np.asarray(outputs.asnumpy()).reshape(-1)[0])


class StepMonitor(Callback):
    """Counts global steps, times them, prints a line every ``log_every_steps`` and feeds TensorBoard."""

    def __init__(self, cfg: TrainConfig, info: RankInfo, steps_per_epoch: int, lr: np.ndarray,
                 tensorboard_dir: Optional[str], start_step: int):
        super().__init__()
        self.cfg, self.info, self.per_epoch, self.lr = cfg, info, steps_per_epoch, lr
        self.global_step = start_step
        self.epoch = 0
        self.step_in_epoch = 0
        self.last_loss: Optional[float] = None
        self._t_begin = 0.0
        self._t_end: Optional[float] = None
        self.writer = None
        if tensorboard_dir:
            from tensorboardX import SummaryWriter

            # purge_step drops points a previous attempt wrote past the step we resume from
            self.writer = SummaryWriter(tensorboard_dir, purge_step=start_step if start_step else None)

    def begin_epoch(self, epoch: int, steps_done: int) -> None:
        self.epoch, self.step_in_epoch = epoch, steps_done
        self._t_end = None

    def on_train_step_begin(self, run_context) -> None:
        self._t_begin = time.perf_counter()

    def on_train_step_end(self, run_context) -> None:
        now = time.perf_counter()
        self.global_step += 1
        self.step_in_epoch += 1
        loss = _loss_value(run_context.original_args().net_outputs)
        self.last_loss = loss
        step_s = now - self._t_begin
        # between step ends includes data loading: the honest throughput
        wall = now - self._t_end if self._t_end is not None else step_s
        self._t_end = now
        img_s = self.cfg.batch_size / wall if wall > 0 else 0.0
        lr = float(self.lr[min(self.global_step - 1, len(self.lr) - 1)])
        if not np.isfinite(loss):
            logger.warning("rank %d: loss is %s at step %d", self.info.rank, loss, self.global_step)
        if self.writer is not None:
            step = self.global_step
            self.writer.add_scalar("train/loss", loss, step)
            self.writer.add_scalar("train/lr", lr, step)
            self.writer.add_scalar("train/step_time_ms", step_s * 1000.0, step)
            self.writer.add_scalar("train/data_wait_ms", max(wall - step_s, 0.0) * 1000.0, step)
            self.writer.add_scalar("train/throughput_img_per_s", img_s, step)
            if self.info.rank == 0:
                self.writer.add_scalar("train/throughput_img_per_s_job", img_s * self.info.world_size, step)
        every = self.cfg.log_every_steps
        if self.step_in_epoch % every == 0 or self.step_in_epoch == self.per_epoch:
            print(f"epoch={self.epoch + 1}/{self.cfg.epochs} step={self.step_in_epoch}/{self.per_epoch} "
                  f"global_step={self.global_step} loss={loss:.4f} lr={lr:.5g} "
                  f"img/s={img_s * self.info.world_size:.1f}", flush=True)

    def log_eval(self, epoch: int, metrics: dict[str, float]) -> None:
        if self.writer is not None:
            for key, value in metrics.items():
                self.writer.add_scalar(f"eval/{key}", value, self.global_step)
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class FaultInjector(Callback):
    """Test-only: fail this rank at a given global step, as a crashing user script would."""

    def __init__(self, monitor: StepMonitor, step: int, exit_code: int, rank: int):
        super().__init__()
        self.monitor, self.step, self.exit_code, self.rank = monitor, step, exit_code, rank

    def on_train_step_end(self, run_context) -> None:
        if self.monitor.global_step == self.step:
            from trainer.train import InjectedFault

            raise InjectedFault(f"debug_fail_step: rank {self.rank} fails at step {self.step} as asked",
                                self.exit_code)


class StepCheckpointer(Callback):
    """Saves every ``every`` global steps inside an epoch (epoch ends are saved by the loop)."""

    def __init__(self, monitor: StepMonitor, every: int, steps_per_epoch: int,
                 save: Callable[[int, int, int, dict], str]):
        super().__init__()
        self.monitor, self.every, self.per_epoch, self.save = monitor, every, steps_per_epoch, save

    def on_train_step_end(self, run_context) -> None:
        m = self.monitor
        if m.global_step % self.every == 0 and m.step_in_epoch < self.per_epoch:
            self.save(m.epoch, m.step_in_epoch, m.global_step, {})
