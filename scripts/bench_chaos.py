#!/usr/bin/env python3
"""The chaos bench: one ``mscluster launch`` runs while faults hit it on a schedule; what each cost.

The hosts are network namespaces with an sshd each (the tests' harness, ``tests/netns_util.py``).
The job is ``tests/fleet_rank.py`` through ``command:`` (``--trainer fleet``: fake ranks with a
checkpoint/resume of their own, so steps lost are real and the final "weights" can be compared) or
the built-in trainer (``--trainer builtin``: one CPU rank per host, a tiny ResNet). A fault-free
reference of the same job runs side by side on hosts of its own (``--reference side``; ``after``:
once the faulted run has ended; ``none``).

Faults (``--faults``, taken in turn, the first ``--first-fault`` s after every rank's first step,
then every ``--fault-every`` s while the run lasts ``--minutes``):

- ``sigkill``: one rank SIGKILLed. ``sigstop``: one rank frozen (SIGSTOP, never continued).
- ``link``: a host's link down for good (``ip link set <veth> down`` in its namespace).
- ``slow``: a host slowed, two ways at once (``--slow-how both``, or ``cgroup`` / ``inside`` alone).
  cgroup: where the cgroup v1/v2 CPU controller can be written (as root here), every process of the
  host (its sshd, agents and ranks; later ones inherit it) moves into a cgroup with a CPU quota of
  ``--slow-quota`` CPUs over a period short enough that a step's few ms of hashing (``--work``) is
  throttled (``cpu.cfs_quota_us`` / ``cpu.max``); elsewhere the host's processes are SIGSTOPped for
  40 ms of every 100 ms (duty cycling). The report says which. inside: the bench writes
  ``{host: --slow-factor}`` to the job's ``fleet_slow.json`` and the host's ranks compute at that
  speed (``fleet_rank.py --slow-file``: deterministic, and it follows the host, not rank numbers).
  A slowed host stays slow.

Per fault, from ``result.json`` (the launcher's clock) and ``status.json`` (read every 0.5 s):
``detected_s`` (the root cause's time after the injection: a SIGKILL is seen at the exit, a frozen
rank by the watchdog, a lost link by the SSH keepalive), ``teardown_from_s`` (the teardown's
start), ``outcome`` (replaced by a spare / shrunk / restarted in place / job ended), ``first_step_s``
(the next attempt's first step after the injection), ``all_stepping_s`` (every rank's first step
of the next attempt), ``steps_lost``; a slowed host: ``named_after_steps`` (its rank's steps from the
injection until ``status.json`` named it a straggler). For the run: ETTR (``goodput.
effective_training_ratio``), the stragglers named in both runs, and whether the final weights equal
the fault-free run's (fleet: ``fleet_final.json``; builtin: every parameter of the final
checkpoint, bit for bit).

Usage (root): .venv/bin/python scripts/bench_chaos.py --hosts 8 --minutes 30 --fault-every 600 --spares 1
Prints a table on stderr and one JSON document on stdout (``--out`` writes it too), with the CPU model.
Everything it made (namespaces, sshd, cgroups, the launches) is removed at the end, also on Ctrl-C.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)
sys.path.insert(0, os.path.join(REPO_ROOT, "tests"))
sys.path.insert(0, os.path.join(REPO_ROOT, "scripts"))

from benchlib import cpu_model  # noqa: E402
from fleet_rank import FINAL_FILE, weights_after  # noqa: E402
from fleet_util import device_ips, fleet_cluster  # noqa: E402

FAULT_KINDS = ("sigkill", "sigstop", "link", "slow")
SLOW_FILE = "fleet_slow.json"  # in the job folder: {host: speed} (fleet_rank.py --slow-file)
CGROUP_V1_CPU = "/sys/fs/cgroup/cpu"
CGROUP_V2 = "/sys/fs/cgroup"


# -- reading the job ---------------------------------------------------------------------------------

def read_json(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


class Watcher:
    """Reads a job's ``status.json`` every 0.5 s: each rank's step and pid, and when a rank was first named."""

    def __init__(self, job: str):
        self.job = job
        self.status: dict[str, Any] = {}
        self.named: list[dict[str, Any]] = []  # every naming: {rank, host, at, step, relative, since_step}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        before: set[int] = set()
        while not self._stop.is_set():
            status = read_json(os.path.join(self.job, "status.json"))
            if status:
                self.status = status
                now: set[int] = set()
                for s in status.get("stragglers") or []:
                    rank = s.get("rank")
                    if not isinstance(rank, int):
                        continue
                    now.add(rank)
                    if rank not in before:  # named (again) since the last read
                        proc = (status.get("processes") or {}).get(f"rank{rank}") or {}
                        self.named.append({"rank": rank, "host": s.get("host"), "at": time.time(),
                                           "step": proc.get("global_step"), "relative": s.get("relative"),
                                           "since_step": s.get("since_step")})
                before = now
            self._stop.wait(0.5)

    def ranks(self) -> dict[int, dict[str, Any]]:
        """rank -> its status.json entry (host, pid, state, global_step)."""
        out = {}
        for proc in (self.status.get("processes") or {}).values():
            if isinstance(proc.get("rank"), int):
                out[proc["rank"]] = proc
        return out

    def stepping(self, since: float) -> bool:
        """Every rank running and has reported a step after ``since`` (wall time)."""
        ranks = self.ranks()
        return bool(ranks) and all(p.get("state") == "running" and (p.get("progress_at") or 0) > since
                                   for p in ranks.values())

    def step_of(self, rank: int) -> Optional[int]:
        return (self.ranks().get(rank) or {}).get("global_step")

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


# -- faults ------------------------------------------------------------------------------------------

@dataclass
class Fault:
    kind: str
    target: str  # "rank R on HOST" or the host
    host: str
    rank: Optional[int]
    injected_at: float
    how: str = ""  # slow: cgroup quota / duty cycle / inside
    step_at_injection: Optional[int] = None
    result: dict[str, Any] = field(default_factory=dict)


def _ns_link(netns: str) -> str:
    out = subprocess.run(["ip", "-n", netns, "-o", "link", "show"], capture_output=True, text=True, check=True).stdout
    return next(line.split(":")[1].strip().split("@")[0] for line in out.splitlines()
                if line.split(":")[1].strip() != "lo")


def _cpu_cgroup_of(pid: int) -> Optional[str]:
    """The cgroup directory of ``pid`` in the CPU hierarchy (v1 ``cpu``, else v2), if it can be found."""
    try:
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if "cpu" in controllers.split(",") and os.path.isdir(CGROUP_V1_CPU):
            return os.path.join(CGROUP_V1_CPU, path.lstrip("/"))
        if controllers == "" and os.path.isfile(os.path.join(CGROUP_V2, "cgroup.controllers")):
            return os.path.join(CGROUP_V2, path.lstrip("/"))
    return None


class Slower:
    """Slows hosts down (a CPU quota cgroup, else SIGSTOP/SIGCONT duty cycling) and undoes it all at the end."""

    def __init__(self, quota_cpus: float):
        self.quota_cpus = quota_cpus
        self.cgroups: list[tuple[str, str]] = []  # (the slow cgroup, the cgroup its processes came from)
        self.cyclers: list[threading.Event] = []

    def slow(self, host) -> str:
        from netns_util import netns_pids

        pids = netns_pids(host.netns)
        parent = _cpu_cgroup_of(host.sshd.pid)
        if parent is not None:
            path = os.path.join(parent, f"chaos-slow-{host.netns}")
            try:
                os.makedirs(path, exist_ok=True)
                # a period short enough that a burst of a few ms is throttled (quota and period >= 1 ms)
                period = max(int(1000 / self.quota_cpus) + 1, 1000) if self.quota_cpus < 1 else 10_000
                quota = max(int(self.quota_cpus * period), 1000)
                if os.path.isfile(os.path.join(path, "cpu.cfs_quota_us")):
                    Path(path, "cpu.cfs_period_us").write_text(str(period))
                    Path(path, "cpu.cfs_quota_us").write_text(str(quota))
                else:
                    Path(path, "cpu.max").write_text(f"{quota} {period}")
                self.cgroups.append((path, parent))
                for pid in pids:  # the host's sshd first: what it starts later is slowed too
                    with contextlib.suppress(OSError):
                        Path(path, "cgroup.procs").write_text(str(pid))
                return f"cgroup quota {self.quota_cpus:g} CPU ({path})"
            except OSError as exc:
                with contextlib.suppress(OSError):
                    os.rmdir(path)
                print(f"bench_chaos: cgroup not writable ({exc}); duty cycling instead", file=sys.stderr)
        stop = threading.Event()
        self.cyclers.append(stop)
        threading.Thread(target=self._cycle, args=(host, stop), daemon=True).start()
        return "SIGSTOP 40 ms of every 100 ms"

    @staticmethod
    def _cycle(host, stop: threading.Event) -> None:
        from netns_util import netns_pids

        while not stop.is_set():
            pids = [p for p in netns_pids(host.netns) if p != host.sshd.pid]
            for sig, pause in ((signal.SIGSTOP, 0.04), (signal.SIGCONT, 0.06)):
                for pid in pids:
                    with contextlib.suppress(OSError):
                        os.kill(pid, sig)
                time.sleep(pause)

    def undo(self) -> None:
        for stop in self.cyclers:
            stop.set()
        for path, parent in self.cgroups:
            for _ in range(50):
                try:
                    pids = Path(path, "cgroup.procs").read_text().split()
                except OSError:
                    break
                for pid in pids:
                    with contextlib.suppress(OSError):
                        Path(parent, "cgroup.procs").write_text(pid)
                try:
                    os.rmdir(path)
                    break
                except OSError:
                    time.sleep(0.1)


def pick_target(watcher: Watcher, index: int, kind: str, lost: set[str]) -> tuple[Optional[str], Optional[int]]:
    """A host (never rank 0's, never one already lost) and one of its ranks, chosen by the fault's index."""
    ranks = watcher.ranks()
    hosts: dict[str, list[int]] = {}
    for rank, proc in sorted(ranks.items()):
        hosts.setdefault(proc.get("host"), []).append(rank)
    first_host = (ranks.get(0) or {}).get("host")
    choices = [h for h in hosts if h != first_host and h not in lost]
    if not choices:
        return None, None
    host = choices[(index * 3) % len(choices)]
    host_ranks = hosts[host]
    return host, host_ranks[index % len(host_ranks)]


def inject(kind: str, host_address: str, rank: Optional[int], watcher: Watcher, lab_hosts: dict, slower: Slower,
           slow_how: str, slow_factor: float) -> str:
    """Do it; returns how (for the slow fault)."""
    if kind in ("sigkill", "sigstop"):
        pid = (watcher.ranks().get(rank) or {}).get("pid")
        if not pid:
            raise RuntimeError(f"rank {rank} has no pid in status.json")
        os.kill(pid, signal.SIGKILL if kind == "sigkill" else signal.SIGSTOP)
        return ""
    host = lab_hosts[host_address]
    if kind == "link":
        subprocess.run(["ip", "-n", host.netns, "link", "set", _ns_link(host.netns), "down"], check=True)
        return "link down for good"
    if kind == "slow":
        how = []
        if slow_how in ("both", "inside"):
            path = os.path.join(watcher.job, SLOW_FILE)
            speeds = {**read_json(path), host_address: slow_factor}
            with open(f"{path}.tmp", "w", encoding="utf-8") as handle:
                json.dump(speeds, handle)
            os.replace(f"{path}.tmp", path)
            how.append(f"inside: speed {slow_factor:g}")
        if slow_how in ("both", "cgroup"):
            how.append(slower.slow(host))
        return "; ".join(how)
    raise ValueError(kind)


# -- the runs ----------------------------------------------------------------------------------------

@dataclass
class RunSpec:
    name: str
    hosts: list[str]
    spares: list[str]
    trainer: str
    ranks_per_host: int
    steps: int
    step_rate: float
    ckpt_every: int
    compute_s: float
    work: int
    restarts: int
    keepalive: tuple[int, int]
    stragglers: dict[str, Any]
    data_dir: str = ""
    train_steps_per_epoch: int = 10
    train_epochs: int = 3


def cluster_file(path: str, spec: RunSpec, lab, workdir: str) -> str:
    lab_spec = lab.ssh_spec()
    ssh = {"user": lab_spec.user, "port": lab_spec.port, "key_file": lab_spec.key_file, "connect_timeout": 20,
           "known_hosts": lab_spec.known_hosts, "keepalive_interval": spec.keepalive[0],
           "keepalive_count": spec.keepalive[1]}
    fields_: dict[str, Any] = {"name": spec.name, "ssh": ssh, "restarts": spec.restarts, "stragglers": spec.stragglers}
    if spec.trainer == "fleet":
        fleet_args = ["--steps", str(spec.steps), "--step-rate", str(spec.step_rate), "--ckpt-every",
                      str(spec.ckpt_every), "--compute-s", str(spec.compute_s), "--work", str(spec.work),
                      "--slow-file", SLOW_FILE]
        if spec.spares:
            offset = len(spec.hosts)
            fields_["spares"] = [{"address": h, "devices": spec.ranks_per_host,
                                  "device_ips": device_ips(offset + i, spec.ranks_per_host)}
                                 for i, h in enumerate(spec.spares)]
        return fleet_cluster(path, spec.hosts, None, workdir, ranks_per_host=spec.ranks_per_host,
                             fleet_args=fleet_args, **fields_)
    train = {"arch": "resnet18", "stem": "cifar", "width": 8, "image_size": 32, "batch_size": 16,
             "epochs": spec.train_epochs, "steps_per_epoch": spec.train_steps_per_epoch,
             "save_every_steps": spec.ckpt_every, "keep_max": 100, "lr": 0.05, "momentum": 0.9,
             "log_every_steps": 1, "eval_every_epochs": 0, "tensorboard": False, "data_dir": spec.data_dir}
    data = {"name": spec.name, "backend": "cpu", "workdir": workdir, "python": sys.executable,
            "hosts": [{"address": h, "devices": 1} for h in spec.hosts], "bind_cores": False,
            "env": {"MS_TOPO_TIMEOUT": "120"}, "train": train, **fields_}
    if spec.spares:
        data["spares"] = [{"address": h, "devices": 1} for h in spec.spares]
    with open(path, "w", encoding="utf-8") as handle:
        yaml.safe_dump(data, handle)
    return path


class Launch:
    """One ``mscluster launch`` in the background, in a process group of its own."""

    def __init__(self, cluster: str, job: str, cwd: str):
        self.job = job
        self.out = open(os.path.join(cwd, f"{os.path.basename(job)}.console"), "w+")
        argv = [sys.executable, "-m", "mscluster_cli", "launch", cluster, "--job-dir", job, "--console", "0",
                "--skip-preflight"]  # the namespace hosts have no NPU tools
        self.started_at = time.time()
        self.ended_at: Optional[float] = None
        self.proc = subprocess.Popen(argv, cwd=cwd, stdout=self.out, stderr=subprocess.STDOUT, start_new_session=True)
        self.watcher = Watcher(job)

    def running(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.watcher.stop()

    def console_tail(self, n: int = 3000) -> str:
        self.out.flush()
        self.out.seek(0)
        return self.out.read()[-n:]


def wait_first_steps(launch: Launch, timeout: float) -> float:
    deadline = time.monotonic() + timeout
    while launch.running() and time.monotonic() < deadline:
        if launch.watcher.stepping(launch.started_at):
            return time.time()
        time.sleep(0.2)
    raise RuntimeError(f"{launch.job}: not every rank stepped within {timeout:g} s: {launch.console_tail()}")


def run_faults(launch: Launch, args, lab_hosts: dict, slower: Slower, schedule: list[tuple[float, str]]) -> list[Fault]:
    """Inject each scheduled fault (delayed while the job is still recovering from the one before)."""
    faults: list[Fault] = []
    lost: set[str] = set()
    last = time.time()
    for index, (at, kind) in enumerate(schedule):
        while launch.running() and (time.time() < at or not launch.watcher.stepping(last)):
            time.sleep(0.2)
        if not launch.running():
            break
        host, rank = pick_target(launch.watcher, index, kind, lost)
        if host is None:
            print(f"bench_chaos: no host left for fault {index} ({kind})", file=sys.stderr)
            break
        if kind in ("link", "slow"):
            rank = min(r for r, p in launch.watcher.ranks().items() if p.get("host") == host)
        step = launch.watcher.step_of(rank) if rank is not None else None
        injected_at = time.time()  # the kill, the link command, the slow file come first: from here
        how = inject(kind, host, rank, launch.watcher, lab_hosts, slower, args.slow_how, args.slow_factor)
        fault = Fault(kind=kind, target=(f"rank {rank} on {host}" if kind in ("sigkill", "sigstop") else host),
                      host=host, rank=rank, injected_at=injected_at, how=how, step_at_injection=step)
        if kind == "link":
            lost.add(host)
        faults.append(fault)
        print(f"bench_chaos: {time.strftime('%H:%M:%S')} injected {kind} on {fault.target}", file=sys.stderr, flush=True)
        last = fault.injected_at
    return faults


def attempt_figures(a: dict[str, Any], attempts: list[dict[str, Any]], t: float) -> dict[str, Any]:
    """What the failed attempt ``a`` and the one after it say about a fault injected at ``t``."""
    root = a.get("root_cause") or {}
    following = [b for b in attempts if b.get("attempt", -1) > a.get("attempt", -1)]
    nxt = following[0] if following else None
    outcome = "job ended" if nxt is None else "restarted in place"
    moves = [f"{c.get('move')}: {c.get('host')}" + (f" -> spare {c['spare']}" if c.get("spare") else "")
             for c in a.get("hosts_changed") or []]  # launcher.hostpool.Change.to_dict
    if moves:
        outcome = "; ".join(moves) + ("" if nxt is not None else " (job ended)")
    teardown_at = (root.get("time") or 0) + (a.get("detect_s") or 0)
    all_stepping = (nxt["started_at"] + nxt["first_progress_s"]) if nxt and nxt.get("first_progress_s") is not None \
        else None
    return {"root_cause": f"{root.get('name')} on {root.get('host')}: "
                          f"{root.get('reason') or root.get('signal') or root.get('exit_code')}",
            # the root cause's own time (a frozen rank's: its last sign of life) and the launcher's
            # reaction to it (the teardown's start)
            "root_cause_s": round(root["time"] - t, 2) if root.get("time") else None,
            "detected_s": round(teardown_at - t, 2) if root.get("time") else None,
            "outcome": outcome,
            "first_step_s": round(nxt["first_step_at"] - t, 2) if nxt and nxt.get("first_step_at") else None,
            "all_stepping_s": round(all_stepping - t, 2) if all_stepping else None,
            "steps_lost": a.get("steps_lost"), "attempt": a.get("attempt")}


def judge(faults: list[Fault], result: dict[str, Any], watcher: Watcher) -> None:
    """Fill each fault's figures from result.json and what the watcher saw."""
    attempts = result.get("attempts") or []
    for fault in faults:
        t = fault.injected_at
        if fault.kind == "slow":
            named = [v for v in watcher.named if v.get("host") == fault.host and v["at"] >= t]
            first = min(named, key=lambda v: v["at"], default=None)
            fault.result = {"named": bool(first), "named_rank": first and first["rank"],
                            "named_before": sorted({v["rank"] for v in watcher.named
                                                    if v.get("host") == fault.host and v["at"] < t}),
                            "named_s": round(first["at"] - t, 1) if first else None,
                            "named_after_steps": (first["step"] - fault.step_at_injection)
                            if first and isinstance(first.get("step"), int) and fault.step_at_injection is not None
                            else None,
                            "relative": first and first.get("relative")}
            # stragglers.action: exclude: the attempt that stopped because of this host, and what followed
            excluded = [a for a in attempts if (a.get("ended_at") or 0) >= t
                        and any(c.get("host") == fault.host for c in a.get("hosts_changed") or [])]
            if excluded:
                fault.result.update(attempt_figures(excluded[0], attempts, t))
            continue
        during = [a for a in attempts if (a.get("started_at") or 0) <= t and (a.get("ended_at") or 1e18) >= t]
        a = during[-1] if during else None
        if a is None or not a.get("root_cause"):
            fault.result = {"outcome": "no failure seen"}
            continue
        fault.result = attempt_figures(a, attempts, t)


def final_weights(spec: RunSpec, job: str) -> Optional[str]:
    """fleet: the weights in fleet_final.json; builtin: the final checkpoint's name."""
    if spec.trainer == "fleet":
        return read_json(os.path.join(job, FINAL_FILE)).get("weights")
    ckpts = sorted(n for n in os.listdir(os.path.join(job, "checkpoints")) if n.endswith(".ckpt")) \
        if os.path.isdir(os.path.join(job, "checkpoints")) else []
    return ckpts[-1] if ckpts else None


def same_checkpoint(a: str, b: str) -> tuple[bool, Optional[float]]:
    """Every parameter of two MindSpore checkpoints bit for bit (as tests/test_resume.py compares them)."""
    import mindspore as ms
    import numpy as np

    x = {k: v.asnumpy() for k, v in ms.load_checkpoint(a).items() if not isinstance(v, str)}
    y = {k: v.asnumpy() for k, v in ms.load_checkpoint(b).items() if not isinstance(v, str)}
    if x.keys() != y.keys():
        return False, None
    worst = max(float(np.max(np.abs(x[k].astype(np.float64) - y[k].astype(np.float64)))) for k in x)
    return worst == 0.0, worst


def summarize_run(spec: RunSpec, launch: Launch, code: int) -> dict[str, Any]:
    result = read_json(os.path.join(launch.job, "result.json"))
    named = [{**n, "at_s": round(n["at"] - launch.started_at, 1)} for n in launch.watcher.named]
    return {"job": launch.job, "exit_code": code, "status": result.get("status"),
            "attempts": len(result.get("attempts") or []), "restarts": result.get("restarts"),
            "ettr": (result.get("goodput") or {}).get("effective_training_ratio"), "goodput": result.get("goodput"),
            "stragglers_named": named, "hosts": result.get("hosts"), "weights": final_weights(spec, launch.job),
            # the launch command's start to its last attempt's end (the launcher's clock)
            "wall_s": round(((result.get("attempts") or [{}])[-1].get("ended_at") or launch.ended_at or time.time())
                            - launch.started_at, 1)}


def wait_end(launch: Launch, timeout: float) -> int:
    try:
        code = launch.proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        launch.stop()
        code = -9
    launch.ended_at = time.time()
    return code


def schedule_of(args, start: float) -> list[tuple[float, str]]:
    kinds = args.faults.split(",")
    out, t, i = [], args.first_fault, 0
    while t < args.minutes * 60 and i < args.max_faults:
        out.append((start + t, kinds[i % len(kinds)]))
        t += args.fault_every
        i += 1
    return out


def print_table(report: dict[str, Any]) -> None:
    cols = ("kind", "target", "at_s", "root_cause_s", "detected_s", "outcome", "first_step_s", "all_stepping_s", "steps_lost",
            "named_after_steps")
    rows = []
    for f in report["faults"]:
        r = f["result"]
        rows.append((f["kind"], f["target"], f"{f['at_s']:.0f}", r.get("root_cause_s"), r.get("detected_s"), r.get("outcome"),
                     r.get("first_step_s"), r.get("all_stepping_s"), r.get("steps_lost"), r.get("named_after_steps")))
    widths = [max(len(str(c)), *(len(str(row[i])) for row in rows)) if rows else len(c) for i, c in enumerate(cols)]
    line = lambda vals: "  ".join(str(v).ljust(w) for v, w in zip(vals, widths))  # noqa: E731
    print(line(cols), file=sys.stderr)
    for row in rows:
        print(line(["-" if v is None else v for v in row]), file=sys.stderr)
    run, ref = report["run"], report.get("reference") or {}
    print(f"ETTR {run.get('ettr')}  status {run.get('status')}  attempts {run.get('attempts')}  "
          f"weights equal to the fault-free run: {report.get('weights_equal')}  "
          f"stragglers named: run {[s['rank'] for s in run.get('stragglers_named', [])]}, "
          f"reference {[s['rank'] for s in ref.get('stragglers_named', [])]}", file=sys.stderr)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=8)
    parser.add_argument("--ranks-per-host", type=int, default=8)
    parser.add_argument("--spares", type=int, default=0)
    parser.add_argument("--minutes", type=float, default=5.0, help="the fault-free run's length")
    parser.add_argument("--fault-every", type=float, default=120.0, help="seconds between faults")
    parser.add_argument("--first-fault", type=float, default=None, help="seconds after every rank's first step "
                                                                         "(default: half of --fault-every)")
    parser.add_argument("--max-faults", type=int, default=1000)
    parser.add_argument("--faults", default="sigkill,sigstop,link,slow", help=f"in turn, from {','.join(FAULT_KINDS)}")
    parser.add_argument("--trainer", choices=("fleet", "builtin"), default="fleet")
    parser.add_argument("--reference", choices=("side", "after", "none"), default="side")
    parser.add_argument("--step-rate", type=float, default=2.0)
    parser.add_argument("--ckpt-every", type=int, default=20, help="steps between checkpoints")
    parser.add_argument("--compute-s", type=float, default=0.1, help="seconds of compute per step (waiting)")
    parser.add_argument("--work", type=int, default=4000, help="sha256 rounds per step (~2 ms of CPU a quota slows)")
    parser.add_argument("--slow-quota", type=float, default=0.6, help="CPUs a slowed host gets (cgroup)")
    parser.add_argument("--slow-how", choices=("both", "cgroup", "inside"), default="both")
    parser.add_argument("--slow-factor", type=float, default=0.6)
    parser.add_argument("--straggler-action", default="warn")
    parser.add_argument("--straggler-window", type=int, default=10)
    parser.add_argument("--host-cpu-share", type=float, default=0.0,
                        help="the hosts' CPU weight against the launcher's (a cgroup, as bench_scale.py); 0: none")
    parser.add_argument("--keepalive", default="2,5", help="ssh keepalive interval,count")
    parser.add_argument("--train-steps", type=int, default=30, help="builtin: steps per epoch (3 epochs)")
    parser.add_argument("--out", default=None)
    parser.add_argument("--keep", action="store_true", help="keep the job folders (printed)")
    args = parser.parse_args()
    kinds = args.faults.split(",") if args.faults else []
    if any(k not in FAULT_KINDS for k in kinds):
        parser.error(f"--faults: each of {', '.join(FAULT_KINDS)}, got {args.faults!r}")
    if args.first_fault is None:
        args.first_fault = args.fault_every / 2
    from netns_util import netns_lab

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # the teardowns below run on TERM too
    builtin = args.trainer == "builtin"
    rph = 1 if builtin else args.ranks_per_host
    faults_planned = len(schedule_of(args, 0.0))
    per_run = args.hosts + args.spares
    lab_count = per_run * (2 if args.reference != "none" else 1)
    report: dict[str, Any] = {"cpu": cpu_model(), "cpus": os.cpu_count(), "machine": "shared (other jobs ran)",
                              "hosts": args.hosts, "ranks_per_host": rph, "spares": args.spares,
                              "trainer": args.trainer, "minutes": args.minutes, "fault_every_s": args.fault_every,
                              "argv": sys.argv[1:], "faults": []}
    tmp = tempfile.mkdtemp(prefix="bench-chaos-")
    slower = Slower(args.slow_quota)
    launches: list[Launch] = []
    try:
        with contextlib.ExitStack() as stack:
            data_dir = ""
            if builtin:
                from trainer.standin import make_digits_standin

                data_dir = make_digits_standin(os.path.join(tmp, "data")).dir
            lab = stack.enter_context(netns_lab(os.path.join(tmp, "lab"), count=lab_count,
                                                  host_cpu_share=args.host_cpu_share or None))
            stack.callback(slower.undo)  # before the lab goes: the slow cgroups' processes go back to the lab's
            stack.callback(lambda: [launch.stop() for launch in launches])  # first of all (callbacks run last in, first out)
            addresses = [h.address for h in lab.hosts]
            lab_hosts = {h.address: h for h in lab.hosts}
            steps = int(args.minutes * 60 * args.step_rate)
            stragglers = {"action": args.straggler_action, "window_steps": args.straggler_window}
            base = dict(trainer=args.trainer, ranks_per_host=rph, steps=steps, step_rate=args.step_rate,
                        ckpt_every=args.ckpt_every, compute_s=args.compute_s, work=args.work,
                        restarts=faults_planned + 1, keepalive=tuple(int(x) for x in args.keepalive.split(",")),
                        stragglers=stragglers, data_dir=data_dir, train_steps_per_epoch=args.train_steps)
            run_spec = RunSpec(name="chaos", hosts=addresses[:args.hosts], spares=addresses[args.hosts:per_run], **base)
            ref_spec = RunSpec(name="reference", hosts=addresses[per_run:per_run + args.hosts], spares=[], **base)
            ref_launch = None
            if args.reference == "side":
                ref_launch = Launch(cluster_file(os.path.join(tmp, "reference.yaml"), ref_spec, lab, tmp),
                                    os.path.join(tmp, "reference-job"), tmp)
                launches.append(ref_launch)
            launch = Launch(cluster_file(os.path.join(tmp, "chaos.yaml"), run_spec, lab, tmp),
                            os.path.join(tmp, "chaos-job"), tmp)
            launches.append(launch)
            first = wait_first_steps(launch, 900)
            report["first_step_after_launch_s"] = round(first - launch.started_at, 1)
            schedule = schedule_of(args, first)
            faults = run_faults(launch, args, lab_hosts, slower, schedule)
            code = wait_end(launch, args.minutes * 60 * 3 + 1200)
            result = read_json(os.path.join(launch.job, "result.json"))
            judge(faults, result, launch.watcher)
            report["faults"] = [{**asdict(f), "at_s": round(f.injected_at - first, 1)} for f in faults]
            report["run"] = summarize_run(run_spec, launch, code)
            if code != 0:
                report["run"]["console_tail"] = launch.console_tail()
            if args.reference == "after":
                ref_launch = Launch(cluster_file(os.path.join(tmp, "reference.yaml"), ref_spec, lab, tmp),
                                    os.path.join(tmp, "reference-job"), tmp)
                launches.append(ref_launch)
            if ref_launch is not None:
                ref_code = wait_end(ref_launch, args.minutes * 60 * 2 + 900)
                report["reference"] = summarize_run(ref_spec, ref_launch, ref_code)
                if ref_code != 0:
                    report["reference"]["console_tail"] = ref_launch.console_tail()
            got, ref = report["run"].get("weights"), (report.get("reference") or {}).get("weights")
            if builtin and got and ref:
                equal, worst = same_checkpoint(os.path.join(launch.job, "checkpoints", got),
                                               os.path.join(ref_launch.job, "checkpoints", ref)) \
                    if got == ref else (False, None)
                report["weights_equal"], report["weights_largest_difference"] = equal, worst
            elif not builtin and got:
                world = args.hosts * rph
                report["weights_expected"] = f"{weights_after(steps, world):016x}"
                report["weights_equal"] = (got == ref) if ref else None
                report["weights_equal_expected"] = got == report["weights_expected"]
            else:
                report["weights_equal"] = None
    finally:
        if not args.keep:
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
        else:
            report["tmp"] = tmp
    text = json.dumps(report, indent=1, default=str)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as handle:
            handle.write(text + "\n")
    if "run" in report:
        print_table(report)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
