"""Shrinking at the same global batch: the cluster the next attempt runs when hosts are left out.

Pure (no I/O). With no spare left and ``elastic:`` set, the launch loop calls ``keep_global_batch``
with the hosts that remain; it returns the cluster to run (``hosts`` replaced and, for the built-in
trainer, ``grad_accumulation`` raised so that ``batch_size`` x ranks x ``grad_accumulation`` is
unchanged) or refuses in one line when that product cannot be kept exactly and
``elastic.allow_batch_change`` is not set. The trainer resumes the checkpoint of the larger world
because the new cluster sets ``resume_other_world`` (``trainer.train._resume_position``).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Optional, Sequence

from launcher.errors import LauncherError
from launcher.spec import ClusterSpec, HostSpec
from mscluster.errors import MsclusterError

# where a user program learns the world size (launcher.plan sets both)
WORLD_SIZE_VARIABLES = "MS_WORKER_NUM / RANK_SIZE"


class BatchNotKept(LauncherError):
    """A shrink cannot keep the global batch (and ``elastic.allow_batch_change`` is not set), or the
    ``grad_accumulation`` it needs is one the ``train:`` section refuses."""


@dataclass(frozen=True)
class Shrink:
    """What a shrink changes: the cluster to run, the ranks, ``grad_accumulation`` and the global batch.

    For a ``command:`` (a user program) ``old_k``/``new_k`` and the batches are None: its batch is its own.
    """

    cluster: ClusterSpec  # the cluster of the next attempt: the remaining hosts, and its train: section
    left_out: tuple[str, ...]  # labels of the hosts no longer in the job, in their old order
    old_world: int
    new_world: int
    old_k: Optional[int] = None
    new_k: Optional[int] = None
    old_batch: Optional[int] = None  # images per optimizer step, over every rank
    new_batch: Optional[int] = None

    @property
    def batch_kept(self) -> bool:
        """Whether the global batch is the same (always for a command: the launcher does not know it)."""
        return self.old_batch == self.new_batch

    def to_dict(self) -> dict[str, Any]:
        """What result.json records of it (the attempt's ``shrink``): every field but the cluster."""
        return {"left_out": list(self.left_out), "old_world": self.old_world, "new_world": self.new_world,
                "old_k": self.old_k, "new_k": self.new_k, "old_batch": self.old_batch, "new_batch": self.new_batch,
                "batch_kept": self.batch_kept}

    def describe(self) -> str:
        """One line for the console and the log."""
        head = (f"mscluster: shrinking from {self.old_world} to {self.new_world} ranks "
                f"(hosts: {', '.join(self.left_out) or 'none'} left out): ")
        if self.old_k is None:
            return head + (f"the program sees {self.new_world} ranks in {WORLD_SIZE_VARIABLES} "
                           f"(its global batch is its own; elastic.allow_batch_change)")
        k = f"grad_accumulation {self.old_k} -> {self.new_k}" if self.new_k != self.old_k else \
            f"grad_accumulation {self.new_k} unchanged"
        if self.batch_kept:
            return head + f"{k}, global batch {self.new_batch} kept"
        return head + f"{k}, global batch {self.old_batch} -> {self.new_batch} (elastic.allow_batch_change)"


def nearest_k(images: int, per_k: int) -> int:
    """The ``grad_accumulation`` (>= 1) whose global batch ``per_k`` x k is nearest ``images``;
    of two equally near, the larger (a smaller batch at the same learning rate is the riskier change)."""
    low = max(1, images // per_k)
    return min((low, low + 1), key=lambda k: (abs(per_k * k - images), -k))


def keep_global_batch(cluster: ClusterSpec, hosts: Sequence[HostSpec]) -> Shrink:
    """The cluster that runs on ``hosts`` (the remaining hosts, in rank order) at the same global batch.

    Raises:
        BatchNotKept: batch_size x ranks x grad_accumulation cannot be kept exactly on the new
            world size and ``elastic.allow_batch_change`` is not set (a ``command:`` always, as it
            has no grad_accumulation), or the ``train:`` section refuses the new grad_accumulation.
        ValueError: no host given (a launcher bug: the loop shrinks only down to ``min_hosts`` >= 1).
    """
    hosts = tuple(hosts)
    if not hosts:
        raise ValueError("a shrink needs at least one host")
    kept = {h.address for h in hosts}
    left_out = tuple(h.label for h in cluster.hosts if h.address not in kept)
    old_world = cluster.world_size
    new_world = sum(len(h.devices) for h in hosts)
    allow = cluster.elastic is not None and cluster.elastic.allow_batch_change
    # console: ranks past the new world size have no lines to show any more (rank 0 always has)
    console = None if cluster.console is None else (tuple(r for r in cluster.console if r < new_world) or (0,))
    moved = dataclasses.replace(cluster, hosts=hosts, console=console)
    if not cluster.builtin_trainer:
        if not allow:
            raise BatchNotKept(f"elastic: shrinking from {old_world} to {new_world} ranks cannot keep the global batch "
                               f"of a command: there is no grad_accumulation to raise (the program sees the new world "
                               f"size in {WORLD_SIZE_VARIABLES}); set elastic.allow_batch_change: true if it adapts "
                               f"its batch itself")
        return Shrink(moved, left_out, old_world, new_world)
    train = cluster.train_config
    batch_size, old_k = train.batch_size, train.grad_accumulation
    old_batch = train.global_batch_size(old_world)
    per_k = batch_size * new_world
    if old_batch % per_k == 0:
        new_k = old_batch // per_k
    else:
        new_k = nearest_k(old_batch, per_k)
        if not allow:
            raise BatchNotKept(f"elastic: batch_size {batch_size} x {old_world} ranks x grad_accumulation {old_k} = "
                               f"global batch {old_batch} cannot be kept on {new_world} ranks ({old_batch} / "
                               f"({batch_size} x {new_world}) = {old_batch / per_k:g} is no whole grad_accumulation); "
                               f"set elastic.allow_batch_change: true to go on with grad_accumulation {new_k} "
                               f"(global batch {per_k * new_k})")
    new_batch = per_k * new_k
    changes = {"grad_accumulation": new_k, "resume_other_world": True}
    if new_batch != old_batch:  # the position carries over in images (trainer.train._other_batch)
        changes["resume_other_accumulation"] = True
    try:
        shrunk = moved.with_train(**changes)
    except MsclusterError as exc:  # trainer.config refuses it (above its bound, or with sink_mode)
        raise BatchNotKept(f"elastic: shrinking from {old_world} to {new_world} ranks needs grad_accumulation "
                           f"{new_k}, which train: refuses ({exc})") from None
    return Shrink(shrunk, left_out, old_world, new_world, old_k, new_k, old_batch, new_batch)

