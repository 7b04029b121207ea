"""Where a job runs: one factory from the cluster file's ``scheduler:`` to the hosts and their executors.

``launch``, ``plan``, ``ranktable`` and ``submit`` ask here, never a scheduler directly. A scheduler is
one module with two functions (see `Scheduler`) and one entry in `SCHEDULERS`:

- ``ssh``: the ``hosts:`` list; loopback addresses run locally, the others over SSH (`direct_place`).
- ``slurm``: the allocation's nodes, reached with srun (`launcher.slurm.scheduler`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping

from launcher.errors import ConfigError
from launcher.executor import Executor, check_ssh_files, executor_for
from launcher.slurm import scheduler as slurm_scheduler
from launcher.spec import ClusterSpec, HostSpec, SSHSpec

MakeExecutor = Callable[[HostSpec, SSHSpec], Executor]  # a host of hosts: -> its executor; tests pass fakes


@dataclass(frozen=True)
class Scheduler:
    """What the launcher asks of one scheduler."""

    # the cluster with the hosts the scheduler gives, one executor per host (by address), and how the
    # scheduler names the placement ("" or e.g. "Slurm job 42"); raises LauncherError where it cannot
    place: Callable[[ClusterSpec, Mapping[str, str], MakeExecutor], tuple[ClusterSpec, dict[str, Executor], str]]
    # for ``plan`` (starts nothing): the hosts as `place` would give them, or placeholders with a note
    preview: Callable[[ClusterSpec, Mapping[str, str]], tuple[ClusterSpec, str]]
    submits: bool = False  # ``mscluster submit`` can hand a job to it (a batch queue)


@dataclass
class Hosts:
    """A job's hosts, placed: the cluster as the scheduler resolved it, and one executor per host."""

    cluster: ClusterSpec
    executors: dict[str, Executor] = field(default_factory=dict)
    where: str = ""  # the scheduler's name for the placement, e.g. "Slurm job 42"; "" for hosts:

    def close(self) -> None:
        for executor in self.executors.values():
            executor.close()


def direct_place(cluster: ClusterSpec, environ: Mapping[str, str],
                 make_executor: MakeExecutor) -> tuple[ClusterSpec, dict[str, Executor], str]:
    """``scheduler: ssh``: the file's hosts as they are; SSH's key and known_hosts files checked first."""
    every = (*cluster.hosts, *cluster.spares)  # spares are pre-flighted and stand by: they need executors too
    if not all(h.is_local for h in every):
        check_ssh_files(cluster.ssh, cluster.source)
    return cluster, {h.address: make_executor(h, cluster.ssh) for h in every}, ""


def direct_preview(cluster: ClusterSpec, environ: Mapping[str, str]) -> tuple[ClusterSpec, str]:
    return cluster, ""


SCHEDULERS: dict[str, Scheduler] = {
    "ssh": Scheduler(place=direct_place, preview=direct_preview),
    "slurm": Scheduler(place=slurm_scheduler.place, preview=slurm_scheduler.preview, submits=True),
}


def scheduler_for(cluster: ClusterSpec) -> Scheduler:
    """The cluster file's ``scheduler:``. Raises ConfigError for one this launcher does not know."""
    name = getattr(cluster.scheduler, "value", cluster.scheduler)  # the name, whether a str or a str enum
    try:
        return SCHEDULERS[name]
    except KeyError:
        raise ConfigError(f"{cluster.source}: scheduler: {name} is not one of {', '.join(SCHEDULERS)}") from None


def open_hosts(cluster: ClusterSpec, environ: Mapping[str, str], make_executor: MakeExecutor = executor_for) -> Hosts:
    """The job's hosts as its scheduler places them, with their executors (which connect on first use).

    Raises:
        LauncherError: the scheduler cannot place the job (ConfigError, SlurmError, ...).
    """
    placed, executors, where = scheduler_for(cluster).place(cluster, environ, make_executor)
    return Hosts(placed, executors, where)


def preview_hosts(cluster: ClusterSpec, environ: Mapping[str, str]) -> tuple[ClusterSpec, str]:
    """For ``plan``: the cluster placed as a launch here would place it, and a note where that is a guess."""
    return scheduler_for(cluster).preview(cluster, environ)
