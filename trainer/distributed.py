"""Joining the job: MindSpore's context and collective group for the rank the environment names.

Where this process stands (``RankInfo``) is read by ``mscluster.rank.rank_info``, the same
function user programs call: Ascend with a rank table, MindSpore's dynamic cluster, or one process.
"""
from __future__ import annotations

import dataclasses
import logging
from mscluster.rank import DYNAMIC_CLUSTER, HCCL, SINGLE, RankInfo

logger = logging.getLogger(__name__)

__all__ = ["DYNAMIC_CLUSTER", "HCCL", "SINGLE", "RankInfo", "init_backend", "skips_cluster_teardown", "leave_now"]


def init_backend(info: RankInfo, graph_mode: bool) -> RankInfo:
    """Set MindSpore's context and join the collective group; return the rank MindSpore assigned.

    On the dynamic cluster MindSpore numbers workers itself (from MS_NODE_ID when given), so the
    rank returned is the one the collectives use.
    """
    import mindspore as ms

    mode = ms.GRAPH_MODE if graph_mode else ms.PYNATIVE_MODE
    if info.device_target == "Ascend":  # a rank table (HCCL), or the dynamic cluster on NPUs (msrun's way)
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
    return dataclasses.replace(info, rank=rank, world_size=size)


def skips_cluster_teardown(environ, past_last_collective: bool) -> bool:
    """Whether a worker that finished its work may leave without MindSpore's dynamic-cluster teardown.

    Measured on CPU (2 ranks, MindSpore 2.10): after its last line a worker spends 2-5 s in the
    interpreter's exit (MindSpore's cluster finalization, each worker waiting for the slowest), and the
    scheduler 3-4 s more before it leaves. None of it is work the job needs, once no rank waits for
    bytes from another (``past_last_collective``: a rank that left right after its last collective
    returned once left another waiting in it for good). Only under mscluster's own agent
    (``MSCLUSTER_EVENT_FD``), which stops the scheduler once every rank has ended well: a worker
    under msrun or any other launcher keeps the teardown its scheduler waits for.
    """
    from mscluster.rank import EVENT_FD_ENV

    return past_last_collective and environ.get("MS_ROLE") == "MS_WORKER" and bool(environ.get(EVENT_FD_ENV))


def leave_now(code: int = 0) -> None:
    """End the process at once (no interpreter teardown), its logs and output flushed first."""
    import os
    import sys

    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)
