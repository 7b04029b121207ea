"""Joining the job: MindSpore's context and collective group for the rank the environment names.

Where this process stands (``RankInfo``) is read by ``mscluster.rank.rank_info``, the same
function user programs call: Ascend with a rank table, MindSpore's dynamic cluster, or one process.
"""
from __future__ import annotations

import dataclasses
import logging
from mscluster.rank import DYNAMIC_CLUSTER, HCCL, SINGLE, RankInfo

logger = logging.getLogger(__name__)

__all__ = ["DYNAMIC_CLUSTER", "HCCL", "SINGLE", "RankInfo", "init_backend"]


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
