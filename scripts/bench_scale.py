#!/usr/bin/env python3
"""How the launcher's time, CPU and memory grow with the fleet: N SSH hosts x 8 ranks, N up to 64.

The hosts are network namespaces on one bridge, each with its own sshd, address and host key (the
tests' harness, ``tests/netns_util.py``), checked strictly against the known_hosts it writes. The
ranks are ``tests/fleet_rank.py`` through ``command:`` (``mscluster.rank``, no MindSpore), under
``backend: ascend`` with the device IPs in the file (no scheduler process: the launcher's own cost
is what is measured). For each N, three real ``mscluster launch`` runs:

- ``start``: every rank reports a step 10 times a second for 3 s. From ``result.json`` (the
  launcher's clock): ``preflight_s`` (every host checked, in parallel), ``started_s`` (the
  attempt's start until every rank had started), ``first_progress_s`` (until every rank's first
  progress event); ``launch_to_progress_s`` is the whole command until then (the bench's clock).
  The launcher's CPU seconds come from ``wait4``; its peak RSS and thread count from /proc;
  ``others_cpu_s``: the CPU seconds the rest of the machine (the hosts: sshd, login shells,
  agents, ranks) burned during the run, from /proc/stat.
- ``logs``: every rank prints ``--lines-per-s`` lines a second. The bench follows
  ``logs/all.log`` and measures, per line, the time from the rank's write (stamped in the line)
  to the line being readable there: p50 and p99 over the ``--log-seconds`` after every rank has
  reported a step (all print at once then). ``falls_behind``: the lag in the last quarter of that
  window is over 1 s and over twice the first quarter's, or lines are missing.
- ``teardown``: the last host's first rank raises once every rank runs. ``teardown_s``: from its
  failure (its error file's time) until every rank on every host has ended (their pids, polled).

Also, on the same hosts: ``pdsh -R ssh -f 1024 -w <hosts> true`` (DeepSpeed's fan-out, with
OpenSSH's client) and the launcher's own executor running ``true`` on every host
(``fanout_true_s``); and ``plan`` and ``ranktable`` of a 128 x 8 Ascend cluster file.
``growth_8_to_64`` divides each figure at N=64 by its figure at N=8.

Every host shares this machine's cores, which a real fleet's hosts do not: 512 ranks starting at
once would leave the launcher a 600th of the CPU. So the hosts' sshd (and with it their agents
and ranks) run in a CPU cgroup with 1% of the weight (``--host-cpu-share``): they get whatever
CPU the launcher leaves idle, and the launcher what it asks for, as on its own machine. What the
hosts do still takes wall time here (512 Python ranks starting is ~30 CPU seconds on these
cores), so the seconds for N=64 include the hosts' own work done 8 times over on the same 2 cores;
``launcher_cpu_s`` is the launcher's alone.

Usage (root: namespaces and sshd): .venv/bin/python scripts/bench_scale.py [--hosts 1,2,4,8,16,32,64]
Prints one JSON document, with the CPU model. About 10 minutes with the defaults.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, Optional

import yaml

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)
sys.path.insert(0, os.path.join(REPO_ROOT, "tests"))
sys.path.insert(0, os.path.join(REPO_ROOT, "scripts"))

from benchlib import cpu_model  # noqa: E402
from fleet_rank import LINE_STAMP  # noqa: E402
from fleet_util import RANKS_PER_HOST, fleet_cluster  # noqa: E402


def cluster_file(path: str, hosts: list[str], lab, workdir: str, fleet_args: Optional[list[str]] = None) -> str:
    """The tests' fleet job (``tests/fleet_util.py``), with 60 s before a silent host is lost (not
    15): starting 512 ranks on these 2 cores starves the hosts' agents longer than a real host's."""
    ssh = None
    if lab is not None:
        spec = lab.ssh_spec()
        ssh = {"user": spec.user, "port": spec.port, "key_file": spec.key_file, "connect_timeout": 20,
               "known_hosts": spec.known_hosts, "keepalive_interval": 5, "keepalive_count": 12}
    return fleet_cluster(path, hosts, None, workdir, fleet_args=fleet_args, **({"ssh": ssh} if ssh else {}))


class LauncherRun:
    """One ``mscluster launch`` in the background: its rusage, peak threads, and when it ended."""

    def __init__(self, cluster: str, job_dir: str, cwd: str):
        argv = [sys.executable, "-m", "mscluster_cli", "launch", cluster, "--job-dir", job_dir, "--console", "0",
                "--skip-preflight"]  # the stand-in hosts have no NPU tools
        self.started = time.monotonic()
        self.proc = subprocess.Popen(argv, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     start_new_session=True)
        self.peak_threads = 0
        self.peak_vmrss_kb = 0
        self.cpu_samples: list[tuple[float, float]] = []  # (wall time, the launcher's CPU seconds)
        self.rusage: Any = None
        self.code: Optional[int] = None
        self._watch = threading.Thread(target=self._sample, daemon=True)
        self._watch.start()

    def _sample(self) -> None:
        tick = os.sysconf("SC_CLK_TCK")
        while self.code is None:
            with contextlib.suppress(OSError, ValueError, IndexError):
                with open(f"/proc/{self.proc.pid}/status") as handle:
                    for line in handle:
                        if line.startswith("Threads:"):
                            self.peak_threads = max(self.peak_threads, int(line.split()[1]))
                        elif line.startswith("VmRSS:"):
                            self.peak_vmrss_kb = max(self.peak_vmrss_kb, int(line.split()[1]))
                with open(f"/proc/{self.proc.pid}/stat") as handle:
                    fields = handle.read().rsplit(")", 1)[1].split()
                self.cpu_samples.append((time.time(), (int(fields[11]) + int(fields[12])) / tick))
            time.sleep(0.1)

    def cpu_share(self, start: float, end: float) -> Optional[float]:
        """The launcher's CPU seconds per second between two wall times (1.0 = one core all the time)."""
        inside = [(t, c) for t, c in self.cpu_samples if start <= t <= end]
        if len(inside) < 2 or inside[-1][0] <= inside[0][0]:
            return None
        return round((inside[-1][1] - inside[0][1]) / (inside[-1][0] - inside[0][0]), 3)

    def wait(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while True:
            pid, status, usage = os.wait4(self.proc.pid, os.WNOHANG)
            if pid:
                self.rusage, self.code = usage, os.waitstatus_to_exitcode(status)
                self.proc.returncode = self.code
                return self.code
            if time.monotonic() > deadline:
                os.killpg(self.proc.pid, signal.SIGKILL)
                raise RuntimeError(f"the launch did not end within {timeout:g} s")
            time.sleep(0.02)

    def figures(self) -> dict[str, Any]:
        return {"launcher_cpu_s": round(self.rusage.ru_utime + self.rusage.ru_stime, 2),
                # sampled every 0.1 s: wait4's ru_maxrss counts the bench's own image between fork and
                # exec (255 MB after the log run at 64 hosts had filled the bench with 1.3 M samples)
                "launcher_peak_rss_mb": round(self.peak_vmrss_kb / 1024, 1),
                "launcher_peak_threads": self.peak_threads}

    def stderr_tail(self) -> str:
        return (self.proc.stderr.read() if self.proc.stderr else b"").decode("utf-8", "replace")[-2000:]

    def why(self, job_dir: str) -> str:
        """The root cause from result.json, else the end of the launcher's stderr."""
        try:
            root = _result(job_dir)["failures"][0]
            return f"{root.get('name')} on {root.get('host')}: {root.get('message')} {root.get('traceback_tail')}"
        except (OSError, ValueError, KeyError, IndexError):
            return self.stderr_tail()


def _result(job_dir: str) -> dict[str, Any]:
    with open(os.path.join(job_dir, "result.json"), encoding="utf-8") as handle:
        return json.load(handle)


def _status(job_dir: str) -> dict[str, Any]:
    try:
        with open(os.path.join(job_dir, "status.json"), encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return {}


def machine_cpu_s() -> float:
    """CPU seconds every core of this machine has been busy since boot (/proc/stat)."""
    with open("/proc/stat", encoding="ascii") as handle:
        fields = [int(x) for x in handle.readline().split()[1:8]]
    user, nice, system, _idle, _iowait, irq, softirq = fields
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def run_start(tmp: str, lab, n: int) -> dict[str, Any]:
    hosts = [h.address for h in lab.hosts[:n]]
    job = os.path.join(tmp, f"start-{n}")
    cluster = cluster_file(os.path.join(tmp, f"start-{n}.yaml"), hosts, lab, tmp,
                           fleet_args=["--steps", "30", "--step-rate", "10"])
    busy = machine_cpu_s()
    run = LauncherRun(cluster, job, tmp)
    code = run.wait(600)
    wall = time.monotonic() - run.started
    busy = machine_cpu_s() - busy
    if code != 0:
        raise RuntimeError(f"N={n}: the start run failed ({code}): {run.why(job)}")
    result = _result(job)
    attempt = result["attempts"][0]
    return {"preflight_s": result["preflight_s"], "started_s": attempt["started_s"],
            "first_progress_s": attempt["first_progress_s"],
            "launch_to_progress_s": round(attempt["first_progress_s"] + attempt["started_at"] - _launch_t0(run), 2),
            "wall_s": round(wall, 2), **run.figures(),
            # what the hosts (sshd, login shells, agents, ranks) and everything else burned meanwhile:
            # on 2 shared cores, the least wall time their work can take is this over the cores
            "others_cpu_s": round(busy - run.figures()["launcher_cpu_s"], 2)}


def _launch_t0(run: LauncherRun) -> float:
    """The wall time the launch command was started (its monotonic start mapped to the wall clock)."""
    return time.time() - (time.monotonic() - run.started)


class LogFollower:
    """Reads a growing ``all.log`` every 10 ms; the lag of each stamped line when it became readable."""

    def __init__(self, path: str):
        self.path, self.lags, self.lines = path, [], 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._follow, daemon=True)
        self._thread.start()

    def _follow(self) -> None:
        handle = None
        partial = ""
        while True:
            stopping = self._stop.is_set()
            if handle is None:
                with contextlib.suppress(OSError):
                    handle = open(self.path, encoding="utf-8", errors="replace")
            if handle is not None:
                data = handle.read()
                now = time.time()
                if data:
                    *lines, partial = (partial + data).split("\n")
                    for line in lines:
                        at = line.rfind(LINE_STAMP)
                        if at < 0:
                            continue
                        with contextlib.suppress(ValueError):
                            self.lags.append((float(line[at + len(LINE_STAMP):]), now))
                            self.lines += 1
            if stopping:
                return
            time.sleep(0.01)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def _quantile(values: list[float], q: float) -> Optional[float]:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(int(q * len(ordered)), len(ordered) - 1)]


def run_logs(tmp: str, lab, n: int, lines_per_s: float, seconds: float, warmup: float) -> dict[str, Any]:
    """Every rank prints for ``warmup`` (the start run's seconds to every rank's first step, x1.5)
    plus ``seconds``; the lag counts the lines written once every rank had reported a step, when
    all of them print at once (while ranks start, 512 of them on 2 cores, the hosts have no CPU
    to spare: ``lag_during_start_p99_s`` shows that part)."""
    hosts = [h.address for h in lab.hosts[:n]]
    job = os.path.join(tmp, f"logs-{n}")
    rate = 10.0
    cluster = cluster_file(os.path.join(tmp, f"logs-{n}.yaml"), hosts, lab, tmp,
                           fleet_args=["--steps", str(int((1.5 * warmup + seconds) * rate)), "--step-rate", str(rate),
                                       "--lines-per-s", str(lines_per_s)])
    follower = LogFollower(os.path.join(job, "logs", "all.log"))
    run = LauncherRun(cluster, job, tmp)
    code = run.wait(900)
    follower.stop()
    if code != 0:
        raise RuntimeError(f"N={n}: the log run failed ({code}): {run.why(job)}")
    attempt = _result(job)["attempts"][0]
    steady_from = attempt["started_at"] + attempt["first_progress_s"]
    steady_to = steady_from + seconds
    stamped = sorted(follower.lags)
    lags = [seen - wrote for wrote, seen in stamped if steady_from <= wrote <= steady_to]
    early = [seen - wrote for wrote, seen in stamped if wrote < steady_from]
    quarter = max(len(lags) // 4, 1)
    first, last = _quantile(lags[:quarter], 0.5) or 0.0, _quantile(lags[-quarter:], 0.5) or 0.0
    expected = n * RANKS_PER_HOST * lines_per_s * seconds
    return {"lines_per_s": n * RANKS_PER_HOST * lines_per_s, "steady_lines": len(lags),
            "steady_lines_expected": int(expected), "lines": follower.lines,
            "lag_p50_s": round(_quantile(lags, 0.5) or 0.0, 3), "lag_p99_s": round(_quantile(lags, 0.99) or 0.0, 3),
            "lag_max_s": round(max(lags, default=0.0), 3),
            "lag_first_quarter_p50_s": round(first, 3), "lag_last_quarter_p50_s": round(last, 3),
            "lag_during_start_p99_s": round(_quantile(early, 0.99) or 0.0, 3),
            "steady_lines_per_s": round(len(lags) / seconds), "launcher_cpu_share": run.cpu_share(steady_from, steady_to),
            "falls_behind": (last > 1.0 and last > 2 * first) or len(lags) < expected * 0.95,
            **run.figures()}


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def run_teardown(tmp: str, lab, n: int, warmup: float) -> dict[str, Any]:
    """The last host's first rank fails once every rank runs (``warmup`` x 1.5 + 2 s after its start)."""
    hosts = [h.address for h in lab.hosts[:n]]
    job = os.path.join(tmp, f"teardown-{n}")
    fail_rank = (n - 1) * RANKS_PER_HOST  # the last host's first rank
    rate = 2.0
    cluster = cluster_file(os.path.join(tmp, f"teardown-{n}.yaml"), hosts, lab, tmp,
                           fleet_args=["--steps", "100000", "--step-rate", str(rate), "--fail-step",
                                       str(int((1.5 * warmup + 2) * rate)), "--fail-rank", str(fail_rank)])
    run = LauncherRun(cluster, job, tmp)
    pids: list[int] = []
    deadline = time.monotonic() + 300
    while not pids and time.monotonic() < deadline and run.proc.poll() is None:
        procs = _status(job).get("processes", {})
        if procs and all(p.get("pid") for p in procs.values()):
            pids = [p["pid"] for p in procs.values()]
        else:
            time.sleep(0.05)
    last_alive = time.time()
    while pids:
        pids = [p for p in pids if _alive(p)]
        if pids:
            last_alive = time.time()
            time.sleep(0.01)
    stopped_at = last_alive
    code = run.wait(120)
    if code == 0:
        raise RuntimeError(f"N={n}: the teardown run succeeded; the failure was not injected")
    with open(os.path.join(job, "errors", f"rank{fail_rank}.attempt0.json"), encoding="utf-8") as handle:
        failed_at = float(json.load(handle)["timestamp"])
    root = _result(job)["failures"][0]
    return {"teardown_s": round(stopped_at - failed_at, 3), "detect_s": _result(job)["attempts"][0]["detect_s"],
            "root_cause_rank": root.get("rank"), **run.figures()}


def fanout_true(lab, n: int) -> dict[str, Any]:
    """pdsh over OpenSSH and the launcher's own executors, each running ``true`` on every host."""
    from launcher.executor import SSHExecutor
    from launcher.launch import _in_parallel

    hosts = [h.address for h in lab.hosts[:n]]
    spec = lab.ssh_spec()
    out: dict[str, Any] = {}
    began = time.monotonic()

    def one(address: str) -> None:
        ex = SSHExecutor(address, spec)
        try:
            if ex.run(["true"], timeout=60).exit_code != 0:
                raise RuntimeError(f"{address}: true failed")
        finally:
            ex.close()

    _in_parallel(one, hosts)
    out["fanout_true_s"] = round(time.monotonic() - began, 3)
    pdsh = shutil.which("pdsh")
    if pdsh is None:
        out["pdsh_true_s"] = None
        out["pdsh"] = "not installed (scripts/ci_system_deps.sh installs it)"
        return out
    ssh_args = (f"-F /dev/null -p {spec.port} -i {spec.key_file} -o BatchMode=yes -o StrictHostKeyChecking=yes "
                f"-o UserKnownHostsFile={spec.known_hosts} -o ConnectTimeout=20 -l%u %h")
    env = {**os.environ, "PDSH_SSH_ARGS": ssh_args, "PDSH_RCMD_TYPE": "ssh"}
    began = time.monotonic()
    done = subprocess.run([pdsh, "-S", "-f", "1024", "-w", ",".join(hosts), "true"], env=env, capture_output=True,
                          text=True, timeout=300)
    out["pdsh_true_s"] = round(time.monotonic() - began, 3)
    if done.returncode != 0:
        out["pdsh"] = f"exit {done.returncode}: {done.stderr.strip()[-300:]}"
    return out


def plan_and_ranktable(tmp: str, servers: int = 128) -> dict[str, Any]:
    """``mscluster plan`` and ``mscluster ranktable`` of a servers x 8 Ascend file (median of 3, wall)."""
    hosts = [f"10.{1 + i // 250}.{i % 250}.1" for i in range(servers)]
    cluster = cluster_file(os.path.join(tmp, f"ascend-{servers}x8.yaml"), hosts, None, tmp)
    with open(cluster, encoding="utf-8") as handle:
        data = yaml.safe_load(handle)
    data["train"] = {"data_dir": tmp}
    with open(cluster, "w", encoding="utf-8") as handle:
        yaml.safe_dump(data, handle)
    out: dict[str, Any] = {}
    for name, argv in (("plan_s", ["plan", cluster]),
                       ("ranktable_s", ["ranktable", cluster, "-o", os.path.join(tmp, "table.json")])):
        times = []
        for _ in range(3):
            began = time.monotonic()
            done = subprocess.run([sys.executable, "-m", "mscluster_cli", *argv], capture_output=True, text=True,
                                  timeout=300, cwd=tmp)
            times.append(time.monotonic() - began)
            if done.returncode != 0:
                raise RuntimeError(f"mscluster {argv[0]} of {servers}x8: {done.stderr.strip()[-500:]}")
        out[name] = round(statistics.median(times), 3)
    with open(os.path.join(tmp, "table.json"), encoding="utf-8") as handle:
        table = json.load(handle)
    out["ranktable_devices"] = sum(len(s["device"]) for s in table["server_list"])
    return out


GROWTH_KEYS = ("preflight_s", "started_s", "first_progress_s", "launch_to_progress_s", "launcher_cpu_s", "others_cpu_s",
               "launcher_peak_rss_mb", "launcher_peak_threads", "lag_p50_s", "lag_p99_s", "teardown_s",
               "fanout_true_s", "pdsh_true_s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", default="1,2,4,8,16,32,64", help="comma-separated host counts")
    parser.add_argument("--lines-per-s", type=float, default=50.0, help="log lines per second per rank")
    parser.add_argument("--log-seconds", type=float, default=10.0)
    parser.add_argument("--only", default="logs,teardown,fanout", help="which runs besides start")
    parser.add_argument("--host-cpu-share", type=float, default=0.01,
                        help="the hosts' CPU weight against the launcher's (cgroup); 0 = no cgroup")
    args = parser.parse_args()
    counts = [int(x) for x in args.hosts.split(",")]
    only = set(args.only.split(","))
    from netns_util import netns_lab

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # the lab's teardown runs on TERM too
    out: dict[str, Any] = {"cpu": cpu_model(), "cpus": os.cpu_count(), "ranks_per_host": RANKS_PER_HOST,
                           "lines_per_s_per_rank": args.lines_per_s, "host_cpu_share": args.host_cpu_share,
                           "runs": {}}
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        out["ascend_128x8"] = plan_and_ranktable(tmp)
        began = time.monotonic()
        share = args.host_cpu_share or None
        with netns_lab(os.path.join(tmp, "lab"), count=max(counts), host_cpu_share=share) as lab:
            out["lab_up_s"] = round(time.monotonic() - began, 2)
            for n in counts:
                row: dict[str, Any] = {"hosts": n, "ranks": n * RANKS_PER_HOST}
                if "fanout" in only:
                    row.update(fanout_true(lab, n))
                row["start"] = run_start(tmp, lab, n)
                warmup = row["start"]["first_progress_s"]
                if "logs" in only:
                    row["logs"] = run_logs(tmp, lab, n, args.lines_per_s, args.log_seconds, warmup)
                if "teardown" in only:
                    row["teardown"] = run_teardown(tmp, lab, n, warmup)
                out["runs"][str(n)] = row
                print(json.dumps(row), file=sys.stderr, flush=True)
    out["growth_8_to_64"] = growth(out["runs"])
    print(json.dumps(out, indent=2))
    return 0


def _flat(row: dict[str, Any]) -> dict[str, Any]:
    flat = {k: v for k, v in row.items() if not isinstance(v, dict)}
    for part in ("start", "logs", "teardown"):
        for k, v in row.get(part, {}).items():
            flat.setdefault(k if part == "start" or k not in flat else f"{part}_{k}", v)
            if part != "start" and k.startswith("launcher_"):
                flat[f"{part}_{k}"] = v
    return flat


def growth(runs: dict[str, Any]) -> dict[str, Optional[float]]:
    if "8" not in runs or "64" not in runs:
        return {}
    a, b = _flat(runs["8"]), _flat(runs["64"])
    return {k: round(b[k] / a[k], 2) if isinstance(a.get(k), (int, float)) and a.get(k) and
            isinstance(b.get(k), (int, float)) else None for k in GROWTH_KEYS}


if __name__ == "__main__":
    sys.exit(main())
