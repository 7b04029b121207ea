"""``scheduler: slurm``'s allocation: the Slurm job the launcher runs in, its nodes as the cluster's hosts.

Inside an allocation (``salloc``, or the batch script ``mscluster submit`` writes) the nodes come from
``SLURM_JOB_NODELIST`` (``scontrol show hostnames``) and their addresses from Slurm itself
(``scontrol show node``'s NodeAddr, resolved where it is a name): `read_allocation`.
"""
from __future__ import annotations

import dataclasses
import re
import shutil
import socket
import subprocess
from dataclasses import dataclass
from typing import Mapping, Sequence

from launcher.errors import LauncherError
from launcher.spec import DEFAULT_DEVICES_PER_HOST, ClusterSpec, HostSpec, is_ipv4

_CPUS = re.compile(r"(\d+)(?:\(x(\d+)\))?")


class SlurmError(LauncherError):
    """Not inside an allocation, an allocation too small, a Slurm tool missing or failing."""


@dataclass(frozen=True)
class Allocation:
    """The Slurm job the launcher runs in: its id and nodes (in Slurm's order), with addresses and cores."""

    job_id: str
    nodes: tuple[str, ...]
    addresses: tuple[str, ...]
    cpus: tuple[int, ...]  # cores the job holds on each node


# -- pure helpers ----------------------------------------------------------------------------------

def expand_cpus_per_node(text: str) -> list[int]:
    """``SLURM_JOB_CPUS_PER_NODE`` (``"2(x3),1"``) -> ``[2, 2, 2, 1]``."""
    counts: list[int] = []
    for part in filter(None, text.strip().split(",")):
        match = _CPUS.fullmatch(part.strip())
        if not match:
            raise ValueError(f"not a SLURM_JOB_CPUS_PER_NODE list: {text!r}")
        counts += [int(match.group(1))] * int(match.group(2) or 1)
    return counts


def parse_show_node(text: str) -> dict[str, str]:
    """``scontrol -o show node`` (one node a line) -> {NodeName: NodeAddr}."""
    addresses = {}
    for line in text.splitlines():
        fields = dict(word.split("=", 1) for word in line.split() if "=" in word)
        if "NodeName" in fields:
            addresses[fields["NodeName"]] = fields.get("NodeAddr", fields["NodeName"])
    return addresses


def resolve_address(node: str, addr: str) -> str:
    """A node's IPv4 address: NodeAddr itself, or what it resolves to."""
    if is_ipv4(addr):
        return addr
    try:
        return socket.gethostbyname(addr)
    except OSError:
        raise SlurmError(f"Slurm node {node}: cannot resolve its address {addr!r} (NodeAddr) on this machine") from None


def with_allocation(cluster: ClusterSpec, allocation: Allocation) -> ClusterSpec:
    """The cluster with its hosts taken from the allocation: the first ``slurm.nodes`` nodes (all but the
    last ``slurm.spares``, if unset), and the next ``slurm.spares`` nodes as its spares.

    Raises:
        SlurmError: the allocation has fewer nodes than the file asks for, or too few ranks for ``console:``.
    """
    spares = cluster.slurm.spares
    have = len(allocation.nodes)
    wanted = cluster.slurm.nodes or max(have - spares, 1)
    if have < wanted + spares:
        listed = ", ".join(allocation.nodes[:8]) + (", ..." if have > 8 else "")
        need = wanted + spares
        asked = (f"slurm.nodes: {wanted}" if cluster.slurm.nodes else "one node at least") + (
            f" and slurm.spares: {spares}" if spares else "")
        lower = ("slurm.nodes" if cluster.slurm.nodes else "") + (" or slurm.spares" if spares else "")
        raise SlurmError(f"Slurm job {allocation.job_id} has {have} node{'s' if have != 1 else ''} ({listed}), but "
                         f"{cluster.source} asks for {asked}: allocate {need} (salloc -N{need}) "
                         f"or lower {lower.removeprefix(' or ')}")
    per_host = cluster.slurm.devices_per_host or DEFAULT_DEVICES_PER_HOST[cluster.backend]

    def hosts_of(first: int, count: int) -> tuple[HostSpec, ...]:
        return tuple(HostSpec(address=address, devices=tuple(range(per_host)), node=node)
                     for node, address in zip(allocation.nodes[first:first + count],
                                              allocation.addresses[first:first + count]))

    world = wanted * per_host
    too_high = [r for r in cluster.console or () if r >= world]
    if too_high:
        raise SlurmError(f"{cluster.source}: console: rank {too_high[0]} does not exist: the allocation gives "
                         f"{world} rank(s) ({wanted} node(s) x {per_host})")
    return dataclasses.replace(cluster, hosts=hosts_of(0, wanted), spares=hosts_of(wanted, spares))


def placeholder_allocation(cluster: ClusterSpec) -> Allocation:
    """For ``plan`` outside an allocation: ``slurm.nodes`` (else 1) nodes and ``slurm.spares`` more, named
    node1.., at addresses of the documentation range 192.0.2.0/24 (RFC 5737)."""
    count = (cluster.slurm.nodes or 1) + cluster.slurm.spares
    return Allocation(job_id="<job id>", nodes=tuple(f"node{i + 1}" for i in range(count)),
                      addresses=tuple(f"192.0.2.{i + 1}" for i in range(count)), cpus=(0,) * count)


# -- the allocation --------------------------------------------------------------------------------

def require_tool(name: str, environ: Mapping[str, str]) -> str:
    path = shutil.which(name, path=environ.get("PATH"))
    if path is None:
        raise SlurmError(f"{name} not found on PATH: scheduler: slurm needs Slurm's client tools "
                         f"(srun, scontrol; sbatch for submit) on this machine")
    return path


def scontrol(args: Sequence[str], environ: Mapping[str, str], what: str) -> str:
    try:
        done = subprocess.run(["scontrol", *args], env=dict(environ), capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SlurmError(f"scontrol {' '.join(args)}: {exc}") from None
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]
        raise SlurmError(f"cannot read {what} from Slurm (scontrol {' '.join(args)}): {last}")
    return done.stdout


def read_allocation(environ: Mapping[str, str]) -> Allocation:
    """The allocation this process runs in.

    Raises:
        SlurmError: not inside an allocation, srun or scontrol missing, or Slurm does not answer.
    """
    job_id = environ.get("SLURM_JOB_ID") or environ.get("SLURM_JOBID")
    if not job_id:
        raise SlurmError("not inside a Slurm allocation (SLURM_JOB_ID is not set): run it under salloc "
                         "(salloc -N2 mscluster launch ...) or submit it with mscluster submit")
    nodelist = environ.get("SLURM_JOB_NODELIST") or environ.get("SLURM_NODELIST")
    if not nodelist:
        raise SlurmError(f"Slurm job {job_id}: SLURM_JOB_NODELIST is not set: not a job allocation's environment")
    require_tool("srun", environ)
    require_tool("scontrol", environ)
    nodes = tuple(scontrol(["show", "hostnames", nodelist], environ, "the job's nodes").split())
    if not nodes:
        raise SlurmError(f"Slurm job {job_id}: no nodes in SLURM_JOB_NODELIST={nodelist!r}")
    addrs = parse_show_node(scontrol(["-o", "show", "node", nodelist], environ, "the nodes' addresses"))
    addresses = tuple(resolve_address(n, addrs.get(n, n)) for n in nodes)
    try:
        cpus = expand_cpus_per_node(environ.get("SLURM_JOB_CPUS_PER_NODE", ""))
    except ValueError:
        cpus = []
    if len(cpus) != len(nodes):
        cpus = [1] * len(nodes)
    return Allocation(job_id=job_id, nodes=nodes, addresses=addresses, cpus=tuple(cpus))


def allocate(cluster: ClusterSpec, environ: Mapping[str, str]) -> tuple[ClusterSpec, Allocation]:
    """The cluster with the hosts of the allocation this process runs in, and that allocation.

    Raises:
        SlurmError: as `read_allocation` and `with_allocation` do.
    """
    allocation = read_allocation(environ)
    return with_allocation(cluster, allocation), allocation
