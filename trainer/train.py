"""One data-parallel training process: the tutorial's pipeline, run on whatever rank the environment says.

``train`` reads top to bottom as named steps in data-flow order: the resume position; the model
and optimizer; checkpointing; the epoch loop (which evaluates on every rank's shard and
checkpoints on rank 0); and the final barrier. The collectives live in ``trainer.collectives``,
the test-only fault hooks in ``trainer.faults``. Every rank builds the same initial
weights from the same seed (MindSpore does not broadcast them) and reads a disjoint shard whose
shuffle order is seeded per epoch (``seed + epoch``), so that a run resumed mid-epoch sees the
same batches the uninterrupted run would have.
"""
from __future__ import annotations

import logging
import math
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional

from mscluster import events
from mscluster.rank import (PREEMPT_EXIT, RankInfo, preempt_requested, rank_info, section,
                            report_checkpoint, report_eval, watch_preemption)
from trainer import checkpoint as ckpt
from trainer import faults
from trainer.collectives import all_gather_counts, barrier, sync_batchnorm_stats
from trainer.config import TrainConfig
from trainer.distributed import init_backend
from trainer.errors import CheckpointError, ConfigError, DataError
from trainer.hostexchange import grad_exchange
from trainer.output import emit

logger = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """What a rank did: where it stopped, its last loss, and (rank 0) the last evaluation."""

    rank: int
    world_size: int
    epochs_done: int = 0
    global_step: int = 0
    last_loss: Optional[float] = None
    eval: dict[str, float] = field(default_factory=dict)
    checkpoint: Optional[str] = None
    # every rank of the job shares this host and met at its shared-memory barrier after its last collective:
    # none waits for data from another, so the process may end without MindSpore's cluster teardown
    past_last_collective: bool = False


@dataclass(frozen=True)
class Position:
    """Where training (re)starts: the epoch index, the steps of it already done, the global step."""

    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    renumbered: bool = False  # a checkpoint of another grad_accumulation: its steps counted anew
    other_world: bool = False  # a checkpoint taken with another number of ranks (the job shrank)


def paths(cfg: TrainConfig, rank: int) -> dict[str, str]:
    out = os.path.abspath(cfg.output_dir)
    return {
        "output": out,
        "checkpoints": os.path.join(out, "checkpoints"),
        "tensorboard": os.path.join(out, "tensorboard", f"rank_{rank}"),
    }


def steps_per_epoch(shard_batches: int, cfg: TrainConfig) -> int:
    """Steps one epoch runs: every whole batch of the shard, capped by ``steps_per_epoch``."""
    steps = shard_batches if cfg.steps_per_epoch is None else min(shard_batches, cfg.steps_per_epoch)
    if steps <= 0:
        raise DataError(f"{cfg.data_dir}: a shard holds fewer images than one batch of {cfg.batch_size}")
    return steps


def _decayed_params(net) -> list[dict[str, Any]]:
    """Weight decay on conv/dense weights only, not on BatchNorm or biases (model-zoo practice)."""
    decay, no_decay = [], []
    for p in net.trainable_params():
        name = p.name.lower()
        (no_decay if ("beta" in name or "gamma" in name or "bias" in name) else decay).append(p)
    return [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}, {"order_params": net.trainable_params()}]


def resolve_resume(cfg: TrainConfig, ckpt_dir: str,
                   snapshot_dir: Optional[str] = None) -> Optional[tuple[str, ckpt.CheckpointMeta]]:
    """The checkpoint to resume from, per ``cfg.resume``; None to start fresh.

    ``auto`` takes the newest checkpoint that verifies and names every newer one it skipped; the
    host's in-memory snapshot (``snapshot_dir``) wins when it is at least as new
    (``trainer.snapshot.pick_source``). An explicit path that fails verification is an error.
    """
    if cfg.resume == "none":
        if ckpt.list_checkpoints(ckpt_dir):  # never overwrite or prune an earlier run's checkpoints
            raise CheckpointError(f"{ckpt_dir}: holds checkpoints of an earlier run; continue it with "
                                  f"resume=auto, or choose another output_dir")
        return None
    if cfg.resume == "auto":
        path, meta, skipped = ckpt.latest_good(ckpt_dir)
        for bad, why in skipped:
            logger.warning("skipping checkpoint %s: %s", bad, why)
        if snapshot_dir:
            from trainer.snapshot import pick_source

            mem_path, mem_meta, bad_mem = ckpt.latest_good(snapshot_dir)
            for bad, why in bad_mem:
                logger.warning("skipping snapshot %s: %s", bad, why)
            if pick_source(mem_meta.global_step if mem_meta else None, meta.global_step if meta else None) == "memory":
                return mem_path, mem_meta
        return (path, meta) if path else None
    try:
        return cfg.resume, ckpt.verify(cfg.resume)
    except CheckpointError as exc:
        raise CheckpointError(f"resume: {exc}") from None


def _snapshot(cell) -> list[dict[str, Any]]:
    """A private copy of every parameter of ``cell``, in ``ms.save_checkpoint``'s order and names.

    The background writer saves from it while training goes on (``asnumpy`` may share memory
    with the live parameter on CPU, hence the copy).
    """
    import numpy as np
    import mindspore as ms

    cell.init_parameters_data()
    return [{"name": param.name, "data": ms.Tensor(np.array(param.asnumpy(), copy=True))}
            for _, param in cell.parameters_and_names()]


def _check_same_start(info: RankInfo, start: Position, ckpt_dir: str) -> None:
    """Every rank must resume at the same global step, or their collectives pair different steps.

    They differ when the checkpoints folder is not shared between hosts (rank 0 writes it): then a
    rank elsewhere finds an older checkpoint or none.

    Raises:
        CheckpointError: this rank's start differs from another's.
    """
    steps = all_gather_counts(info, start.global_step)
    if len(set(steps)) > 1:
        raise CheckpointError(f"{ckpt_dir}: the ranks would start at different global steps ({steps}, by rank); every "
                              f"rank must read the checkpoints rank 0 writes (a shared folder, or a copy on each host)")


FROM_SETTINGS = ("learning_rate", "momentum")  # optimizer parameters the settings give, not the checkpoint
NOT_PARAMETERS = ("epoch", "step_in_epoch", "dataset_seed", "fingerprint")  # our append_dict


def _load_state(train_network, path: str, global_step: Optional[int] = None) -> None:
    """Load weights, BatchNorm statistics, optimizer moments and global step from ``path``.

    The schedule (the whole per-step learning-rate array) and the momentum coefficient come from
    the settings; the restored global step indexes the schedule, so it continues at the exact step.
    """
    import mindspore as ms

    params, _ = ckpt.load_verified(path)  # the very bytes whose SHA-256 the sidecar vouches for
    for key in FROM_SETTINGS + NOT_PARAMETERS:
        params.pop(key, None)
    if global_step is not None and "global_step" in params:  # another grad_accumulation: the step it becomes
        import numpy as np

        params["global_step"] = ms.Parameter(ms.Tensor(np.array([global_step], dtype=np.int32)), name="global_step")
    not_loaded, _ = ms.load_param_into_net(train_network, params, strict_load=True)
    missing = [n for n in not_loaded if n not in FROM_SETTINGS]
    if missing:
        raise CheckpointError(f"{path}: holds no value for {', '.join(missing[:5])}")


@dataclass
class _Run:
    """What the model-and-optimizer step builds and the later steps use."""

    net: Any
    model: Any
    lr: Any  # the per-step learning rate (numpy array)
    per_epoch: int
    epoch_dataset: Callable[[int], Any]
    data_dir: str
    class_names: list
    sink: bool = False  # steps run in sinks (sink_mode)


def snapshot_folder(cfg: TrainConfig, environ: Mapping[str, str]) -> Optional[str]:
    """This host's in-memory snapshot folder (set by the launcher), when snapshots are on."""
    from mscluster.jobfiles import SNAPSHOT_DIR_ENV

    return (environ.get(SNAPSHOT_DIR_ENV) or None) if cfg.snapshot_every_steps not in (0, None) else None


def _resume_position(cfg: TrainConfig, info: RankInfo, ckpt_dir: str,
                     fingerprint: Mapping[str, Any],
                     environ: Mapping[str, str] = {}) -> tuple[Optional[str], Position]:  # noqa: B006 - read only
    """Step 1: the checkpoint to resume from (or None) and where training starts, the same on every rank.

    Decided before anything is built, so an incompatible checkpoint changes nothing.
    """
    resume = resolve_resume(cfg, ckpt_dir, snapshot_folder(cfg, environ))
    start = Position()
    path = None
    if resume is not None:
        path, meta = resume
        saved_k = int(meta.fingerprint.get("grad_accumulation", 1))
        saved_world = int(meta.fingerprint.get("world_size", info.world_size))
        other_world = saved_world != info.world_size
        ignore = ("grad_accumulation", "global_batch_size") if saved_k != cfg.grad_accumulation else ()
        if other_world:
            ignore = ("grad_accumulation", "global_batch_size", "world_size")
        diff = ckpt.fingerprint_mismatch({k: v for k, v in meta.fingerprint.items() if k not in ignore},
                                         {k: v for k, v in fingerprint.items() if k not in ignore})
        if diff:
            raise CheckpointError(f"{path}: incompatible with the current settings: {'; '.join(diff)}")
        start = Position(meta.epoch, meta.step_in_epoch, meta.global_step)
        saved_batch, batch = int(meta.fingerprint["global_batch_size"]), int(fingerprint["global_batch_size"])
        if other_world:
            start = _other_world(cfg, path, start, (saved_world, saved_k, saved_batch),
                                 (info.world_size, cfg.grad_accumulation, batch))
        elif ignore:
            start = _other_accumulation(cfg, path, start, saved_k, saved_batch, batch)
    _check_same_start(info, start, ckpt_dir)
    return path, start


def _other_accumulation(cfg: TrainConfig, path: str, start: Position, saved_k: int, saved_batch: int,
                        batch: int) -> Position:
    """A checkpoint of another ``grad_accumulation``: refused, unless ``resume_other_accumulation``;
    then its position carries over in images (it must fall on an optimizer step of the new k).

    Raises:
        CheckpointError: one line naming both k and the setting that allows it.
    """
    if not cfg.resume_other_accumulation:
        raise CheckpointError(f"{path}: taken with grad_accumulation {saved_k}, the settings say "
                              f"{cfg.grad_accumulation}: the steps (and so the schedule and data position) "
                              f"differ; set resume_other_accumulation: true to resume it anyway")
    return _in_images(path, start, saved_batch, batch, f"grad_accumulation {saved_k}",
                      f"grad_accumulation {cfg.grad_accumulation}")


def _other_world(cfg: TrainConfig, path: str, start: Position, saved: tuple[int, int, int],
                 now: tuple[int, int, int]) -> Position:
    """A checkpoint of another number of ranks (``saved``/``now``: ranks, grad_accumulation, global batch).

    Refused unless ``resume_other_world`` (the launcher sets it when the job shrinks). At the same
    global batch every step is the same images (the shards interleave: ``docs/concepts/spares.md``),
    so the position, schedule and step numbers are the checkpoint's; at another global batch it
    needs ``resume_other_accumulation`` too, and the position carries over in images.

    Raises:
        CheckpointError: one line naming both shapes and the setting that allows it.
    """
    (saved_world, saved_k, saved_batch), (world, k, batch) = saved, now
    if not cfg.resume_other_world:
        raise CheckpointError(f"{path}: taken with {_ranks(saved_world)}, the job has {world}; set "
                              f"resume_other_world: true to resume it at the same global batch (the launcher "
                              f"sets it when the job shrinks with elastic:)")
    start = Position(start.epoch, start.step_in_epoch, start.global_step, other_world=True)
    if saved_batch == batch:
        return start
    shape = (f"{_ranks(saved_world)} x batch {saved_batch // (saved_world * saved_k)} x grad_accumulation "
             f"{saved_k} = global batch {saved_batch}")
    if not cfg.resume_other_accumulation:
        raise CheckpointError(f"{path}: taken with {shape}, the job has {_ranks(world)} x batch {cfg.batch_size} x "
                              f"grad_accumulation {k} = {batch}: the steps (and so the schedule and data position) "
                              f"differ; set resume_other_accumulation: true to resume it anyway")
    moved = _in_images(path, start, saved_batch, batch, f"{_ranks(saved_world)} x grad_accumulation {saved_k}",
                       f"{_ranks(world)} x grad_accumulation {k}")
    return Position(moved.epoch, moved.step_in_epoch, moved.global_step, moved.renumbered, other_world=True)


def _ranks(n: int) -> str:
    return f"{n} rank" if n == 1 else f"{n} ranks"


def _in_images(path: str, start: Position, saved_batch: int, batch: int, was: str, now: str) -> Position:
    """``start``, taken at steps of ``saved_batch`` images, counted in steps of ``batch`` images.

    Raises:
        CheckpointError: it does not fall on a whole step of ``batch`` images.
    """
    images_in_epoch, images = start.step_in_epoch * saved_batch, start.global_step * saved_batch
    if images_in_epoch % batch or images % batch:
        raise CheckpointError(f"{path}: taken at global step {start.global_step} with {was} "
                              f"({images} images), which is not a whole number of steps of {batch} images with "
                              f"{now}")
    logger.warning("resuming a checkpoint of %s with %s: step %d becomes step %d",
                   was, now, start.global_step, images // batch)
    return Position(start.epoch, images_in_epoch // batch, images // batch, renumbered=True)


def own_step(cfg: TrainConfig, info: RankInfo, exchange: str) -> bool:
    """Whether the step is ``trainer.trainstep``'s (accumulation, or an exchange of ours) or MindSpore's own."""
    return cfg.grad_accumulation > 1 or exchange == "shared_memory" or (
        exchange == "collective" and (cfg.grad_allreduce_dtype != "float32" or cfg.grad_buckets > 0))


def sink_steps(remaining: int, sink_size: Optional[int]) -> int:
    """Steps per sink for an epoch with ``remaining`` steps: ``sink_size``'s largest divisor of it
    (every sink the same length, the epoch ending on a sink's end), the whole epoch when None."""
    if remaining <= 0:
        return 1
    top = min(sink_size or remaining, remaining)
    return next(n for n in range(top, 0, -1) if remaining % n == 0)


def sinking(cfg: TrainConfig, info: RankInfo, own: bool) -> bool:
    """Whether steps run in sinks: ``sink_mode``, else on for Ascend with MindSpore's own step."""
    if cfg.sink_mode is not None:
        return cfg.sink_mode
    return info.device_target == "Ascend" and not own


def _model_and_optimizer(cfg: TrainConfig, info: RankInfo, data_dir: str, start: Position) -> _Run:
    """Step 2: the network (identical initial weights on every rank, from one seed), loss, schedule, optimizer."""
    import mindspore as ms
    from mindspore import nn
    from mindspore.train import Model

    from trainer.data import class_names, create_dataset
    from trainer.resnet import build_resnet
    from trainer.schedule import lr_per_step

    ms.set_seed(cfg.seed)
    net = build_resnet(cfg.arch, num_classes=cfg.num_classes, width=cfg.width, stem=cfg.stem)

    def epoch_dataset(epoch: int):
        # one optimizer step's images at a time: the step splits them into its k micro-batches
        return create_dataset(data_dir, training=True, image_size=cfg.image_size,
                              batch_size=cfg.batch_size * cfg.grad_accumulation, rank=info.rank,
                              rank_size=info.world_size, seed=cfg.seed + epoch,
                              num_parallel_workers=cfg.num_parallel_workers)

    per_epoch = steps_per_epoch(epoch_dataset(0).get_dataset_size(), cfg)
    total_steps = per_epoch * cfg.epochs
    if start.global_step > total_steps:
        raise ConfigError(f"epochs: the checkpoint is at step {start.global_step}, past the {cfg.epochs} "
                          f"epoch(s) asked for ({total_steps} steps); ask for more epochs")
    lr = lr_per_step(cfg.lr_schedule, cfg.lr, max(total_steps, 1), per_epoch, cfg.warmup_epochs, cfg.lr_init)
    learning_rate = float(lr[0]) if cfg.lr_schedule == "constant" else ms.Tensor(lr)
    loss_fn = nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="mean")
    optimizer = nn.Momentum(_decayed_params(net) if cfg.weight_decay else net.trainable_params(),
                            learning_rate=learning_rate, momentum=cfg.momentum,
                            weight_decay=cfg.weight_decay, loss_scale=cfg.loss_scale)
    extra: dict[str, Any] = {}
    if cfg.loss_scale != 1.0:
        from mindspore.amp import FixedLossScaleManager

        extra["loss_scale_manager"] = FixedLossScaleManager(cfg.loss_scale, drop_overflow_update=False)
    exchange = grad_exchange(cfg, info)
    host = None
    if exchange == "shared_memory":
        from trainer.trainstep import open_host_mean

        host = open_host_mean(info, sum(math.prod(p.shape) or 1 for p in optimizer.parameters),
                              required=cfg.grad_exchange == "shared_memory",
                              half=cfg.grad_allreduce_dtype == "float16")
        exchange = "shared_memory" if host is not None else "collective"
    if exchange != "none":
        emit(f"gradient exchange: {exchange}")
    own = own_step(cfg, info, exchange)
    if own:
        from trainer.trainstep import AccumulatingModel, ExchangeStep

        network = nn.WithLossCell(net, loss_fn)
        if cfg.amp_level != "O0":
            network = ms.amp.auto_mixed_precision(network, cfg.amp_level)
        if cfg.grad_accumulation > 1 or host is not None:
            model = AccumulatingModel(network, optimizer, cfg.grad_accumulation, cfg.loss_scale, info.world_size,
                                      cfg.grad_allreduce_dtype, cfg.grad_buckets, host)
        else:
            model = Model(ExchangeStep(network, optimizer, cfg.loss_scale, info.world_size, cfg.grad_allreduce_dtype,
                                       cfg.grad_buckets))
    else:
        model = Model(net, loss_fn=loss_fn, optimizer=optimizer, amp_level=cfg.amp_level, **extra)
    sink = sinking(cfg, info, own)
    if sink:
        emit(f"sink mode: {sink_steps(per_epoch, cfg.sink_size)} step(s) per sink"
             + ("" if info.device_target == "Ascend" else
                " (MindSpore runs CPU steps one by one; progress, logs and checkpoints follow the sinks)"))
    return _Run(net, model, lr, per_epoch, epoch_dataset, data_dir, class_names(data_dir), sink)


class _Checkpointing:
    """Step 3: rank 0's checkpoints (atomic, in the background), each reported to the launcher."""

    def __init__(self, cfg: TrainConfig, info: RankInfo, run: _Run, ckpt_dir: str, fingerprint: Mapping[str, Any],
                 snapshot_dir: Optional[str] = None):
        self.cfg, self.info, self.run, self.fingerprint = cfg, info, run, fingerprint
        self.writer = ckpt.CheckpointWriter(ckpt_dir, cfg.keep_max, background=cfg.async_save,
                                            pause_mid_write=faults.save_pause_s(cfg, info), on_saved=self._saved)
        # in-memory snapshots: the host's local rank 0 writes them (every rank holds the same state)
        self.snapshots: Optional[ckpt.CheckpointWriter] = None
        if snapshot_dir and info.local_rank == 0:
            self.snapshots = ckpt.CheckpointWriter(snapshot_dir, 1, background=True, on_saved=self._snapshot_saved)
        self.snapshot_write_s = 0.0

    def _snapshot_saved(self, path: str, meta: ckpt.CheckpointMeta, seconds: float) -> None:
        self.snapshot_write_s = seconds
        logger.info("snapshot %s at global step %d written in %.3f s", path, meta.global_step, seconds)

    def snapshot(self, epoch: int, step_in_epoch: int, global_step: int, synced: bool = False) -> float:
        """Every rank: average the BatchNorm statistics, then the host's local rank 0 hands a copy of the
        state to its snapshot writer. Returns the seconds the training step was held up."""
        import mindspore as ms

        t0 = time.perf_counter()
        if not synced:
            sync_batchnorm_stats(self.run.net, self.info.world_size)
        if self.snapshots is not None:
            cfg = self.cfg
            fields = dict(epoch=epoch, step_in_epoch=step_in_epoch, global_step=global_step,
                          dataset_seed=cfg.seed, fingerprint=self.fingerprint, config=cfg.to_dict(),
                          class_names=self.run.class_names, metrics={})
            append = {"epoch": epoch, "step_in_epoch": step_in_epoch, "dataset_seed": cfg.seed,
                      "fingerprint": TrainConfig.fingerprint_hash(self.fingerprint)}
            source = _snapshot(self.run.model.train_network)
            self.snapshots.submit(lambda p: ms.save_checkpoint(source, p, append_dict=append), fields)
        return time.perf_counter() - t0

    def wait_snapshot(self) -> float:
        """Wait for the snapshot write in flight; the seconds the last one took (0 on other ranks)."""
        if self.snapshots is not None:
            self.snapshots.wait()
        return self.snapshot_write_s

    @staticmethod
    def _saved(path: str, meta: ckpt.CheckpointMeta, seconds: float) -> None:
        logger.info("wrote %s in %.2f s", path, seconds)
        emit(f"checkpoint saved {path} epoch={meta.epoch} step={meta.step_in_epoch} "
             f"global_step={meta.global_step}")
        report_checkpoint(path, meta.global_step)

    def save(self, epoch: int, step_in_epoch: int, global_step: int, metrics: dict[str, float]) -> str:
        import mindspore as ms

        cfg, cell = self.cfg, self.run.model.train_network
        fields = dict(epoch=epoch, step_in_epoch=step_in_epoch, global_step=global_step,
                      dataset_seed=cfg.seed, fingerprint=self.fingerprint, config=cfg.to_dict(),
                      class_names=self.run.class_names, metrics=metrics)
        append = {"epoch": epoch, "step_in_epoch": step_in_epoch, "dataset_seed": cfg.seed,
                  "fingerprint": TrainConfig.fingerprint_hash(self.fingerprint)}
        t0 = time.perf_counter()
        source = _snapshot(cell) if cfg.async_save else cell
        with section(events.CHECKPOINT_SECTION):  # the watchdog's own limit for a save (stall_timeout: auto)
            path = self.writer.submit(lambda p: ms.save_checkpoint(source, p, append_dict=append), fields)
        logger.info("checkpoint at global step %d: training stalled %.1f ms", global_step,
                    (time.perf_counter() - t0) * 1000.0)
        return path

    def save_mid_epoch(self, epoch: int, step_in_epoch: int, global_step: int,
                       metrics: dict[str, float]) -> Optional[str]:
        """On every rank: rank 0 saves the BatchNorm statistics every rank then holds, so that a run
        resumed from here continues with each rank's statistics exactly as they were."""
        sync_batchnorm_stats(self.run.net, self.info.world_size)
        return self.save(epoch, step_in_epoch, global_step, metrics) if self.info.rank == 0 else None

    def leave_preempted(self, epoch: int, step_in_epoch: int, global_step: int, monitor,
                        saved: Optional[str] = None) -> None:
        """Rank 0, preempted: save here (unless ``saved`` already holds this step), wait for the file,
        and exit with PREEMPT_EXIT at once. Its own weights are every rank's (identical after each
        step); the BatchNorm statistics saved are rank 0's, not averaged: that would need every rank
        in one more collective, and the others may already be a step further. The launcher stops them.
        """
        path = saved or self.save(epoch, step_in_epoch, global_step, {})
        self.writer.wait()
        monitor.close()
        emit(f"preempted: saved {path} at global step {global_step}; exiting {PREEMPT_EXIT} to be requeued")
        sys.stdout.flush()
        sys.stderr.flush()
        # no interpreter shutdown: MindSpore's would wait on its peers' collectives, which wait on us
        os._exit(PREEMPT_EXIT)


def _evaluate(cfg: TrainConfig, info: RankInfo, run: _Run, epoch: int, eval_ds, monitor) -> tuple[dict, Any]:
    """Step 5: every rank evaluates its shard of the test set; the counts are summed over the ranks.

    Returns the metrics (empty when no evaluation is due) and the evaluation dataset (built once).
    """
    from trainer.collectives import allreduce_sum
    from trainer.data import create_dataset
    from trainer.evaluate import run_eval

    last = epoch + 1 == cfg.epochs
    if not cfg.eval_every_epochs or not ((epoch + 1) % cfg.eval_every_epochs == 0 or last):
        return {}, eval_ds
    if eval_ds is None:
        eval_ds = create_dataset(run.data_dir, training=False, image_size=cfg.image_size, batch_size=cfg.batch_size,
                                 rank=info.rank, rank_size=info.world_size, num_parallel_workers=cfg.num_parallel_workers,
                                 images=cfg.eval_images)
    with section(events.EVAL_SECTION):  # the watchdog's own limit for an evaluation (stall_timeout: auto)
        scores = run_eval(run.net, eval_ds, cfg.num_classes, allreduce_sum if info.distributed else None)
    metrics = scores.metrics()
    if info.rank == 0:
        monitor.log_eval(epoch + 1, metrics, scores.confusion, run.net)
        emit(f"eval epoch={epoch + 1} top1={metrics['top1']:.4f} loss={metrics['loss']:.4f}")
        report_eval(epoch + 1, **metrics)
    return metrics, eval_ds


def _train_epoch(run: _Run, info: RankInfo, dataset, steps: int, callbacks: list, sink_size: Optional[int],
                 epoch: int) -> None:
    """One epoch's ``steps`` steps: one by one, or in sinks of equal length.

    On Ascend a sink is ``Model.train(steps / n, dataset, sink_size=n)``: MindSpore counts each
    sink as an epoch and calls the step callbacks once per sink. On CPU MindSpore 2.10 does not sink
    (``Model.train``: "The CPU cannot support dataset sink mode currently"): the steps run one by
    one and `SinkCallbacks` hands the callbacks one call per ``n`` steps, as on Ascend.
    """
    if not run.sink:
        run.model.train(epoch + 1, dataset, callbacks=callbacks, dataset_sink_mode=False, initial_epoch=epoch)
        return
    from trainer.callbacks import SinkCallbacks

    n = sink_steps(steps, sink_size)
    if info.device_target == "Ascend":
        run.model.train(steps // n, dataset, callbacks=callbacks, dataset_sink_mode=True, sink_size=n)
    else:
        run.model.train(1, dataset, callbacks=[SinkCallbacks(callbacks, n)], dataset_sink_mode=False)


def _epoch_loop(cfg: TrainConfig, info: RankInfo, run: _Run, start: Position, saver: _Checkpointing,
                monitor, callbacks: list, snapshots=None) -> TrainResult:
    """Step 4: the epochs from the resume position; per epoch: train, BatchNorm sync, evaluate, checkpoint."""
    result = TrainResult(rank=info.rank, world_size=info.world_size, global_step=start.global_step)
    eval_ds = None
    for epoch in range(start.epoch, cfg.epochs):
        skip = start.step_in_epoch if epoch == start.epoch else 0
        dataset = run.epoch_dataset(epoch).take(run.per_epoch)
        if skip:
            dataset = dataset.skip(skip)
        monitor.begin_epoch(epoch, skip)
        if skip < run.per_epoch:
            with faults.dying_as_asked(cfg):
                _train_epoch(run, info, dataset, run.per_epoch - skip, callbacks, cfg.sink_size, epoch)
        result.epochs_done, result.global_step, result.last_loss = epoch + 1, monitor.global_step, monitor.last_loss
        # every rank: one BatchNorm statistics, then each evaluates its shard of the test set
        sync_batchnorm_stats(run.net, info.world_size)
        metrics, eval_ds = _evaluate(cfg, info, run, epoch, eval_ds, monitor)
        if metrics:
            result.eval = metrics
        if snapshots is not None and epoch + 1 < cfg.epochs:  # statistics already averaged just above
            snapshots.at_epoch_end(epoch + 1, monitor.global_step)
        last = epoch + 1 == cfg.epochs
        saved = None
        if info.rank == 0 and (last or (cfg.save_every_epochs and (epoch + 1) % cfg.save_every_epochs == 0)):
            result.checkpoint = saved = saver.save(epoch + 1, 0, monitor.global_step, metrics)
        if info.rank == 0 and preempt_requested() and not last:
            saver.leave_preempted(epoch + 1, 0, monitor.global_step, monitor, saved)
    return result


def train(cfg: TrainConfig, environ: Mapping[str, str]) -> TrainResult:
    """Run this process's part of the job and return what it did.

    Raises:
        ConfigError, DataError, CheckpointError: bad settings, data or checkpoint (one line).
        InjectedFault: the test-only fault hook fired.
    """
    from trainer.data import resolve_data_dir, validate_split

    info = rank_info(environ)
    watch_preemption()  # SIGUSR1 (Slurm's warning, forwarded by the launcher) does not kill any rank
    if info.is_scheduler:  # MindSpore's scheduler serves the workers inside init(); nothing more to do
        init_backend(info, cfg.mode == "graph")
        return TrainResult(rank=-1, world_size=info.world_size)
    data_dir = resolve_data_dir(cfg.data_dir)
    validate_split(data_dir, training=True)
    validate_split(data_dir, training=False)
    info = init_backend(info, cfg.mode == "graph")
    where = paths(cfg, info.rank)
    fingerprint = cfg.fingerprint(info.world_size)

    resume_path, start = _resume_position(cfg, info, where["checkpoints"], fingerprint, environ)
    run = _model_and_optimizer(cfg, info, data_dir, start)
    if resume_path is not None:
        _load_state(run.model.train_network, resume_path, start.global_step if start.renumbered else None)
        emit(f"resumed from {resume_path} epoch={start.epoch} step={start.step_in_epoch}")
        if start.other_world:  # the job shrank (or grew): say the shape the step keeps on with
            emit(f"resuming at step {start.global_step} (epoch {start.epoch + 1}) with {_ranks(info.world_size)} x "
                 f"batch {cfg.batch_size} x grad_accumulation {cfg.grad_accumulation} = global batch "
                 f"{cfg.global_batch_size(info.world_size)}")
    saver = _Checkpointing(cfg, info, run, where["checkpoints"], fingerprint, snapshot_folder(cfg, environ))

    from trainer.callbacks import PreemptCheckpointer, StepCheckpointer, StepMonitor

    monitor = StepMonitor(cfg, info, run.per_epoch, run.lr, where["tensorboard"] if cfg.tensorboard else None,
                          start.global_step)
    callbacks: list = [monitor, *faults.fault_callbacks(cfg, info, monitor)]
    if cfg.save_every_steps:
        callbacks.append(StepCheckpointer(monitor, cfg.save_every_steps, run.per_epoch, saver.save_mid_epoch))
    snapshots = None
    if snapshot_folder(cfg, environ):
        from trainer.snapshotting import Snapshotter

        snapshots = Snapshotter(monitor, cfg.snapshot_every_steps, info, run.per_epoch, saver.snapshot,
                                saver.wait_snapshot, lambda n: max(all_gather_counts(info, n)))
        callbacks.append(snapshots)
    if info.rank == 0:
        callbacks.append(PreemptCheckpointer(monitor, run.per_epoch,
                                             lambda e, s, g: saver.leave_preempted(e, s, g, monitor)))
    try:
        result = _epoch_loop(cfg, info, run, start, saver, monitor, callbacks, snapshots)
        saver.writer.wait()
        saver.wait_snapshot()  # the final checkpoint is complete (renamed, sidecar written) before the rank ends
        barrier(info)  # rank 0 may still be evaluating; leaving before it would break its last collective
    finally:
        monitor.close()
    if snapshots is not None and info.rank == 0 and snapshots.summary(result.global_step - start.global_step):
        emit(snapshots.summary(result.global_step - start.global_step))
    # every rank prints the digest of its weights: equal digests prove the ranks trained one model
    emit(f"final rank={info.rank} global_step={result.global_step} loss={result.last_loss} "
         f"weights_sha256={weights_digest(run.net)}")
    # MindSpore's collectives send asynchronously: a rank past its last one may still have bytes on the way
    # to another. Once every rank of the host is past its own (a barrier through the kernel's socket
    # buffers), nothing is on the way any more; with other hosts such a barrier would not say so.
    if info.distributed and info.local_size == info.world_size:
        host = getattr(run.model, "host", None)  # the shared-memory exchange (trainer.hostexchange), if any
        if host is not None:
            host.link.barrier()
        else:
            from trainer.hostexchange import exit_barrier

            exit_barrier(info, environ)
        result.past_last_collective = True
    return result


def weights_digest(net) -> str:
    """SHA-256 over every parameter (weights and BatchNorm statistics), by name.

    The statistics are averaged over the ranks at each epoch's end, so after training every rank
    must print the same digest.
    """
    import hashlib

    digest = hashlib.sha256()
    for param in sorted(net.get_parameters(), key=lambda p: p.name):
        digest.update(param.name.encode())
        digest.update(param.asnumpy().tobytes())
    return digest.hexdigest()
