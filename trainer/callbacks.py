"""Callbacks for ``Model.train`` (progress and TensorBoard, checkpoints) and the eval pictures."""
from __future__ import annotations

import logging
import os
import shutil
import sys
import time
from typing import Callable, Mapping, Optional, TextIO

import numpy as np
from mindspore.train import Callback

from mscluster.events import COMPUTE_S
from mscluster.rank import RankInfo, preempt_requested, report
from trainer.config import TrainConfig
from trainer.errors import TrainerError
from trainer.monitor import (GRID_SAMPLES, EventWriter, SystemSampler, config_markdown, confusion_image, eta_seconds,
                             format_plain, format_progress, prediction_grid, read_test_images, system_interval)

logger = logging.getLogger(__name__)


def _loss_value(outputs) -> float:
    if isinstance(outputs, (tuple, list)):  # (loss, overflow, scale) with a loss-scale manager
        outputs = outputs[0]
    return float(np.asarray(outputs.asnumpy()).reshape(-1)[0])


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class StepMonitor(Callback):
    """Counts global steps, times them, reports progress and feeds TensorBoard.

    Progress: on rank 0 with stdout a terminal, one live line per epoch redrawn in place (epoch,
    step/steps, loss, img/s, ETA); otherwise (a pipe, a log file, the launcher) one plain line every
    ``log_every_steps`` steps, never a control character. TensorBoard (``tensorboard_dir`` given):
    train/* scalars every step, eval/* scalars and pictures at each evaluation (rank 0), system/*
    every few seconds, the settings as text (rank 0) and as hparams with the final top1 (rank 0).
    Every point is handed to the OS at once, so a killed rank loses none; ``purge_step`` =
    ``start_step + 1`` makes TensorBoard drop what an earlier attempt wrote past the resumed step.
    """

    def __init__(self, cfg: TrainConfig, info: RankInfo, steps_per_epoch: int, lr: np.ndarray,
                 tensorboard_dir: Optional[str], start_step: int, *, stream: Optional[TextIO] = None,
                 environ: Optional[Mapping[str, str]] = None):
        super().__init__()
        self.cfg, self.info, self.per_epoch, self.lr = cfg, info, steps_per_epoch, lr
        self.start_step = start_step
        self.global_step = start_step
        self.last_steps = 1  # steps the last step-end callback covered (a sink's length, else 1)
        self._call_steps = 0  # MindSpore's cur_step_num at the last step end of this Model.train call
        self.epoch = 0
        self.step_in_epoch = 0
        self.last_loss: Optional[float] = None
        self.stream = stream if stream is not None else sys.stdout
        self.live = info.rank == 0 and _is_terminal(self.stream)
        self._t_begin = 0.0
        self._t_end: Optional[float] = None
        self._t_first: Optional[float] = None  # end of the epoch's first step: ETA leaves compilation out
        self._steps_after_first = 0
        self._drawn_at = 0.0
        self._hparams_done = False
        self._samples: Optional[tuple[np.ndarray, np.ndarray, np.ndarray]] = None  # images, labels, net inputs
        self.writer: Optional[EventWriter] = None
        self.sampler: Optional[SystemSampler] = None
        if tensorboard_dir:
            environ = os.environ if environ is None else environ
            self.writer = EventWriter(tensorboard_dir, purge_step=start_step + 1)
            if info.rank == 0:
                self.writer.add_text("config", config_markdown(cfg.to_dict(), {"world_size": info.world_size}),
                                     start_step)
                self.writer.flush()
            local_rank = environ.get("LOCAL_RANK", "0")
            self.sampler = SystemSampler(self.writer.add_scalars, lambda: self.global_step,
                                         host_metrics=local_rank in ("", "0"),
                                         interval_s=system_interval(environ), start_step=start_step)
            self.sampler.start()

    @property
    def total_steps(self) -> int:
        return self.per_epoch * self.cfg.epochs

    def begin_epoch(self, epoch: int, steps_done: int) -> None:
        self.epoch, self.step_in_epoch = epoch, steps_done
        self._t_end = self._t_first = None
        self._steps_after_first = 0

    def passed(self, step: int) -> bool:
        """Whether the last step end reached ``step`` (a sink may cover several steps)."""
        return self.global_step - self.last_steps < step <= self.global_step

    def passed_multiple(self, every: int) -> bool:
        """Whether the last step end reached a multiple of ``every`` global steps."""
        return every > 0 and self.global_step // every > (self.global_step - self.last_steps) // every

    def on_train_begin(self, run_context) -> None:
        self._call_steps = 0

    def on_train_step_begin(self, run_context) -> None:
        self._t_begin = time.perf_counter()

    def on_train_step_end(self, run_context) -> None:
        now = time.perf_counter()
        args = run_context.original_args()
        # MindSpore counts the steps of this train call: +1 a step, +sink_size a sink
        current = getattr(args, "cur_step_num", None)
        steps = max(int(current) - self._call_steps, 1) if isinstance(current, int) else 1
        self._call_steps = current if isinstance(current, int) else self._call_steps + 1
        self.last_steps = steps
        self.global_step += steps
        self.step_in_epoch += steps
        loss = _loss_value(args.net_outputs)
        self.last_loss = loss
        step_s = now - self._t_begin
        # between step ends includes data loading: the honest throughput
        wall = now - self._t_end if self._t_end is not None else step_s
        self._t_end = now
        if self._t_first is None:
            self._t_first = now
        else:
            self._steps_after_first += 1
        img_s = self.cfg.batch_size * self.cfg.grad_accumulation * steps / wall if wall > 0 else 0.0
        lr = float(self.lr[min(self.global_step - 1, len(self.lr) - 1)])
        if not np.isfinite(loss):
            logger.warning("rank %d: loss is %s at step %d", self.info.rank, loss, self.global_step)
        if self.writer is not None:
            scalars = {"train/loss": loss, "train/lr": lr, "train/step_time_ms": step_s * 1000.0,
                       "train/data_wait_ms": max(wall - step_s, 0.0) * 1000.0,
                       "train/throughput_img_per_s": img_s}
            if self.info.rank == 0:
                scalars["train/throughput_img_per_s_job"] = img_s * self.info.world_size
            if self.cfg.grad_accumulation != 1:  # steps are optimizer steps of this many micro-batches
                scalars["train/grad_accumulation"] = float(self.cfg.grad_accumulation)
            self.writer.add_scalars(scalars, self.global_step)
            self.writer.flush()  # one small write(2): the point survives a kill of this rank
        # the launcher's view (status.json, mscluster status): a typed event, never the printed line; with
        # the exchange on the host, the seconds a step spent outside it (data, compute) for the straggler
        # scores; MindSpore's own step cannot separate its collective, and reports none
        try:
            exchange_s = args.exchange_s  # set by trainer.trainstep's own step
        except (AttributeError, KeyError):  # MindSpore's run context raises KeyError for a name it lacks
            exchange_s = None
        outside = {COMPUTE_S: max(wall - exchange_s, 0.0) / steps} if exchange_s is not None else {}
        report(self.global_step, epoch=self.epoch + 1, loss=loss, lr=lr, img_per_s=img_s * self.info.world_size,
               epochs=self.cfg.epochs, step_in_epoch=self.step_in_epoch, steps_per_epoch=self.per_epoch,
               grad_accumulation=self.cfg.grad_accumulation, **outside)
        if self.live:
            self._draw(loss, img_s * self.info.world_size, now)
        else:
            every = self.cfg.log_every_steps
            if self.step_in_epoch // every > (self.step_in_epoch - steps) // every or self.step_in_epoch == self.per_epoch:
                self.stream.write(format_plain(self.epoch + 1, self.cfg.epochs, self.step_in_epoch, self.per_epoch,
                                               self.global_step, loss, lr, img_s * self.info.world_size,
                                               self.cfg.grad_accumulation) + "\n")
                self.stream.flush()

    def _draw(self, loss: float, img_s: float, now: float) -> None:
        last = self.step_in_epoch >= self.per_epoch
        if not last and now - self._drawn_at < 0.1:  # at most 10 redraws a second
            return
        self._drawn_at = now
        eta = 0.0 if last else eta_seconds(self.step_in_epoch, self.per_epoch, now - (self._t_first or now),
                                           self._steps_after_first)
        width = shutil.get_terminal_size((80, 24)).columns
        line = format_progress(self.epoch + 1, self.cfg.epochs, self.step_in_epoch, self.per_epoch, loss, img_s,
                               eta, width)
        self.stream.write("\r" + line + "\x1b[K" + ("\n" if last else ""))
        self.stream.flush()

    def log_eval(self, epoch: int, metrics: Mapping[str, float], confusion: Optional[np.ndarray] = None,
                 net=None) -> None:
        """Rank 0, after an evaluation: eval/* scalars, the pictures, and at the last epoch the hparams.

        Args:
            confusion: the evaluation's confusion matrix (rows true, columns predicted), drawn as
                ``eval/confusion_matrix``.
            net: the network; its predictions on the first test images are drawn as
                ``eval/predictions`` (one forward pass of one eval-sized batch).
        """
        if self.writer is None:
            return
        step = self.global_step
        self.writer.add_scalars({f"eval/{key}": value for key, value in metrics.items()}, step)
        try:
            self._log_pictures(step, confusion, net)
        except (OSError, ValueError, RuntimeError, TrainerError) as exc:  # a picture must never stop training
            logger.warning("could not draw the eval pictures: %s", exc)
        if epoch >= self.cfg.epochs:
            self.log_hparams(metrics)
        self.writer.flush()

    def _log_pictures(self, step: int, confusion: Optional[np.ndarray], net) -> None:
        from trainer.data import class_names

        names = class_names(self.cfg.data_dir)
        if confusion is not None:
            self.writer.add_image("eval/confusion_matrix", confusion_image(np.asarray(confusion), names), step)
        if net is None:
            return
        if self._samples is None:
            self._samples = sample_inputs(self.cfg.data_dir, self.cfg.image_size, self.cfg.batch_size)
        images, labels, inputs = self._samples
        preds = predict_classes(net, inputs)[:GRID_SAMPLES]
        self.writer.add_image("eval/predictions",
                              prediction_grid(images[:GRID_SAMPLES], preds, labels[:GRID_SAMPLES], names), step)

    def log_hparams(self, metrics: Mapping[str, float]) -> None:
        """Rank 0: the settings as hparams with the final metrics (``hparam/top1``, ``hparam/loss``)."""
        if self.writer is None or self.info.rank != 0 or self._hparams_done:
            return
        self._hparams_done = True
        self.writer.add_hparams({**self.cfg.to_dict(), "world_size": self.info.world_size},
                                {f"hparam/{k}": float(v) for k, v in metrics.items()}, self.global_step)

    def close(self) -> None:
        if self.sampler is not None:
            self.sampler.stop()
            self.sampler = None
        if self.writer is not None:
            if self.global_step >= self.total_steps:  # finished without a final eval: hparams alone
                self.log_hparams({})
            self.writer.close()
            self.writer = None


def sample_inputs(data_dir: str, image_size: int, count: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The first ``count`` test images, their labels, and the network's input for them (the eval transforms).

    ``count`` is the eval batch size, so that in graph mode the forward pass reuses the graph the
    evaluation compiled instead of compiling one more.
    """
    from trainer.data import eval_transform_image

    images, labels = read_test_images(data_dir, count)
    inputs = np.stack([eval_transform_image(image, image_size) for image in images]).astype(np.float32)
    return images, labels, inputs


def predict_classes(net, inputs: np.ndarray) -> np.ndarray:
    """The class ``net`` (put in inference mode for the call) predicts for each of ``inputs``."""
    import mindspore as ms

    was_training = net.training
    net.set_train(False)
    try:
        logits = net(ms.Tensor(inputs)).asnumpy()
    finally:
        net.set_train(was_training)
    return logits.argmax(axis=1)


class StepCheckpointer(Callback):
    """Saves every ``every`` global steps inside an epoch (epoch ends are saved by the loop)."""

    def __init__(self, monitor: StepMonitor, every: int, steps_per_epoch: int,
                 save: Callable[[int, int, int, dict], str]):
        super().__init__()
        self.monitor, self.every, self.per_epoch, self.save = monitor, every, steps_per_epoch, save

    def on_train_step_end(self, run_context) -> None:
        m = self.monitor
        if m.passed_multiple(self.every) and m.step_in_epoch < self.per_epoch:  # a sink's end past a multiple
            self.save(m.epoch, m.step_in_epoch, m.global_step, {})


class SinkCallbacks(Callback):
    """``callbacks`` called as MindSpore calls them in sink mode: one step begin and end per ``steps``
    steps (CPU, where MindSpore 2.10 runs every step on its own even with dataset_sink_mode)."""

    def __init__(self, callbacks: list, steps: int):
        super().__init__()
        self.callbacks, self.steps, self.done = callbacks, steps, 0

    def on_train_begin(self, run_context) -> None:
        self.done = 0
        for cb in self.callbacks:
            cb.on_train_begin(run_context)

    def on_train_step_begin(self, run_context) -> None:
        if self.done % self.steps == 0:
            for cb in self.callbacks:
                cb.on_train_step_begin(run_context)

    def on_train_step_end(self, run_context) -> None:
        self.done += 1
        if self.done % self.steps == 0:
            for cb in self.callbacks:
                cb.on_train_step_end(run_context)

    def on_train_end(self, run_context) -> None:
        for cb in self.callbacks:
            cb.on_train_end(run_context)


class PreemptCheckpointer(Callback):
    """Rank 0, once SIGUSR1 came (Slurm's warning before the time limit, forwarded by the launcher):
    at the end of the step under way, save and leave (``leave``). Inside an epoch only: at its last
    step the epoch's own end (statistics, evaluation) comes first, and the loop saves there."""

    def __init__(self, monitor: StepMonitor, steps_per_epoch: int, leave: Callable[[int, int, int], None]):
        super().__init__()
        self.monitor, self.per_epoch, self.leave = monitor, steps_per_epoch, leave

    def on_train_step_end(self, run_context) -> None:
        m = self.monitor
        if preempt_requested() and m.step_in_epoch < self.per_epoch:
            self.leave(m.epoch, m.step_in_epoch, m.global_step)
