"""One data-parallel training process: the tutorial's pipeline, run on whatever rank the environment says.

Sections in the order data flows: data, network, loss/optimizer, resume, the epoch loop (train,
evaluate and checkpoint on rank 0), and the final barrier. Every rank builds the same initial
weights from the same seed (MindSpore does not broadcast them) and reads a disjoint shard whose
shuffle order is seeded per epoch (``seed + epoch``), so that a run resumed mid-epoch sees the
same batches the uninterrupted run would have.
"""
from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

from trainer import checkpoint as ckpt
from trainer.config import TrainConfig
from trainer.distributed import RankInfo, barrier, init_backend, rank_info_from_env
from trainer.errors import CheckpointError, ConfigError, DataError

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
        return None
    if cfg.resume == "auto":
        path, meta, skipped = ckpt.latest_good(ckpt_dir)
        for bad, why in skipped:
            logger.warning("skipping checkpoint %s: %s", bad, why)
        return (path, meta) if path else None
    return cfg.resume, ckpt.verify(cfg.resume)


def _load_state(train_network, path: str) -> None:
    import mindspore as ms

    params = ms.load_checkpoint(path)
    # The schedule and momentum come from the settings; the global step (restored) indexes them.
    for key in ("learning_rate", "momentum", "epoch", "step_in_epoch", "dataset_seed", "fingerprint"):
        params.pop(key, None)
    not_loaded, _ = ms.load_param_into_net(train_network, params, strict_load=True)
    missing = [n for n in not_loaded if not n.startswith("learning_rate")]
    if missing:
        raise CheckpointError(f"{path}: holds no value for {', '.join(missing[:5])}")


def train(cfg: TrainConfig, environ: Mapping[str, str]) -> TrainResult:
    """Run this process's part of the job and return what it did.

    Raises:
        ConfigError, DataError, CheckpointError: bad settings, data or checkpoint (one line).
        InjectedFault: the test-only fault hook fired.
    """
    from trainer.data import class_names, create_dataset, resolve_data_dir, validate_split

    info = rank_info_from_env(environ)
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
    from mindspore.train.metrics import Accuracy, Loss

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
    model = Model(net, loss_fn=loss_fn, optimizer=optimizer, metrics={"top1": Accuracy(), "loss": Loss()},
                  amp_level=cfg.amp_level, **extra)
    train_network = model.train_network

    if resume is not None:
        _load_state(train_network, resume[0])
        print(f"resumed from {resume[0]} epoch={start.epoch} step={start.step_in_epoch}", flush=True)

    def save(epoch: int, step_in_epoch: int, global_step: int, metrics: dict[str, float]) -> str:
        fields = dict(epoch=epoch, step_in_epoch=step_in_epoch, global_step=global_step,
                      dataset_seed=cfg.seed, fingerprint=fingerprint, config=cfg.to_dict(),
                      class_names=names, metrics=metrics)
        append = {"epoch": epoch, "step_in_epoch": step_in_epoch, "dataset_seed": cfg.seed,
                  "fingerprint": TrainConfig.fingerprint_hash(fingerprint)}
        t0 = time.perf_counter()
        path, _ = ckpt.save(lambda p: ms.save_checkpoint(train_network, p, append_dict=append),
                            where["checkpoints"], fields, cfg.debug_pause_in_save)
        ckpt.prune(where["checkpoints"], cfg.keep_max)
        logger.info("saved %s in %.2f s", path, time.perf_counter() - t0)
        print(f"checkpoint saved {path} epoch={epoch} step={step_in_epoch} global_step={global_step}", flush=True)
        return path

    monitor = StepMonitor(cfg, info, per_epoch, lr, where["tensorboard"] if cfg.tensorboard else None,
                          start.global_step)
    callbacks: list = [monitor]
    if cfg.debug_fail_step is not None and cfg.debug_fail_rank in (None, info.rank):
        callbacks.append(FaultInjector(monitor, cfg.debug_fail_step, cfg.debug_fail_exit_code, info.rank))
    if is_chief and cfg.save_every_steps:
        callbacks.append(StepCheckpointer(monitor, cfg.save_every_steps, per_epoch, save))

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
                model.train(epoch + 1, dataset, callbacks=callbacks, dataset_sink_mode=False,
                            initial_epoch=epoch)
            result.epochs_done, result.global_step = epoch + 1, monitor.global_step
            result.last_loss = monitor.last_loss
            last = epoch + 1 == cfg.epochs
            if not is_chief:
                continue
            metrics: dict[str, float] = {}
            if cfg.eval_every_epochs and ((epoch + 1) % cfg.eval_every_epochs == 0 or last):
                if eval_ds is None:
                    eval_ds = create_dataset(data_dir, training=False, image_size=cfg.image_size,
                                             batch_size=cfg.batch_size, num_parallel_workers=cfg.num_parallel_workers)
                scores = model.eval(eval_ds, dataset_sink_mode=False)
                metrics = {"top1": float(scores["top1"]), "loss": float(scores["loss"])}
                result.eval = metrics
                monitor.log_eval(epoch + 1, metrics)
                print(f"eval epoch={epoch + 1} top1={metrics['top1']:.4f} loss={metrics['loss']:.4f}", flush=True)
            if last or (cfg.save_every_epochs and (epoch + 1) % cfg.save_every_epochs == 0):
                result.checkpoint = save(epoch + 1, 0, monitor.global_step, metrics)
        # rank 0 may still be evaluating; leaving before it would break its last collective
        barrier(info)
    finally:
        monitor.close()
    # every rank prints the digest of its weights: equal digests prove the ranks trained one model
    print(f"final rank={info.rank} global_step={result.global_step} loss={result.last_loss} "
          f"weights_sha256={weights_digest(net)}", flush=True)
    return result


def weights_digest(net) -> str:
    """SHA-256 over the trainable parameters, by name.

    BatchNorm's moving statistics are left out: each rank computes them from its own shard (no
    sync-BN), so they differ between ranks by design; rank 0's are the ones checkpointed.
    """
    import hashlib

    digest = hashlib.sha256()
    for param in sorted(net.trainable_params(), key=lambda p: p.name):
        digest.update(param.name.encode())
        digest.update(param.asnumpy().tobytes())
    return digest.hexdigest()
