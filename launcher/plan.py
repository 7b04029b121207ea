"""The rank plan: which rank runs on which host and device, and the environment each process gets.

Pure functions, no I/O (Horovod's ``get_host_assignments`` is the model). Ranks are numbered in
the order hosts appear in the cluster file, and by device id within a host. On Ascend the rank
table follows the same order (see ``launcher.ranktable``): the file order is what the user sees
and edits, so it is the one source of truth. MindSpore's docs ask that servers follow the
dictionary order of ``server_id``; ``plan_ranks`` logs a warning when they do not, so a user who
hits that HCCL rule knows to reorder the file.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Optional

from launcher.spec import LOCAL_ADDRESSES, AtLaunch, Backend, ClusterSpec, Plan, RankAssignment, SchedulerAssignment
from mscluster.rank import DEVICE_TARGET_ENV

logger = logging.getLogger(__name__)

# What a loopback host is called in addresses other processes connect to (MS_SCHED_HOST, the
# rank table's server_id): "localhost" may resolve to ::1, which MindSpore does not listen on.
LOOPBACK_IP = "127.0.0.1"
# Seconds a dynamic-cluster process waits for the cluster to form, unless the cluster file says.
DEFAULT_TOPO_TIMEOUT_S = "300"
# MindSpore's device target of each backend's processes
DEVICE_TARGETS = {Backend.CPU: "CPU", Backend.ASCEND: "Ascend"}

# Variables the launcher sets for every process; a cluster file's env: may not set them, nor
# any name in the launcher's own MSCLUSTER_ namespace (job dir, error file, restart count).
RESERVED_ENV = frozenset({
    "RANK_TABLE_FILE", "RANK_SIZE", "RANK_ID", "DEVICE_ID", "DEVICE_NUM", "SERVER_ID",
    "MS_ROLE", "MS_SCHED_HOST", "MS_SCHED_PORT", "MS_WORKER_NUM", "MS_NODE_ID",
    "LOCAL_RANK", "LOCAL_SIZE", "MSCLUSTER_JOB_DIR",
})
RESERVED_ENV_PREFIX = "MSCLUSTER_"


def is_reserved_env(name: str) -> bool:
    """Whether the launcher owns the variable ``name`` (a cluster file may not set it)."""
    return name in RESERVED_ENV or name.startswith(RESERVED_ENV_PREFIX)


def connect_address(address: str) -> str:
    """The address other processes use to reach ``address``: a loopback name becomes 127.0.0.1."""
    return LOOPBACK_IP if address in LOCAL_ADDRESSES else address


def plan_ranks(cluster: ClusterSpec, scheduler_port: Optional[int] = None) -> Plan:
    """Number every rank of ``cluster``: hosts in file order, devices in id order within a host.

    Args:
        cluster: a validated cluster file.
        scheduler_port: cpu backend: the scheduler's port; None = ``cluster.scheduler_port``,
            and when that is None too the port stays None for the launcher to fill with a free
            port (``with_scheduler_port``).

    Returns:
        The plan; ``plan.scheduler`` is on the first host for cpu and for ascend with
        ``init: dynamic``, None with ``init: ranktable``.
    """
    world_size = cluster.world_size
    ranks: list[RankAssignment] = []
    for host_index, host in enumerate(cluster.hosts):
        devices = sorted(host.devices)
        for local_rank, device_id in enumerate(devices):
            ranks.append(RankAssignment(
                rank=len(ranks), host=host.address, host_index=host_index, device_id=device_id,
                local_rank=local_rank, local_size=len(devices), world_size=world_size))
    scheduler = None
    if cluster.uses_scheduler:
        port = scheduler_port if scheduler_port is not None else cluster.scheduler_port
        scheduler = SchedulerAssignment(host=cluster.hosts[0].address, port=port)
    if cluster.uses_rank_table and len(cluster.hosts) > 1:
        server_ids = [connect_address(h.address) for h in cluster.hosts]
        if server_ids != sorted(server_ids):
            logger.warning(
                "%s: servers are not in dictionary order of server_id (%s); ranks and the rank "
                "table follow the file's order, but MindSpore's docs ask for sorted server ids: "
                "reorder hosts if HCCL fails to initialise", cluster.source, ", ".join(server_ids))
    return Plan(cluster=cluster, ranks=tuple(ranks), scheduler=scheduler)


def with_scheduler_port(plan: Plan, port: int) -> Plan:
    """Return ``plan`` with the scheduler's port set (the launcher calls it after picking a free port)."""
    if plan.scheduler is None:
        raise ValueError("this plan has no scheduler (ascend.init: ranktable)")
    return dataclasses.replace(plan, scheduler=dataclasses.replace(plan.scheduler, port=port))


def _scheduler_port_text(plan: Plan, preview: bool) -> str:
    port = plan.scheduler.port if plan.scheduler is not None else None
    if port is not None:
        return str(port)
    if preview:
        return AtLaunch.SCHEDULER_PORT
    raise ValueError("the scheduler port is not chosen yet: call with_scheduler_port first")


def rank_env(plan: Plan, rank: RankAssignment, *, job_dir: str, rank_table_path: Optional[str],
             preview: bool = False) -> dict[str, str]:
    """The variables one rank's process gets (on top of the host's own environment).

    ascend, ``init: ranktable``: ``RANK_TABLE_FILE``, ``RANK_SIZE``, ``RANK_ID``, ``DEVICE_ID``
    (plus ``DEVICE_NUM`` and ``SERVER_ID``), as the model zoo's ``run_distribute_train.sh`` sets
    them. cpu, and ascend with ``init: dynamic``: the dynamic cluster's ``MS_ROLE=MS_WORKER``,
    ``MS_SCHED_HOST``, ``MS_SCHED_PORT``, ``MS_WORKER_NUM``, ``MS_TOPO_TIMEOUT``, ``MS_NODE_ID``
    (= the rank), ``RANK_ID``, ``RANK_SIZE`` as msrun sets them (MindSpore 2.10's
    ``parallel/cluster/process_entity/_api.py``), and on ascend ``DEVICE_ID`` (msrun: the local
    index; here the NPU's id, the same for devices 0..n-1). Every one: ``LOCAL_RANK``,
    ``LOCAL_SIZE``, ``MSCLUSTER_JOB_DIR``, ``MSCLUSTER_DEVICE_TARGET`` and the file's ``env:``.

    Args:
        preview: show a placeholder for values chosen at launch (the scheduler port) instead
            of raising; for ``mscluster plan`` only.

    Raises:
        ValueError: ascend ranktable without ``rank_table_path``, or a scheduler's port not chosen yet.
    """
    cluster = plan.cluster
    env = cluster.env_dict()
    env.update({
        "RANK_SIZE": str(rank.world_size),
        "RANK_ID": str(rank.rank),
        "LOCAL_RANK": str(rank.local_rank),
        "LOCAL_SIZE": str(rank.local_size),
        "MSCLUSTER_JOB_DIR": job_dir,
        DEVICE_TARGET_ENV: device_target(cluster),
    })
    if cluster.uses_rank_table:
        if rank_table_path is None:
            raise ValueError("ascend.init: ranktable needs the rank table's path")
        env.update({
            "RANK_TABLE_FILE": rank_table_path,
            "DEVICE_ID": str(rank.device_id),
            "DEVICE_NUM": str(rank.local_size),
            "SERVER_ID": str(rank.host_index),
        })
    else:
        env.update(_dynamic_cluster_env(plan, preview))
        env.update({"MS_ROLE": "MS_WORKER", "MS_NODE_ID": str(rank.rank)})
        if cluster.backend is Backend.ASCEND:
            env["DEVICE_ID"] = str(rank.device_id)
    return env


def device_target(cluster: ClusterSpec) -> str:
    """MindSpore's device target of the job's processes."""
    return DEVICE_TARGETS[cluster.backend]


def scheduler_env(plan: Plan, *, job_dir: Optional[str] = None, preview: bool = False) -> dict[str, str]:
    """The variables of the dynamic cluster's scheduler process (msrun's: ``RANK_ID=0`` and
    ``RANK_SIZE`` besides the shared ``MS_*``).

    Raises:
        ValueError: the plan has no scheduler, or its port is not chosen yet (unless ``preview``).
    """
    if plan.scheduler is None:
        raise ValueError("this plan has no scheduler (ascend.init: ranktable)")
    env = plan.cluster.env_dict()
    env.update(_dynamic_cluster_env(plan, preview))
    env.update({"MS_ROLE": "MS_SCHED", DEVICE_TARGET_ENV: device_target(plan.cluster)})
    if plan.cluster.backend is Backend.ASCEND:
        env.update({"RANK_ID": "0", "RANK_SIZE": str(len(plan.ranks))})
    if job_dir is not None:
        env["MSCLUSTER_JOB_DIR"] = job_dir
    return env


def _dynamic_cluster_env(plan: Plan, preview: bool) -> dict[str, str]:
    """What the scheduler and every worker of a dynamic cluster share.

    ``MS_TOPO_TIMEOUT`` defaults to 300 s (a cluster file's ``env:`` may set it): without it a
    worker whose scheduler is gone retries for about an hour.
    """
    if plan.scheduler is None:
        raise ValueError("a dynamic-cluster plan needs its scheduler (use plan_ranks)")
    shared = {
        "MS_SCHED_HOST": connect_address(plan.scheduler.host),
        "MS_SCHED_PORT": _scheduler_port_text(plan, preview),
        "MS_WORKER_NUM": str(len(plan.ranks)),
    }
    if "MS_TOPO_TIMEOUT" not in plan.cluster.env_dict():
        shared["MS_TOPO_TIMEOUT"] = DEFAULT_TOPO_TIMEOUT_S
    return shared
