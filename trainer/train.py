"""One data-parallel training process: the tutorial's pipeline, run on whatever rank the environment says.

Sections in the order data flows: data, network, loss/optimizer, resume, the epoch loop (train,
evaluate and checkpoint on rank 0), and the final barrier. Every rank builds the same initial
weights from the same seed (MindSpore does not broadcast them) and reads a disjoint shard whose
shuffle order is seeded per epoch (``seed + epoch``), so that a run resumed mid-epoch sees the
same batches the uninterrupted run would have.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

from trainer import checkpoint as ckpt
from trainer.config import TrainConfig
from mscluster.rank import RankInfo, rank_info, report_checkpoint, report_eval
from trainer.distributed import barrier, init_backend
from trainer.errors import CheckpointError, ConfigError, DataError
from trainer.output import emit

logger = logging.getLogger(__name__)


class InjectedFault(Exception):
    """Raised by the test-only ``debug_fail_*`` settings; the process exits with ``exit_code``."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


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


@dataclass(frozen=True)
class Position:
    """Where training (re)starts: the epoch index, the steps of it already done, the global step."""

    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0


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


def resolve_resume(cfg: TrainConfig, ckpt_dir: str) -> Optional[tuple[str, ckpt.CheckpointMeta]]:
    """The checkpoint to resume from, per ``cfg.resume``; None to start fresh.

    ``auto`` takes the newest checkpoint that verifies and names every newer one it skipped;
    an explicit path that fails verification is an error.
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
    if not info.distributed:
        return
    import numpy as np
    import mindspore as ms
    from mindspore import ops

    # AllGather: the CPU AllReduce only sums; two float32 halves keep any step count exact
    mine = ms.Tensor(np.array([start.global_step // 4096, start.global_step % 4096], np.float32))
    halves = ops.AllGather()(mine).asnumpy().reshape(-1, 2).astype(np.int64)
    steps = [int(high) * 4096 + int(low) for high, low in halves]
    if len(set(steps)) > 1:
        raise CheckpointError(f"{ckpt_dir}: the ranks would start at different global steps ({steps}, by rank); every "
                              f"rank must read the checkpoints rank 0 writes (a shared folder, or a copy on each host)")


def _hooks_armed(cfg: TrainConfig, info: RankInfo) -> bool:
    """Whether the test-only debug_* hooks fire in this attempt of the job."""
    return cfg.debug_fail_attempt is None or cfg.debug_fail_attempt == info.restart_count


FROM_SETTINGS = ("learning_rate", "momentum")  # optimizer parameters the settings give, not the checkpoint
NOT_PARAMETERS = ("epoch", "step_in_epoch", "dataset_seed", "fingerprint")  # our append_dict


def _load_state(train_network, path: str) -> None:
    """Load weights, BatchNorm statistics, optimizer moments and global step from ``path``.

    The schedule (the whole per-step learning-rate array) and the momentum coefficient come from
    the settings; the restored global step indexes the schedule, so it continues at the exact step.
    """
    import mindspore as ms

    params = ms.load_checkpoint(path)
    for key in FROM_SETTINGS + NOT_PARAMETERS:
        params.pop(key, None)
    not_loaded, _ = ms.load_param_into_net(train_network, params, strict_load=True)
    missing = [n for n in not_loaded if n not in FROM_SETTINGS]
    if missing:
        raise CheckpointError(f"{path}: holds no value for {', '.join(missing[:5])}")


def train(cfg: TrainConfig, environ: Mapping[str, str]) -> TrainResult:
    """Run this process's part of the job and return what it did.

    Raises:
        ConfigError, DataError, CheckpointError: bad settings, data or checkpoint (one line).
        InjectedFault: the test-only fault hook fired.
    """
    from trainer.data import class_names, create_dataset, resolve_data_dir, validate_split

    info = rank_info(environ)
    if info.is_scheduler:  # MindSpore's scheduler serves the workers inside init(); nothing more to do
        init_backend(info, cfg.mode == "graph")
        return TrainResult(rank=-1, world_size=info.world_size)
    data_dir = resolve_data_dir(cfg.data_dir)
    validate_split(data_dir, training=True)
    validate_split(data_dir, training=False)

    import mindspore as ms

    info = init_backend(info, cfg.mode == "graph")

    from mindspore import nn
    from mindspore.train import Model

    from trainer.evaluate import allreduce_sum, run_eval, sync_batchnorm_stats
    from trainer.callbacks import FaultInjector, StepCheckpointer, StepMonitor
    from trainer.resnet import build_resnet
    from trainer.schedule import lr_per_step

    where = paths(cfg, info.rank)
    is_chief = info.rank == 0
    fingerprint = cfg.fingerprint(info.world_size)
    names = class_names(data_dir)

    # -- resume: decided before anything is built, so an incompatible checkpoint changes nothing
    resume = resolve_resume(cfg, where["checkpoints"])
    start = Position()
    if resume is not None:
        path, meta = resume
        diff = ckpt.fingerprint_mismatch(meta.fingerprint, fingerprint)
        if diff:
            raise CheckpointError(f"{path}: incompatible with the current settings: {'; '.join(diff)}")
        start = Position(meta.epoch, meta.step_in_epoch, meta.global_step)
    _check_same_start(info, start, where["checkpoints"])

    # -- network, loss, optimizer: identical initial weights on every rank from one seed
    ms.set_seed(cfg.seed)
    net = build_resnet(cfg.arch, num_classes=cfg.num_classes, width=cfg.width, stem=cfg.stem)

    def epoch_dataset(epoch: int):
        return create_dataset(data_dir, training=True, image_size=cfg.image_size, batch_size=cfg.batch_size,
                              rank=info.rank, rank_size=info.world_size, seed=cfg.seed + epoch,
                              num_parallel_workers=cfg.num_parallel_workers)

    per_epoch = steps_per_epoch(epoch_dataset(0).get_dataset_size(), cfg)
    total_steps = per_epoch * cfg.epochs
    if start.global_step > total_steps:
        raise ConfigError(f"epochs: the checkpoint is at step {start.global_step}, past the {cfg.epochs} "
                          f"epoch(s) asked for ({total_steps} steps); ask for more epochs")
    lr = lr_per_step(cfg.lr_schedule, cfg.lr, max(total_steps, 1), per_epoch, cfg.warmup_epochs)
    learning_rate = float(lr[0]) if cfg.lr_schedule == "constant" else ms.Tensor(lr)
    loss_fn = nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="mean")
    optimizer = nn.Momentum(_decayed_params(net) if cfg.weight_decay else net.trainable_params(),
                            learning_rate=learning_rate, momentum=cfg.momentum,
                            weight_decay=cfg.weight_decay, loss_scale=cfg.loss_scale)
    extra: dict[str, Any] = {}
    if cfg.loss_scale != 1.0:
        from mindspore.amp import FixedLossScaleManager

        extra["loss_scale_manager"] = FixedLossScaleManager(cfg.loss_scale, drop_overflow_update=False)
    model = Model(net, loss_fn=loss_fn, optimizer=optimizer, amp_level=cfg.amp_level, **extra)
    train_network = model.train_network

    if resume is not None:
        _load_state(train_network, resume[0])
        emit(f"resumed from {resume[0]} epoch={start.epoch} step={start.step_in_epoch}")

    def on_saved(path: str, meta: ckpt.CheckpointMeta, seconds: float) -> None:
        logger.info("wrote %s in %.2f s", path, seconds)
        emit(f"checkpoint saved {path} epoch={meta.epoch} step={meta.step_in_epoch} "
             f"global_step={meta.global_step}")
        report_checkpoint(path, meta.global_step)

    armed = _hooks_armed(cfg, info)
    writer = ckpt.CheckpointWriter(where["checkpoints"], cfg.keep_max, background=cfg.async_save,
                                   pause_mid_write=cfg.debug_pause_in_save if armed else 0.0, on_saved=on_saved)

    def save(epoch: int, step_in_epoch: int, global_step: int, metrics: dict[str, float]) -> str:
        fields = dict(epoch=epoch, step_in_epoch=step_in_epoch, global_step=global_step,
                      dataset_seed=cfg.seed, fingerprint=fingerprint, config=cfg.to_dict(),
                      class_names=names, metrics=metrics)
        append = {"epoch": epoch, "step_in_epoch": step_in_epoch, "dataset_seed": cfg.seed,
                  "fingerprint": TrainConfig.fingerprint_hash(fingerprint)}
        t0 = time.perf_counter()
        source = _snapshot(train_network) if cfg.async_save else train_network
        path = writer.submit(lambda p: ms.save_checkpoint(source, p, append_dict=append), fields)
        logger.info("checkpoint at global step %d: training stalled %.1f ms", global_step,
                    (time.perf_counter() - t0) * 1000.0)
        return path

    monitor = StepMonitor(cfg, info, per_epoch, lr, where["tensorboard"] if cfg.tensorboard else None,
                          start.global_step)
    callbacks: list = [monitor]
    if cfg.debug_fail_step is not None and cfg.debug_fail_rank in (None, info.rank) and armed:
        callbacks.append(FaultInjector(monitor, cfg.debug_fail_step, cfg.debug_fail_exit_code, info.rank))
    def save_mid_epoch(epoch: int, step_in_epoch: int, global_step: int, metrics: dict[str, float]) -> Optional[str]:
        # every rank: rank 0 saves the BatchNorm statistics every rank then holds, so that a run
        # resumed from here continues with each rank's statistics exactly as they were
        sync_batchnorm_stats(net, info.world_size)
        return save(epoch, step_in_epoch, global_step, metrics) if is_chief else None

    if cfg.save_every_steps:
        callbacks.append(StepCheckpointer(monitor, cfg.save_every_steps, per_epoch, save_mid_epoch))

    result = TrainResult(rank=info.rank, world_size=info.world_size, global_step=start.global_step)
    eval_ds = None
    try:
        for epoch in range(start.epoch, cfg.epochs):
            skip = start.step_in_epoch if epoch == start.epoch else 0
            dataset = epoch_dataset(epoch).take(per_epoch)
            if skip:
                dataset = dataset.skip(skip)
            monitor.begin_epoch(epoch, skip)
            if skip < per_epoch:
                try:
                    model.train(epoch + 1, dataset, callbacks=callbacks, dataset_sink_mode=False,
                                initial_epoch=epoch)
                except InjectedFault:
                    if cfg.debug_fail_signal:  # die as a killed process does: no cleanup, no error file
                        os.kill(os.getpid(), cfg.debug_fail_signal)
                    raise
            result.epochs_done, result.global_step = epoch + 1, monitor.global_step
            result.last_loss = monitor.last_loss
            last = epoch + 1 == cfg.epochs
            # every rank: one BatchNorm statistics, then each evaluates its shard of the test set
            sync_batchnorm_stats(net, info.world_size)
            metrics: dict[str, float] = {}
            if cfg.eval_every_epochs and ((epoch + 1) % cfg.eval_every_epochs == 0 or last):
                if eval_ds is None:
                    eval_ds = create_dataset(data_dir, training=False, image_size=cfg.image_size,
                                             batch_size=cfg.batch_size, rank=info.rank,
                                             rank_size=info.world_size,
                                             num_parallel_workers=cfg.num_parallel_workers)
                scores = run_eval(net, eval_ds, cfg.num_classes, allreduce_sum if info.distributed else None)
                metrics = scores.metrics()
                result.eval = metrics
                if is_chief:
                    monitor.log_eval(epoch + 1, metrics, scores.confusion, net)
                    emit(f"eval epoch={epoch + 1} top1={metrics['top1']:.4f} loss={metrics['loss']:.4f}")
                    report_eval(epoch + 1, **metrics)
            if not is_chief:
                continue
            if last or (cfg.save_every_epochs and (epoch + 1) % cfg.save_every_epochs == 0):
                result.checkpoint = save(epoch + 1, 0, monitor.global_step, metrics)
        writer.wait()  # the final checkpoint is complete (renamed, sidecar written) before the rank ends
        # rank 0 may still be evaluating; leaving before it would break its last collective
        barrier(info)
    finally:
        monitor.close()
    # every rank prints the digest of its weights: equal digests prove the ranks trained one model
    emit(f"final rank={info.rank} global_step={result.global_step} loss={result.last_loss} "
         f"weights_sha256={weights_digest(net)}")
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
