"""The NPU pre-flight's two round trips to every Ascend host, in parallel (``launcher.npu`` judges).

1. Each host's probe runs ``npu-smi info`` (and ``-t topo`` when cores are bound) and, per device,
   ``hccn_tool -link``, ``-net_health`` and ``-ip``, reads CANN's and MindSpore's versions, lists
   ``data_dir`` and measures the free disk; one JSON answer.
2. With several servers, each device pings the same device of the next server (its IP from the
   rank table, else from step 1).

Every problem of every host is collected before one error lists them all.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Mapping, Optional

from launcher import npu
from launcher.errors import HostUnreachable, NpuCheckFailed
from launcher.executor import Executor
from launcher.jobplan import host_python, own_argv
from launcher.spec import ClusterSpec, HostSpec

CpuMap = dict[tuple[str, int], tuple[int, ...]]  # (host address, device id) -> cores of its rank


def _ask(cluster: ClusterSpec, host: HostSpec, executor: Executor, request: dict) -> dict:
    result = executor.run(own_argv(host_python(cluster, host), "launcher.probe"), input=json.dumps({"npu": request}),
                          timeout=cluster.ssh.connect_timeout + 90.0,
                          cwd=os.getcwd() if host.sees_launch_folder else None)
    lines = [ln for ln in result.stdout.splitlines() if ln.startswith("{")]
    if result.exit_code != 0 or not lines:
        last = next((ln.strip() for ln in reversed(result.stderr.splitlines()) if ln.strip()), "")
        raise HostUnreachable(f"host {host.label}: the NPU pre-flight did not run ({last or result.exit_code})")
    return json.loads(lines[-1])


def _report(host: HostSpec, answer: Mapping, data_dir: Optional[str]) -> npu.HostReport:
    return npu.HostReport(label=host.label, outputs={k: (int(v[0]), str(v[1])) for k, v in answer["outputs"].items()},
                          toolkit=answer.get("toolkit"), mindspore=answer.get("mindspore"),
                          data_dir=data_dir, data_files=answer.get("data_files"), free_bytes=answer.get("free_bytes"),
                          allowed_cpus=tuple(answer.get("allowed_cpus") or ()))


def npu_preflight(cluster: ClusterSpec, executors: Mapping[str, Executor], in_parallel,
                  device_ips: Optional[Mapping[tuple[str, int], str]] = None) -> CpuMap:
    """Check every Ascend host's NPUs; return each rank's cores by its NPU's affinity (when binding).

    Args:
        in_parallel: ``fn, items -> results`` run in threads (the launcher's own helper).
        device_ips: the rank table's IPs, (host, device) -> IP; None: no rank table (init: dynamic),
            the IPs hccn_tool prints are the ones pinged.

    Raises:
        NpuCheckFailed: every problem found, one line each naming the host and the device.
        HostUnreachable: a host's probe did not answer.
    """
    train = cluster.train_config
    data_dir = train.data_dir if cluster.builtin_trainer else None
    space_dir = cluster.workdir

    def gather(host: HostSpec) -> npu.HostReport:
        request = {"devices": list(host.devices), "topo": cluster.bind_cores,
                   "data_dir": data_dir, "space_dir": space_dir}
        return _report(host, _ask(cluster, host, executors[host.address], request), data_dir)

    reports = in_parallel(gather, list(cluster.hosts))
    ips_by_host = []
    for host, report in zip(cluster.hosts, reports):
        if device_ips is not None:
            ips = {d: device_ips[(host.address, d)] for d in host.devices if (host.address, d) in device_ips}
        else:
            ips = {d: ip for d in host.devices
                   if (ip := npu.parse_ip(report.outputs.get(f"ip {d}", (1, ""))[1]))}
        ips_by_host.append((host.address, ips))
    peers = npu.ring_peers(ips_by_host)
    if peers:
        def ping(host: HostSpec) -> Mapping[str, tuple[int, str]]:
            request = {"ping_only": True, "ping": {str(d): ip for d, ip in peers[host.address].items()}}
            return _ask(cluster, host, executors[host.address], request)["outputs"]

        reports = [dataclasses.replace(report, outputs={**report.outputs,
                                                        **{k: (int(v[0]), str(v[1])) for k, v in outputs.items()}})
                   for report, outputs in zip(reports, in_parallel(ping, list(cluster.hosts)))]
    problems: list[str] = []
    for host, report, (_, ips) in zip(cluster.hosts, reports, ips_by_host):
        expected = ips if device_ips is not None else {}
        problems += npu.device_problems(report, host.devices, expected, peers.get(host.address, {}))
    problems += npu.cluster_problems(reports, npu.checkpoint_room(train.arch, train.width, train.keep_max))
    if problems:
        raise NpuCheckFailed("the NPU pre-flight failed (--skip-preflight runs anyway):\n  " + "\n  ".join(problems))
    cpus: CpuMap = {}
    if cluster.bind_cores:
        for host, report in zip(cluster.hosts, reports):
            code, text = report.outputs.get("topo", (1, ""))
            affinity = npu.parse_topo_affinity(text) if code == 0 else {}
            for device, share in npu.affinity_cpus(affinity, host.devices, report.allowed_cpus or None).items():
                if share:
                    cpus[(host.address, device)] = share
    return cpus
