"""Where this process stands in the job, read from the environment the launcher (or msrun) gave it.

Three cases, decided by the environment alone:
- ``RANK_TABLE_FILE`` set: Ascend with HCCL (``DEVICE_ID``, ``RANK_ID``, ``RANK_SIZE``).
- ``MS_ROLE`` set: MindSpore's dynamic cluster (CPU here): ``MS_SCHED`` is the scheduler,
  ``MS_WORKER`` a worker whose rank is ``MS_NODE_ID``.
- neither: one process, rank 0 of 1.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Mapping

from trainer.errors import ConfigError

logger = logging.getLogger(__name__)

SINGLE = "single"
DYNAMIC_CLUSTER = "dynamic_cluster"
HCCL = "hccl"


@dataclass(frozen=True)
class RankInfo:
    """This process's place in the job."""

    backend: str  # single | dynamic_cluster | hccl
    rank: int = 0
    world_size: int = 1
    device_id: int = 0
    is_scheduler: bool = False
    restart_count: int = 0

    @property
    def distributed(self) -> bool:
        return self.backend != SINGLE

    @property
    def device_target(self) -> str:
        return "Ascend" if self.backend == HCCL else "CPU"


def _int(environ: Mapping[str, str], name: str, default: int | None = None) -> int:
    raw = environ.get(name)
    if raw is None or raw == "":
        if default is None:
            raise ConfigError(f"environment: {name} is not set")
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"environment: {name}={raw!r} is not an integer") from None
    if value < 0:
        raise ConfigError(f"environment: {name}={raw!r} must be >= 0")
    return value


def rank_info_from_env(environ: Mapping[str, str]) -> RankInfo:
    """Read this process's RankInfo from ``environ`` (pure; raises ConfigError on bad values)."""
    restarts = _int(environ, "MSCLUSTER_RESTART_COUNT", 0)
    if environ.get("RANK_TABLE_FILE"):
        size = _int(environ, "RANK_SIZE")
        rank = _int(environ, "RANK_ID")
        if rank >= size:
            raise ConfigError(f"environment: RANK_ID={rank} must be < RANK_SIZE={size}")
        return RankInfo(HCCL, rank, size, _int(environ, "DEVICE_ID", 0), restart_count=restarts)
    role = environ.get("MS_ROLE")
    if role:
        size = _int(environ, "MS_WORKER_NUM")
        if role == "MS_SCHED":
            return RankInfo(DYNAMIC_CLUSTER, 0, size, is_scheduler=True, restart_count=restarts)
        if role != "MS_WORKER":
            raise ConfigError(f"environment: MS_ROLE={role!r} is neither MS_SCHED nor MS_WORKER")
        rank = _int(environ, "MS_NODE_ID", _int(environ, "RANK_ID", 0))
        if rank >= size:
            raise ConfigError(f"environment: MS_NODE_ID={rank} must be < MS_WORKER_NUM={size}")
        return RankInfo(DYNAMIC_CLUSTER, rank, size, _int(environ, "DEVICE_ID", 0), restart_count=restarts)
    return RankInfo(SINGLE, restart_count=restarts)


def init_backend(info: RankInfo, graph_mode: bool) -> RankInfo:
    """Set MindSpore's context and join the collective group; return the rank MindSpore assigned.

    On the dynamic cluster MindSpore numbers workers itself (from MS_NODE_ID when given), so the
    rank returned is the one the collectives use.
    """
    import mindspore as ms

    mode = ms.GRAPH_MODE if graph_mode else ms.PYNATIVE_MODE
    if info.backend == HCCL:
        ms.set_context(mode=mode, device_target="Ascend", device_id=info.device_id)
    else:
        ms.set_context(mode=mode, device_target="CPU")
    if not info.distributed:
        return info
    from mindspore.communication import get_group_size, get_rank, init

    init()
    if info.is_scheduler:
        return info
    rank, size = get_rank(), get_group_size()
    ms.set_auto_parallel_context(parallel_mode=ms.ParallelMode.DATA_PARALLEL, gradients_mean=True,
                                 device_num=size)
    logger.info("joined %s as rank %d of %d", info.backend, rank, size)
    return RankInfo(info.backend, rank, size, info.device_id, False, info.restart_count)


def barrier(info: RankInfo) -> None:
    """Wait for every rank: a one-element AllReduce (the Barrier op has no CPU kernel in 2.10)."""
    if not info.distributed or info.is_scheduler:
        return
    import numpy as np
    import mindspore as ms
    from mindspore import ops

    ops.AllReduce()(ms.Tensor(np.ones(1, np.float32))).asnumpy()
