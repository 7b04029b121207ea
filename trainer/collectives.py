"""Every collective the built-in trainer calls outside the gradient allreduce, in one place.

All are small (a few floats, or BatchNorm's statistics) and run on every rank at the same point of
the loop; on one process (``world_size`` 1, or not distributed) each is a no-op or the identity.
The Barrier op has no CPU kernel in MindSpore 2.10, and the CPU AllReduce only sums: the helpers
here are built from AllReduce and AllGather for that reason.
"""
from __future__ import annotations

import numpy as np

from mscluster.rank import RankInfo


def allreduce_sum(values: np.ndarray) -> np.ndarray:
    """Sum a small float vector over every rank (one AllReduce; float32 on the wire)."""
    import mindspore as ms
    from mindspore import ops

    return ops.AllReduce()(ms.Tensor(values.astype(np.float32))).asnumpy().astype(np.float64)


def barrier(info: RankInfo) -> None:
    """Wait for every rank: a one-element AllReduce."""
    if not info.distributed or info.is_scheduler:
        return
    allreduce_sum(np.ones(1, np.float32))


def all_gather_counts(info: RankInfo, count: int) -> list[int]:
    """Every rank's ``count`` (>= 0), by rank; exact for any step count (two float32 halves each)."""
    if not info.distributed:
        return [count]
    import mindspore as ms
    from mindspore import ops

    mine = ms.Tensor(np.array([count // 4096, count % 4096], np.float32))
    halves = ops.AllGather()(mine).asnumpy().reshape(-1, 2).astype(np.int64)
    return [int(high) * 4096 + int(low) for high, low in halves]


def sync_batchnorm_stats(net, world_size: int) -> None:
    """Average BatchNorm's moving mean/variance over the ranks (one AllReduce for all layers).

    Each rank collects these statistics from its own shard; averaging them before evaluating and
    saving makes every rank hold the same model (timm's ``distribute_bn(reduce=True)``), so the
    accuracy printed in training is the one a reload of the checkpoint gives.
    """
    if world_size <= 1:
        return
    import mindspore as ms

    stats = [p for p in net.get_parameters() if not p.requires_grad
             and ("moving_mean" in p.name or "moving_variance" in p.name)]
    if not stats:
        return
    flat = np.concatenate([p.asnumpy().astype(np.float32).ravel() for p in stats])
    averaged = allreduce_sum(flat) / world_size
    offset = 0
    for p in stats:
        size = int(np.prod(p.shape))
        p.set_data(ms.Tensor(averaged[offset:offset + size].reshape(p.shape).astype(np.float32)))
        offset += size
