"""``mscluster train`` in a pod of Huawei's ascend-operator (MindCluster): one process per NPU of the pod.

The operator starts the pod's command once (Ascend/mind-cluster ``component/ascend-operator``).
Rank-table-free MindSpore jobs get ``MS_ROLE`` (``MS_SCHED`` in the Scheduler pod, ``MS_WORKER`` in
Worker pods), ``MS_SCHED_HOST``/``MS_SCHED_PORT``, ``MS_WORKER_NUM`` (NPUs of the job),
``MS_LOCAL_WORKER`` (NPUs of this pod) and ``MS_NODE_RANK`` (this pod's index), but no
``MS_NODE_ID``, ``RANK_ID`` or ``DEVICE_ID``: its sample ``train_start.sh`` starts
``MS_LOCAL_WORKER`` processes itself. So does this module, with each one's ``MS_NODE_ID`` (=
``MS_NODE_RANK x MS_LOCAL_WORKER + i``), ``RANK_ID``, ``RANK_SIZE``, ``DEVICE_ID``, ``LOCAL_RANK``
and ``LOCAL_SIZE``. Rank-table jobs get the rank table the operator writes at
``/user/serverid/devindex/config/hccl.json``, first ``{"status": "initializing"}`` and then
``completed``: it is waited for, this pod's server entry found by its addresses, and one process
started per device of it with ``RANK_TABLE_FILE``, ``RANK_ID`` and ``DEVICE_ID``.

The children share the pod's stdout and stderr. The first to fail stops the others (TERM, then
KILL after a grace period, each by its own process group) and its exit code is the pod's, so the
operator sees the pod fail at once.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from typing import Mapping, Optional, Sequence

from mscluster.errors import RankEnvError
from mscluster.rank import env_int  # the one reader of an integer variable

OPERATOR_RANK_TABLE = "/user/serverid/devindex/config/hccl.json"
RANK_TABLE_WAIT_S = 600.0  # the operator writes "completed" once every pod of the job is placed
GRACE_S = 10.0


def dynamic_workers(environ: Mapping[str, str]) -> Optional[list[dict[str, str]]]:
    """The environments to add for each NPU process of a rank-table-free Worker pod, or None
    where this process is one rank already (``MS_NODE_ID`` or ``LOCAL_RANK`` set, or one NPU).

    Raises:
        RankEnvError: the pod's ranks do not fit in ``MS_WORKER_NUM``.
    """
    if environ.get("MS_ROLE") != "MS_WORKER" or environ.get("MS_NODE_ID") or environ.get("LOCAL_RANK"):
        return None
    if not environ.get("MS_LOCAL_WORKER"):
        return None
    local = env_int(environ, "MS_LOCAL_WORKER")
    if local <= 1:
        return None
    node, total = env_int(environ, "MS_NODE_RANK"), env_int(environ, "MS_WORKER_NUM")
    if (node + 1) * local > total:
        raise RankEnvError(f"environment: MS_NODE_RANK={node} x MS_LOCAL_WORKER={local} leaves no room in "
                           f"MS_WORKER_NUM={total} for this pod's {local} ranks")
    return [{"MS_NODE_ID": str(node * local + i), "RANK_ID": str(node * local + i), "RANK_SIZE": str(total),
             "DEVICE_ID": str(i), "LOCAL_RANK": str(i), "LOCAL_SIZE": str(local)} for i in range(local)]


def _addresses() -> set[str]:
    """This pod's IPv4 addresses (its name's, and the one its default route leaves by)."""
    found = set()
    try:
        found.update(info[4][0] for info in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET))
    except OSError:
        pass
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # no packet is sent: this only picks the route's source address
            found.add(probe.getsockname()[0])
        except OSError:
            pass
    return found


def rank_table_workers(table: Mapping, path: str, addresses: set[str]) -> list[dict[str, str]]:
    """The environments of this pod's processes from a completed rank table: its server entry (its
    ``container_ip``, ``host_ip`` or ``server_id`` among ``addresses``), one process per device.

    Raises:
        RankEnvError: no entry of the table is this pod.
    """
    servers = table.get("server_list") or []
    size = sum(len(s.get("device") or []) for s in servers)
    for server in servers:
        if {server.get("container_ip"), server.get("host_ip"), server.get("server_id")} & addresses:
            devices = server.get("device") or []
            return [{"RANK_TABLE_FILE": path, "RANK_ID": str(d["rank_id"]), "RANK_SIZE": str(size),
                     "DEVICE_ID": str(d["device_id"]), "LOCAL_RANK": str(i), "LOCAL_SIZE": str(len(devices))}
                    for i, d in enumerate(devices)]
    raise RankEnvError(f"{path}: no server of the rank table is this pod (its addresses: "
                       f"{', '.join(sorted(addresses)) or 'none found'})")


def wait_for_rank_table(path: str, timeout_s: float = RANK_TABLE_WAIT_S, poll_s: float = 1.0) -> dict:
    """The rank table at ``path`` once its ``status`` is ``completed`` (the operator writes it last).

    Raises:
        RankEnvError: not completed within ``timeout_s``, or not JSON once completed.
    """
    deadline = time.monotonic() + timeout_s
    status = "missing"
    while True:
        try:
            with open(path, encoding="utf-8") as handle:
                text = handle.read(1 << 24)
            table = json.loads(text)
            status = str(table.get("status"))
            if status == "completed":
                return table
        except FileNotFoundError:
            status = "missing"
        except (OSError, ValueError):
            status = "not JSON yet"
        if time.monotonic() > deadline:
            raise RankEnvError(f"{path}: the rank table is still {status} after {timeout_s:.0f} s (the operator "
                               "writes status completed once every pod of the job is placed)")
        time.sleep(poll_s)


def pod_workers(environ: Mapping[str, str], rank_table: str = OPERATOR_RANK_TABLE) -> Optional[list[dict[str, str]]]:
    """The environments of the processes this pod must start, or None: this process is the rank."""
    workers = dynamic_workers(environ)
    if workers is not None:
        return workers
    if environ.get("MS_ROLE") or environ.get("RANK_TABLE_FILE") or not os.path.exists(rank_table):
        return None
    return rank_table_workers(wait_for_rank_table(rank_table), rank_table, _addresses())


def run_workers(argv: Sequence[str], workers: Sequence[Mapping[str, str]], environ: Mapping[str, str],
                grace_s: float = GRACE_S) -> int:
    """Start ``argv`` once per worker environment; the first non-zero exit stops the rest and is returned."""
    procs: list[subprocess.Popen] = []

    def on_signal(signum, frame):  # the pod is being deleted: no process of it may outlive it
        _stop(procs, grace_s)
        raise SystemExit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, on_signal)
    procs.extend(subprocess.Popen(list(argv), env={**environ, **extra}, start_new_session=True) for extra in workers)
    code = 0
    try:
        pending = list(procs)
        while pending:
            for proc in list(pending):
                if proc.poll() is not None:
                    pending.remove(proc)
                    if proc.returncode != 0 and code == 0:
                        code = proc.returncode if proc.returncode > 0 else 128 - proc.returncode
                        _stop(pending, grace_s)
                        pending = []
                        break
            time.sleep(0.2)
    finally:
        _stop([p for p in procs if p.poll() is None], grace_s)
    return code


def _stop(procs: Sequence[subprocess.Popen], grace_s: float) -> None:
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        alive = [p for p in procs if p.poll() is None]
        for proc in alive:
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait
        for proc in alive:
            try:
                proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                pass
