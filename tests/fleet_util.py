"""Fleet jobs on the namespace hosts: the cluster file of a scale run, and what is left on the hosts.

Shared by ``tests/test_fleet.py`` and ``scripts/bench_scale.py``, so the benchmark measures the
jobs the tests prove.
"""
from __future__ import annotations

import os
import sys
import time
from typing import Any, Optional, Sequence

import yaml

from netns_util import netns_pids

FLEET_RANK = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fleet_rank.py")
RANKS_PER_HOST = 8


def device_ips(host_index: int, devices: int) -> dict[int, str]:
    """Made-up NPU addresses, one per device, unique per host: the rank table needs them, nothing dials them."""
    return {d: f"192.98.{host_index % 250}.{100 + d}" for d in range(devices)}


def fleet_cluster(path: str, hosts: Sequence[str], lab, workdir: str, ranks_per_host: int = RANKS_PER_HOST,
                  fleet_args: Optional[Sequence[str]] = None, **fields: Any) -> str:
    """A cluster file of ``hosts`` x ``ranks_per_host`` running ``tests/fleet_rank.py`` through ``command:``.

    ``backend: ascend`` started from a rank table (``ascend.init: ranktable``) with the device IPs in
    the file: no scheduler process and no MindSpore on
    the hosts, so what is measured is the launcher and its agents. ``lab``: the netns lab whose
    SSH settings reach the hosts (None: no ssh section). ``fields`` replace top-level keys.
    """
    data: dict[str, Any] = {
        "name": "fleet", "backend": "ascend", "ascend": {"init": "ranktable"}, "workdir": workdir,
        "python": sys.executable,
        "hosts": [{"address": h, "devices": ranks_per_host, "device_ips": device_ips(i, ranks_per_host)}
                  for i, h in enumerate(hosts)],
        "bind_cores": False, "restarts": 0,
    }
    if lab is not None:
        spec = lab.ssh_spec()
        data["ssh"] = {"user": spec.user, "port": spec.port, "key_file": spec.key_file, "connect_timeout": 20,
                       "known_hosts": spec.known_hosts}
    if fleet_args is not None:
        data["command"] = ["python", "-S", FLEET_RANK, *fleet_args]
    data.update(fields)
    with open(path, "w", encoding="utf-8") as handle:
        yaml.safe_dump(data, handle)
    return path


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return handle.read().replace(b"\0", b" ").decode("utf-8", "replace").strip()
    except OSError:
        return "(gone)"


def leftovers(lab, timeout: float = 10.0) -> dict[str, list[str]]:
    """What runs in each namespace host besides its sshd, after up to ``timeout`` s for it to end.

    sshd's per-connection children end once the launcher has closed its connections.
    """
    deadline = time.monotonic() + timeout
    while True:
        left = {h.address: [f"{p} {_cmdline(p)}" for p in netns_pids(h.netns) if p != h.sshd.pid]
                for h in lab.hosts}
        left = {a: procs for a, procs in left.items() if procs}
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.1)
