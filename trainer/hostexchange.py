"""The gradient mean of the ranks of one host through shared memory (``grad_exchange: shared_memory``).

MindSpore's CPU collective takes ~0.3 s to average ResNet-50's 23.5 M gradients between two
processes of one host, one AllReduce per parameter, far below what memory can do. Here the ranks
of a host share one anonymous memory file (``memfd``) with a slot per rank and a result:

1. each rank copies its flat gradients into its slot; barrier;
2. local rank i sums chunk i of every slot (slot order, so the same sum on every host and run)
   into the result; with several hosts, chunk i is then summed across the hosts by MindSpore's
   AllReduce in the group of the ranks of local index i (one per host); scaled to the mean;
   barrier;
3. every rank reads the whole result: the same bytes, so identical weights on every rank.

The barrier and the memory file travel on a Unix socket in the abstract namespace (nothing on
disk, nothing in /dev/shm: no name is left behind by a rank that is SIGKILLed). Local rank 0 is
the hub; the memory file's descriptor goes to the others over the socket (``SCM_RIGHTS``).

A peer that dies closes its socket: the ranks left say so in one line and wait to be stopped by
the launcher, as a rank blocked in MindSpore's collective would, so the launcher still names the
rank that died first, and a preempted rank 0 that exits after its checkpoint ends the job as
"preempted", not as a failure of the others.
"""
from __future__ import annotations

import hashlib
import logging
import mmap
import os
import socket
import time
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np

from mscluster.rank import DYNAMIC_CLUSTER, RankInfo
from trainer.errors import ConfigError

logger = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 300.0  # ranks of one host reach the exchange within the cluster's own start time
ORPHAN_WAIT_S = 330.0  # a rank whose peer died waits this long for the launcher (MS_NODE_TIMEOUT's default)


def grad_exchange(cfg, info: RankInfo) -> str:
    """How this job's ranks average gradients: ``none`` (one rank), ``collective`` or ``shared_memory``.

    ``auto`` picks shared memory on the cpu backend when a host runs several ranks, the collective
    is not tuned (``grad_buckets``, a float16 exchange) and ``sink_mode`` is not asked for. With
    ``shared_memory`` asked for, a float16 exchange is that of the hosts' AllReduce. Several hosts also need the same number
    of ranks on each: `_model_and_optimizer` checks that across the ranks."""
    if info.world_size == 1:
        return "none"
    if cfg.grad_exchange == "collective":
        return "collective"
    if info.backend != DYNAMIC_CLUSTER or info.device_target != "CPU":
        if cfg.grad_exchange == "shared_memory":
            raise ConfigError("grad_exchange: shared_memory is for backend cpu (MindSpore's dynamic cluster on "
                              f"CPU); this rank runs under {info.backend} on {info.device_target}")
        return "collective"
    tuned = cfg.grad_buckets > 0 or cfg.grad_allreduce_dtype != "float32"  # settings of the collective
    if cfg.grad_exchange == "auto" and (info.local_size == 1 or tuned or cfg.sink_mode):
        return "collective"  # sink_mode: true sinks MindSpore's own step, whose exchange is the collective
    return "shared_memory"


class HostExchangeError(RuntimeError):
    """The ranks of this host could not set up or keep the shared-memory exchange."""


def chunk_bounds(total: int, parts: int) -> list[tuple[int, int]]:
    """``total`` elements in ``parts`` contiguous [start, end) runs whose sizes differ by at most one."""
    if parts <= 0:
        raise ValueError("parts must be > 0")
    base, extra = divmod(total, parts)
    bounds, start = [], 0
    for i in range(parts):
        end = start + base + (1 if i < extra else 0)
        bounds.append((start, end))
        start = end
    return bounds


@dataclass(frozen=True)
class HostLayout:
    """Where a rank is: its host's ranks are ``first_rank .. first_rank + local_size - 1``."""

    rank: int
    local_rank: int
    local_size: int
    world_size: int

    @property
    def first_rank(self) -> int:
        return self.rank - self.local_rank

    @property
    def hosts(self) -> int:
        return self.world_size // self.local_size

    def peers_of_index(self) -> list[int]:
        """The ranks of this rank's local index on every host (the layout must be uniform)."""
        return [h * self.local_size + self.local_rank for h in range(self.hosts)]


def exchange_key(environ) -> str:
    """What the ranks of one host share for one attempt of one job, and nothing else does: the dynamic
    cluster's scheduler address (a fresh port per job), the job folder and the restart count."""
    return "|".join(environ.get(name, "") for name in
                    ("MS_SCHED_HOST", "MS_SCHED_PORT", "MSCLUSTER_JOB_DIR", "MSCLUSTER_RESTART_COUNT"))


def socket_name(key: str, layout: HostLayout) -> bytes:
    """The hub's abstract socket name: one per job attempt and host (the key) and per host entry."""
    digest = hashlib.sha256(f"{key}|{layout.first_rank}|{layout.local_size}".encode()).hexdigest()[:24]
    return b"\0mscluster-grad-" + digest.encode()


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        part = sock.recv(size - len(data))
        if not part:
            return data
        data += part
    return data


class HostLink:
    """The ranks of one host: a barrier and one shared memory file of ``nbytes``."""

    def __init__(self, name: bytes, local_rank: int, local_size: int, nbytes: int,
                 timeout_s: float = CONNECT_TIMEOUT_S):
        self.local_rank, self.local_size = local_rank, local_size
        self.peers: list[socket.socket] = []  # hub: one per other local rank, in local-rank order
        self.hub: Optional[socket.socket] = None  # others: the connection to local rank 0
        if local_rank == 0:
            fd = os.memfd_create("mscluster-grad", os.MFD_CLOEXEC)
            try:
                os.ftruncate(fd, nbytes)
                self._accept(name, fd, timeout_s)
                self.memory = mmap.mmap(fd, nbytes)
            finally:
                os.close(fd)
        else:
            fd = self._connect(name, timeout_s)
            try:
                if os.fstat(fd).st_size != nbytes:
                    raise HostExchangeError(f"local rank 0 shares {os.fstat(fd).st_size} bytes, this rank "
                                            f"expects {nbytes}: the ranks of this host run different models")
                self.memory = mmap.mmap(fd, nbytes)
            finally:
                os.close(fd)

    def _accept(self, name: bytes, fd: int, timeout_s: float) -> None:
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            try:
                server.bind(name)
            except OSError as exc:
                raise HostExchangeError(f"another process holds this host's exchange socket ({exc.strerror}): "
                                        f"two jobs with one key?") from None
            server.listen(self.local_size)
            server.settimeout(timeout_s)
            by_rank: dict[int, socket.socket] = {}
            while len(by_rank) < self.local_size - 1:
                try:
                    conn, _ = server.accept()
                except socket.timeout:
                    missing = sorted(set(range(1, self.local_size)) - set(by_rank))
                    raise HostExchangeError(f"local rank(s) {missing} of this host did not join the gradient "
                                            f"exchange within {timeout_s:.0f} s") from None
                conn.settimeout(timeout_s)
                hello = _recv_exact(conn, 4)
                index = int.from_bytes(hello, "little") if len(hello) == 4 else -1
                if not 0 < index < self.local_size or index in by_rank:
                    conn.close()
                    continue
                socket.send_fds(conn, [b"m"], [fd])
                conn.settimeout(None)
                by_rank[index] = conn
            self.peers = [by_rank[i] for i in range(1, self.local_size)]
        finally:
            server.close()

    def _connect(self, name: bytes, timeout_s: float) -> int:
        deadline = time.monotonic() + timeout_s
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
            try:
                sock.connect(name)
                break
            except (FileNotFoundError, ConnectionRefusedError):
                sock.close()
                if time.monotonic() > deadline:
                    raise HostExchangeError(f"local rank 0 of this host did not open the gradient exchange "
                                            f"within {timeout_s:.0f} s") from None
                time.sleep(0.05)
        sock.settimeout(timeout_s)
        sock.sendall(self.local_rank.to_bytes(4, "little"))
        _, fds, _, _ = socket.recv_fds(sock, 1, 1)
        if not fds:
            raise HostExchangeError("local rank 0 of this host closed the gradient exchange while it started")
        sock.settimeout(None)
        self.hub = sock
        return fds[0]

    def barrier(self) -> None:
        """Return once every rank of the host has called it; a dead peer ends in `_orphaned`."""
        if self.hub is not None:
            self.hub.sendall(b"a")
            if _recv_exact(self.hub, 1) != b"g":
                self._orphaned("local rank 0")
            return
        for index, peer in enumerate(self.peers, start=1):
            if _recv_exact(peer, 1) != b"a":
                self._orphaned(f"local rank {index}")
        for index, peer in enumerate(self.peers, start=1):
            try:
                peer.sendall(b"g")
            except OSError:
                self._orphaned(f"local rank {index}")

    def _orphaned(self, who: str) -> None:
        """A peer is gone (its process ended): say so, wait for the launcher to stop this rank, then fail."""
        logger.error("%s of this host left the gradient exchange (its process ended); waiting for the "
                     "launcher to stop this rank", who)
        time.sleep(ORPHAN_WAIT_S)
        raise HostExchangeError(f"{who} of this host left the gradient exchange")

    def close(self) -> None:
        for sock in self.peers + ([self.hub] if self.hub else []):
            sock.close()
        self.peers, self.hub = [], None


class HostMean:
    """The mean over every rank of flat float32 gradients: shared memory on the host, MindSpore across hosts.

    ``across`` sums a chunk over the ranks of this local index on the other hosts (None: one host).
    """

    def __init__(self, link: HostLink, size: int, across: Optional[Callable[[np.ndarray], np.ndarray]] = None):
        self.link, self.size, self.across = link, size, across
        slots = np.frombuffer(link.memory, dtype=np.float32, count=(link.local_size + 1) * size)
        self.slots = slots.reshape(link.local_size + 1, size)  # rows 0..L-1: the ranks; row L: the result
        self.chunk = chunk_bounds(size, link.local_size)[link.local_rank]

    @property
    def result(self) -> np.ndarray:
        return self.slots[-1]

    def mean(self, grads: Sequence[np.ndarray], scale: float) -> np.ndarray:
        """``scale`` x the sum over every rank of ``grads`` (this rank's, in parameter order), flat.

        The returned array is shared: it holds this step's answer until every rank has called
        ``mean`` again (and by then this rank has applied it)."""
        mine = self.slots[self.link.local_rank]
        offset = 0
        for grad in grads:
            n = grad.size
            mine[offset:offset + n] = grad.reshape(-1)
            offset += n
        if offset != self.size:
            raise HostExchangeError(f"{offset} gradient elements, the exchange holds {self.size}")
        self.link.barrier()
        start, end = self.chunk
        out = self.result[start:end]
        np.copyto(out, self.slots[0, start:end])
        for row in range(1, self.link.local_size):
            np.add(out, self.slots[row, start:end], out=out)
        if self.across is not None:
            out[:] = self.across(out)
        out *= np.float32(scale)
        self.link.barrier()
        return self.result

    def close(self) -> None:
        self.link.close()


def exit_barrier(info: RankInfo, environ) -> None:
    """Return once every rank of this host has called it (a job whose ranks all share one host and have no
    shared-memory exchange open: past it, no rank waits for bytes from another)."""
    layout = HostLayout(info.rank, info.local_rank, info.local_size, info.world_size)
    link = HostLink(socket_name(exchange_key(environ) + "|exit", layout), info.local_rank, info.local_size, 8)
    try:
        link.barrier()
    finally:
        link.close()
