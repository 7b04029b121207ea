"""What `launcher.hosts` asks of ``scheduler: slurm``: the cluster placed on the allocation, and its executors."""
from __future__ import annotations

from typing import Callable, Mapping, Sequence

from launcher.executor import Executor
from launcher.slurm.allocation import allocate, placeholder_allocation, with_allocation
from launcher.slurm.step import executors, use_hosts
from launcher.spec import ClusterSpec, HostSpec, SSHSpec


def place(cluster: ClusterSpec, environ: Mapping[str, str],
          make_executor: Callable[[HostSpec, SSHSpec], Executor]) -> tuple[ClusterSpec, dict[str, Executor], str]:
    """The allocation's nodes as the hosts and spares, an srun executor for each, and the Slurm job's name.

    ``make_executor`` (how a host of ``hosts:`` is reached) does not apply: srun reaches the nodes.

    Raises:
        SlurmError: not inside an allocation, one too small, or Slurm's tools missing.
    """
    placed, allocation = allocate(cluster, environ)
    return placed, dict(executors(placed, allocation, environ)), f"Slurm job {allocation.job_id}"


def preview(cluster: ClusterSpec, environ: Mapping[str, str]) -> tuple[ClusterSpec, str]:
    """For ``plan``: the allocation's nodes inside one, else placeholders, with a note saying so."""
    if environ.get("SLURM_JOB_ID"):
        return allocate(cluster, environ)[0], ""
    placeholder = placeholder_allocation(cluster)
    note = (f"(scheduler slurm, outside an allocation: the nodes are shown as {', '.join(placeholder.nodes)} at "
            "placeholder addresses; inside salloc or sbatch they are the allocation's)")
    return with_allocation(cluster, placeholder), note


def use(executors: Mapping[str, Executor], hosts: Sequence[HostSpec]) -> None:
    """The hosts the next attempt runs on: its one step of agents starts on their nodes."""
    use_hosts(executors, hosts)  # type: ignore[arg-type] - place made them: SlurmExecutors
