"""The NPU pre-flight of an Ascend job, and each rank's cores by its NPU's CPU affinity.

Pure: the parsers read what the real tools print (``npu-smi info``, ``npu-smi info -t topo``,
``hccn_tool -i N -link/-net_health/-ip/-ping -g``, CANN's ``ascend_toolkit_install.info``; real
outputs are kept as test fixtures, ``tests/fixtures/ascend/SOURCES.md``), and the checks turn one
host's report (gathered on the host by ``launcher.probe``'s ``npu`` request, in one round trip)
into problems, one line each naming the host and the device.

Every host is checked in parallel, before anything starts: each device the job uses is listed
by ``npu-smi info`` with Health OK and no process on it; its link is UP and its network health
Success; the IP the rank table (or the cluster file) gives it is the one ``hccn_tool -ip -g``
prints; it answers a ping from the device of the same index on the next server (a ring, so every
server's NICs are tried once); CANN and MindSpore are the same versions on every host;
``data_dir`` holds the same CIFAR-10 files on every host; the job folder's disk has room for the
checkpoints kept.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Mapping, Optional, Sequence

from launcher.protocol import split_cpus

CIFAR_RECORD = 3073  # bytes of one CIFAR-10 binary record: a label byte and 32x32x3 pixels
# CANN's set_env.sh exports ASCEND_TOOLKIT_HOME (default /usr/local/Ascend/ascend-toolkit/latest)
TOOLKIT_HOME = "/usr/local/Ascend/ascend-toolkit/latest"
TOOLKIT_INFO = "{home}/{machine}-linux/ascend_toolkit_install.info"

_SMI_DEVICE = re.compile(r"^\|\s*(\d+)\s+(\S+)\s*\|\s*([A-Za-z]+)\s*\|", re.M)  # | 0  910B3  | OK  |
_SMI_PROCESS = re.compile(r"^\|\s*(\d+)\s+(\d+)\s*\|\s*(\d+)\s*\|", re.M)  # | 2  0  | 1333928  |
_SMI_IDLE = re.compile(r"No running processes found in NPU (\d+)")
_TOPO_ROW = re.compile(r"^NPU(\d+)\s+.*?\s([\d,-]+)\s*$", re.M)
_LINK = re.compile(r"link status:\s*(\S+)")
_HEALTH = re.compile(r"net health status:\s*(.+?)\s*$", re.M)
_IP = re.compile(r"^[ \t]*ipaddr[ \t]*:[ \t]*(\S+)", re.M)
_LOSS = re.compile(r"([\d.]+)% packet loss")
_VERSION = re.compile(r"^version=(\S+)", re.M)


@dataclass(frozen=True)
class NpuSmi:
    """What ``npu-smi info`` says: each NPU's Health, and the processes on each."""

    health: Mapping[int, str]
    processes: Mapping[int, tuple[int, ...]]


def parse_npu_smi(text: str) -> NpuSmi:
    """``npu-smi info``'s table: the device rows (``| <npu> <name> | <health> |``) and the process table."""
    head, _, procs = text.partition("Process id")
    health: dict[int, str] = {}
    for npu, _name, state in _SMI_DEVICE.findall(head):
        # an A3 card lists two chips under one NPU id: the card is as healthy as its worst chip
        if health.get(int(npu), "OK") == "OK":
            health[int(npu)] = state
    processes: dict[int, list[int]] = {}
    for npu, _chip, pid in _SMI_PROCESS.findall(procs):
        processes.setdefault(int(npu), []).append(int(pid))
    return NpuSmi(health, {k: tuple(v) for k, v in processes.items()})


def parse_cpu_list(text: str) -> tuple[int, ...]:
    """``0-23`` / ``0-3,8,10-11`` as the CPUs it names, in order."""
    cpus: list[int] = []
    for part in text.split(","):
        first, _, last = part.partition("-")
        cpus.extend(range(int(first), int(last or first) + 1))
    return tuple(cpus)


def parse_topo_affinity(text: str) -> dict[int, tuple[int, ...]]:
    """``npu-smi info -t topo``'s ``CPU Affinity`` column: NPU id -> its NUMA-local CPUs."""
    return {int(npu): parse_cpu_list(cpus) for npu, cpus in _TOPO_ROW.findall(text)}


def affinity_cpus(affinity: Mapping[int, Sequence[int]], devices: Sequence[int],
                  allowed: Optional[Sequence[int]] = None) -> dict[int, tuple[int, ...]]:
    """Each device's share of its NPU's affine CPUs: the devices that share one affinity split it evenly.

    msrun's ``--bind_core`` (MindSpore 2.10, ``runtime/thread_bind_core.py``) gives each device an
    equal count of CPUs of its NUMA node; ``npu-smi info -t topo`` names that node's CPUs per NPU.
    ``allowed``: the CPUs this host lets the job use (its affinity mask); a device whose affine
    CPUs are all outside it, or that the table does not list, gets none (left to the OS).
    """
    allowed_set = set(allowed) if allowed is not None else None
    groups: dict[tuple[int, ...], list[int]] = {}
    for device in sorted(devices):
        cpus = tuple(c for c in affinity.get(device, ()) if allowed_set is None or c in allowed_set)
        groups.setdefault(cpus, []).append(device)
    out: dict[int, tuple[int, ...]] = {}
    for cpus, members in groups.items():
        for index, device in enumerate(members):
            out[device] = split_cpus(list(cpus), index, len(members)) if cpus else ()
    return out


def parse_link(text: str) -> Optional[str]:
    match = _LINK.search(text)
    return match.group(1) if match else None


def parse_net_health(text: str) -> Optional[str]:
    match = _HEALTH.search(text)
    return match.group(1) if match else None


def parse_ip(text: str) -> Optional[str]:
    match = _IP.search(text)
    return match.group(1) if match else None


def ping_loss(text: str) -> Optional[float]:
    """The loss (percent) ``hccn_tool -ping`` reports; None when it printed no summary."""
    match = _LOSS.search(text)
    return float(match.group(1)) if match else None


def parse_toolkit_version(text: str) -> Optional[str]:
    """``version=`` of CANN's ``ascend_toolkit_install.info``."""
    match = _VERSION.search(text)
    return match.group(1) if match else None


# -- one host's report ----------------------------------------------------------------------------

@dataclass(frozen=True)
class HostReport:
    """What the probe gathered on one host: each command's (exit code, output), and facts."""

    label: str
    outputs: Mapping[str, tuple[int, str]]  # "npu-smi info", "link 3", "health 3", "ip 3", "ping 3", "topo"
    toolkit: Optional[str] = None  # CANN's version, None when the file is missing
    mindspore: Optional[str] = None
    data_dir: Optional[str] = None  # the folder asked about (the built-in trainer's data_dir); None: not asked
    data_files: Optional[Mapping[str, int]] = None  # data_dir's *.bin -> bytes; None: no such folder
    free_bytes: Optional[int] = None
    allowed_cpus: tuple[int, ...] = ()


def _ran(report: HostReport, key: str, what: str, problems: list[str]) -> Optional[str]:
    code, output = report.outputs.get(key, (127, "not run"))
    if code != 0:
        last = next((ln.strip() for ln in reversed(output.splitlines()) if ln.strip()), "no output")
        problems.append(f"host {report.label}: {what} failed (exit {code}: {last[:120]})")
        return None
    return output


def device_problems(report: HostReport, devices: Sequence[int], expected_ips: Mapping[int, str],
                    ping_peers: Mapping[int, str]) -> list[str]:
    """The problems of one host's NPUs, one line each naming the host and the device."""
    problems: list[str] = []
    smi_text = _ran(report, "npu-smi info", "npu-smi info", problems)
    if smi_text is not None:
        smi = parse_npu_smi(smi_text)
        for device in devices:
            if device not in smi.health:
                listed = ", ".join(map(str, sorted(smi.health))) or "none"
                problems.append(f"host {report.label}: NPU {device} is not listed by npu-smi info (listed: {listed})")
            elif smi.health[device] != "OK":
                problems.append(f"host {report.label}: NPU {device} Health is {smi.health[device]} (npu-smi info), not OK")
            if smi.processes.get(device):
                pids = ", ".join(map(str, smi.processes[device]))
                problems.append(f"host {report.label}: NPU {device} is busy: process(es) {pids} hold it (npu-smi info)")
    for device in devices:
        text = _ran(report, f"link {device}", f"hccn_tool -i {device} -link -g", problems)
        if text is not None and parse_link(text) != "UP":
            problems.append(f"host {report.label}: NPU {device} link is {parse_link(text) or 'unknown'} "
                         f"(hccn_tool -i {device} -link -g), not UP")
        text = _ran(report, f"health {device}", f"hccn_tool -i {device} -net_health -g", problems)
        if text is not None and parse_net_health(text) != "Success":
            problems.append(f"host {report.label}: NPU {device} network health is {parse_net_health(text) or 'unknown'} "
                         f"(hccn_tool -i {device} -net_health -g), not Success")
        if device in expected_ips:
            text = _ran(report, f"ip {device}", f"hccn_tool -i {device} -ip -g", problems)
            actual = parse_ip(text) if text is not None else None
            if text is not None and actual != expected_ips[device]:
                problems.append(f"host {report.label}: NPU {device} has IP {actual or 'none'} (hccn_tool -i {device} "
                             f"-ip -g), the rank table says {expected_ips[device]}")
        if device in ping_peers:
            key = f"ping {device}"
            code, text = report.outputs.get(key, (127, "not run"))
            loss = ping_loss(text)
            if code != 0 or loss is None or loss > 0 or "recv time out" in text:
                said = f"{loss:g}% packet loss" if loss is not None else f"exit {code}"
                problems.append(f"host {report.label}: NPU {device} does not reach {ping_peers[device]} (the same "
                             f"NPU on the next server): hccn_tool -i {device} -ping -g address "
                             f"{ping_peers[device]}: {said}")
    return problems


def cluster_problems(reports: Sequence[HostReport], checkpoint_bytes: int) -> list[str]:
    """What must agree across hosts (CANN, MindSpore, the data) and each host's room for checkpoints,
    host by host (the first host is the reference)."""
    problems: list[str] = []
    if not reports:
        return problems
    first = reports[0]
    for report in reports:
        if report.toolkit is None:
            problems.append(f"host {report.label}: no CANN toolkit (ascend_toolkit_install.info not found)")
        elif first.toolkit is not None and report.toolkit != first.toolkit:
            problems.append(f"host {report.label}: CANN {report.toolkit}, but {first.label} has {first.toolkit}")
        if report.mindspore is None:
            problems.append(f"host {report.label}: MindSpore is not installed for the job's interpreter")
        elif first.mindspore is not None and report.mindspore != first.mindspore:
            problems.append(f"host {report.label}: MindSpore {report.mindspore}, but {first.label} has "
                            f"{first.mindspore}")
        problems += _data_problems(report, first)
        if report.free_bytes is not None and report.free_bytes < checkpoint_bytes:
            problems.append(f"host {report.label}: {report.free_bytes / 2**30:.1f} GiB free for the job folder, "
                            f"the checkpoints kept need {checkpoint_bytes / 2**30:.1f} GiB")
    return problems


def _data_problems(report: HostReport, first: HostReport) -> list[str]:
    files = report.data_files
    if report.data_dir is None:
        return []
    if files is None:
        return [f"host {report.label}: data_dir {report.data_dir} is not there"]
    problems = []
    if not any(name.startswith("data_batch") for name in files) or "test_batch.bin" not in files:
        problems.append(f"host {report.label}: data_dir has no CIFAR-10 binary batches (data_batch_*.bin and "
                        f"test_batch.bin); it has {', '.join(sorted(files)) or 'no .bin file'}")
    for name, size in sorted(files.items()):
        if size % CIFAR_RECORD:
            problems.append(f"host {report.label}: data_dir/{name} is {size} bytes, not whole CIFAR-10 records "
                            f"({CIFAR_RECORD} bytes each): a partial copy?")
    if report is not first and first.data_files is not None and files != first.data_files:
        names = sorted({name for name, _ in set(files.items()) ^ set(first.data_files.items())})
        problems.append(f"host {report.label}: data_dir differs from {first.label}'s ({', '.join(names)})")
    return problems


def ring_peers(host_devices: Sequence[tuple[str, Mapping[int, str]]]) -> dict[str, dict[int, str]]:
    """For each host, each device's ping target: the IP of the same device on the next host (a ring).

    ``host_devices``: (host, device id -> IP) in server order. One server: no peers."""
    peers: dict[str, dict[int, str]] = {}
    if len(host_devices) < 2:
        return peers
    for index, (host, ips) in enumerate(host_devices):
        _, next_ips = host_devices[(index + 1) % len(host_devices)]
        peers[host] = {device: next_ips[device] for device in ips if device in next_ips}
    return peers


CHECKPOINT_PARAMS = {"resnet18": 11.7e6, "resnet34": 21.8e6, "resnet50": 25.6e6, "resnet101": 44.5e6}


def checkpoint_room(arch: str, width: int, keep_max: int) -> int:
    """Bytes the kept checkpoints need: weights and momentum in float32 (x2), width scales as its square,
    one more than ``keep_max`` while the newest is written."""
    params = CHECKPOINT_PARAMS.get(arch, 44.5e6) * (width / 64) ** 2
    return int(params * 4 * 2 * (keep_max + 1))
