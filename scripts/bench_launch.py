#!/usr/bin/env python3
"""Benchmark the launcher: seconds from starting ``mscluster launch`` to every rank's first step
and to the job's end, against MindSpore's own ``msrun`` on the same trainer; prints JSON.

Hardware this was written and first run on: 2 vCPUs (AMD EPYC), 24 GiB, no GPU/NPU; mindspore
2.10.0 CPU, Python 3.11. The machine must be otherwise idle: both launchers start a scheduler and
two MindSpore workers on 2 cores, so any other load shows up in every figure.

The job: 2 CPU ranks (MindSpore dynamic cluster) of a tiny ResNet-18 (CIFAR stem, width 8, 32x32,
batch 16, a few steps, evaluation and TensorBoard off) on a CIFAR-format stand-in
(``python -m trainer.standin``). Each rank prints ``... global_step=1 ...`` after its first step.
- ``local``: ``mscluster launch`` of a cluster file with ``hosts: [{address: localhost, devices: 2}]``;
  the first-step times are when the rank's line reaches the launcher's stdout.
- ``ssh``: the same through a private sshd on 127.0.0.2 (tests/sshd_util.py ``running_sshd``; needs
  root and openssh-server, else null with the reason).
- ``msrun``: ``msrun --worker_num 2 --local_worker_num 2 --join True --master_port P --log_dir D
  python -m mscluster_cli train --set ...`` (the trainer reads MS_ROLE etc., which msrun sets); the
  first-step times are when the line appears in D/worker_<rank>.log (polled every 20 ms).
Every figure counts from just before the launcher process is started; ``end`` is its exit. Modes
alternate within each repeat; the JSON gives every run and the medians. ``overhead`` = ours -
msrun on the medians (targets: <= +1 s locally, <= +2 s over SSH). Our launcher pins each rank
to a core (bind_cores: true, its default); msrun does not (its default; --bind-cores false
makes ours match).

Usage: .venv/bin/python scripts/bench_launch.py [--quick] [--repeats 3] [--only local,ssh,msrun]
The default run takes about 3-4 minutes here; --quick (one run of each, 2 steps) about a minute.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, Optional

import psutil
import yaml

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODES = ("msrun", "local", "ssh")
TARGET_OVERHEAD_S = {"local": 1.0, "ssh": 2.0}
RUN_TIMEOUT_S = 240
FIRST_STEP = re.compile(r"\bglobal_step=1\b")
FINAL = re.compile(r"^final rank=\d+ ", re.M)  # a rank's last line, after its final barrier
JOINED = re.compile(r"joined \w+ as rank \d+")  # trainer.distributed logs it once init() returns
PREFIXED = re.compile(r"^\[([^\]:]+):(\d+)\] (.*)$")
TINY_TRAIN = {"arch": "resnet18", "stem": "cifar", "width": 8, "image_size": 32, "batch_size": 16, "epochs": 1,
              "lr": 0.02, "log_every_steps": 1, "eval_every_epochs": 0, "tensorboard": False}
WORLD = 2


def _log(msg: str) -> None:
    print(f"[bench_launch {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_env() -> dict[str, str]:
    """The environment both launchers get: ours, with the venv's bin first (msrun runs ``python``)."""
    env = dict(os.environ)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    env["PYTHONPATH"] = REPO_ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def stop_tree(proc: subprocess.Popen) -> None:
    """Stop a launcher we started and everything under it, by pid (msrun's workers call setsid)."""
    try:
        procs = [psutil.Process(proc.pid)]
        procs += procs[0].children(recursive=True)
    except psutil.NoSuchProcess:
        return
    for p in procs:
        try:
            p.send_signal(signal.SIGINT if p.pid == proc.pid else signal.SIGTERM)
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=5)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass


def _outcome(ok: bool, exit_code: Optional[int], firsts: dict[int, float], end: float, tail: str,
             milestones: dict[str, float]) -> dict[str, Any]:
    row: dict[str, Any] = {"ok": ok and len(firsts) == WORLD, "exit_code": exit_code,
                           "milestones_s": {k: round(v, 2) for k, v in milestones.items()},
                           "first_step_s": {str(r): round(t, 2) for r, t in sorted(firsts.items())},
                           "all_ranks_first_step_s": round(max(firsts.values()), 2) if len(firsts) == WORLD else None,
                           "end_s": round(end, 2)}
    if not row["ok"]:
        row["output_tail"] = tail[-2500:]
    return row


def run_ours(cluster: str, job_dir: str, cwd: str, host_label: str) -> dict[str, Any]:
    """``mscluster launch --console all``; first steps from its streamed ``[host:rank]`` lines."""
    argv = [sys.executable, "-m", "mscluster_cli", "launch", cluster, "--job-dir", job_dir, "--console", "all"]
    firsts: dict[int, float] = {}
    milestones: dict[str, float] = {}
    lines: list[str] = []
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=cwd, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, bufsize=1, start_new_session=True)

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            now = time.perf_counter() - t0
            lines.append(line)
            m = PREFIXED.match(line.rstrip("\n"))
            if line.startswith("mscluster: job "):
                if "job_started_line" in milestones:
                    milestones.setdefault("result_line", now)  # "mscluster: job succeeded": ranks all done
                milestones.setdefault("job_started_line", now)  # job folder made, about to start agents
            if m and m.group(1) == host_label:
                milestones.setdefault("first_rank_output", now)
                if JOINED.search(m.group(3)):
                    milestones.setdefault("first_rank_joined", now)
                if FIRST_STEP.search(m.group(3)):
                    firsts.setdefault(int(m.group(2)), now)
                if FINAL.search(m.group(3)):
                    milestones["last_rank_final_line"] = now

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        code = proc.wait(timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        stop_tree(proc)
        code = None
    end = time.perf_counter() - t0
    reader.join(timeout=10)
    return _outcome(code == 0, code, firsts, end, "".join(lines), milestones)


def run_msrun(train: dict[str, Any], log_dir: str, cwd: str) -> dict[str, Any]:
    """``msrun ... --join True``; first steps from its worker log files, polled."""
    msrun = os.path.join(os.path.dirname(sys.executable), "msrun")
    launcher = [msrun] if os.access(msrun, os.X_OK) else [sys.executable, "-m", "mindspore.parallel.cluster.run"]
    sets = [f"{k}={json.dumps(v) if isinstance(v, bool) else v}" for k, v in train.items()]
    argv = [*launcher, "--worker_num", str(WORLD), "--local_worker_num", str(WORLD), "--join", "True",
            "--master_port", str(free_port()), "--log_dir", log_dir,
            "python", "-m", "mscluster_cli", "train", "--set", *sets]
    logs = {r: os.path.join(log_dir, f"worker_{r}.log") for r in range(WORLD)}
    firsts: dict[int, float] = {}
    milestones: dict[str, float] = {}
    out_path = log_dir + ".console"
    with open(out_path, "w", encoding="utf-8") as console:
        t0 = time.perf_counter()
        proc = subprocess.Popen(argv, cwd=cwd, env=child_env(), stdout=console, stderr=subprocess.STDOUT,
                                start_new_session=True)
        offsets = {r: 0 for r in logs}
        code: Optional[int] = None
        while True:
            now = time.perf_counter() - t0
            for r, path in logs.items():
                try:
                    with open(path, "rb") as handle:
                        handle.seek(offsets[r])
                        chunk = handle.read()
                except FileNotFoundError:
                    continue
                whole = chunk[:chunk.rfind(b"\n") + 1]  # complete lines only
                offsets[r] += len(whole)
                complete = whole.decode("utf-8", errors="replace")
                if complete.strip():
                    milestones.setdefault("first_rank_output", now)
                if JOINED.search(complete):
                    milestones.setdefault("first_rank_joined", now)
                if FIRST_STEP.search(complete):
                    firsts.setdefault(r, now)
                if FINAL.search(complete):
                    milestones["last_rank_final_line"] = now
            code = proc.poll()
            if code is not None:
                end = time.perf_counter() - t0
                break
            if now > RUN_TIMEOUT_S:
                stop_tree(proc)
                code, end = None, time.perf_counter() - t0
                break
            time.sleep(0.02)
    tail = open(out_path, encoding="utf-8", errors="replace").read()
    for r, path in logs.items():
        if os.path.exists(path):
            tail += f"\n--- {path}\n" + open(path, encoding="utf-8", errors="replace").read()[-1500:]
    return _outcome(code == 0, code, firsts, end, tail, milestones)


def write_cluster(path: str, workdir: str, train: dict[str, Any], host: str, bind_cores: bool,
                  ssh: Optional[dict[str, Any]] = None) -> str:
    cluster: dict[str, Any] = {"name": "bench", "backend": "cpu", "workdir": workdir, "python": sys.executable,
                               "hosts": [{"address": host, "devices": WORLD}], "bind_cores": bind_cores,
                               "train": train}
    if ssh:
        cluster["ssh"] = ssh
    with open(path, "w", encoding="utf-8") as handle:
        yaml.safe_dump(cluster, handle)
    return path


def median_of(rows: list[dict[str, Any]], key: str) -> Optional[float]:
    values = [r[key] for r in rows if r.get("ok") and r.get(key) is not None]
    return round(statistics.median(values), 2) if values else None


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one run of each mode, 2 steps")
    parser.add_argument("--repeats", type=int, default=0, help="runs per mode (default 3; 1 with --quick)")
    parser.add_argument("--steps", type=int, default=0, help="training steps per rank (default 5; 2 with --quick)")
    parser.add_argument("--only", default=",".join(MODES), help=f"comma-separated modes out of {','.join(MODES)}")
    parser.add_argument("--bind-cores", choices=("true", "false"), default="true",
                        help="our cluster file's bind_cores (default true, the launcher's default)")
    args = parser.parse_args(argv)
    modes = [m.strip() for m in args.only.split(",") if m.strip()]
    unknown = sorted(set(modes) - set(MODES))
    if unknown:
        parser.error(f"--only: unknown mode(s) {', '.join(unknown)}; choose from {', '.join(MODES)}")
    repeats = args.repeats or (1 if args.quick else 3)
    steps = args.steps or (2 if args.quick else 5)
    bind = args.bind_cores == "true"

    t_start = time.perf_counter()
    report: dict[str, Any] = {"bench": "launch", "quick": args.quick, "cores": os.cpu_count(),
                              "loadavg_start": [round(v, 2) for v in os.getloadavg()]}
    with tempfile.TemporaryDirectory(prefix="bench_launch_") as tmp:
        subprocess.run([sys.executable, "-m", "trainer.standin", os.path.join(tmp, "data")], cwd=REPO_ROOT,
                       env=child_env(), check=True, capture_output=True, timeout=300)
        data_dir = os.path.join(tmp, "data", "cifar-10-batches-bin")
        train = {**TINY_TRAIN, "steps_per_epoch": steps, "data_dir": data_dir}
        report["settings"] = {"world_size": WORLD, "repeats": repeats, "train": {**train, "data_dir": "<stand-in>"},
                              "ours_bind_cores": bind, "msrun_bind_core": False}
        runs: dict[str, list[dict[str, Any]]] = {m: [] for m in modes}
        clusters: dict[str, str] = {}
        if "local" in modes:
            clusters["local"] = write_cluster(os.path.join(tmp, "local.yaml"), os.path.join(tmp, "runs"), train,
                                              "localhost", bind)
        with _OptionalSSHD(tmp, modes, report) as server:
            if server is not None:
                ssh = {"user": server.user, "port": server.port, "key_file": server.key_file,
                       "connect_timeout": 10, "strict_host_keys": True, "known_hosts": server.known_hosts}
                clusters["ssh"] = write_cluster(os.path.join(tmp, "ssh.yaml"), os.path.join(tmp, "runs"), train,
                                                server.address, bind, ssh)
            for i in range(repeats):
                for mode in modes:
                    if mode == "msrun":
                        out_dir = os.path.join(tmp, f"msrun{i}")
                        row = run_msrun({**train, "output_dir": out_dir}, os.path.join(tmp, f"msrun{i}_logs"), tmp)
                    elif mode in clusters:
                        label = "localhost" if mode == "local" else server.address
                        row = run_ours(clusters[mode], os.path.join(tmp, "runs", f"{mode}{i}"), tmp, label)
                    else:
                        continue
                    runs[mode].append(row)
                    _log(f"{mode} run {i + 1}/{repeats}: {json.dumps({k: v for k, v in row.items() if k != 'output_tail'})}")
        report["runs"] = {m: (rs if rs or m != "ssh" else None) for m, rs in runs.items()}  # null: see ssh_unavailable
        medians = {m: {"all_ranks_first_step_s": median_of(rs, "all_ranks_first_step_s"), "end_s": median_of(rs, "end_s"),
                       "ok_runs": sum(1 for r in rs if r.get("ok")), "runs": len(rs)}
                   for m, rs in runs.items() if rs}
        report["median"] = medians
        overhead: dict[str, Any] = {}
        base = medians.get("msrun")
        for mode in ("local", "ssh"):
            ours = medians.get(mode)
            if not base or not ours or base["end_s"] is None or ours["end_s"] is None:
                overhead[mode] = None
                continue
            first = (None if ours["all_ranks_first_step_s"] is None or base["all_ranks_first_step_s"] is None
                     else round(ours["all_ranks_first_step_s"] - base["all_ranks_first_step_s"], 2))
            end = round(ours["end_s"] - base["end_s"], 2)
            target = TARGET_OVERHEAD_S[mode]
            overhead[mode] = {"first_step_s": first, "end_s": end, "target_s": target,
                              "meets_target": first is not None and first <= target and end <= target}
        report["overhead_vs_msrun"] = overhead
    report["loadavg_end"] = [round(v, 2) for v in os.getloadavg()]
    report["elapsed_s"] = round(time.perf_counter() - t_start, 1)
    print(json.dumps(report, indent=1))
    return 0


class _OptionalSSHD:
    """A private sshd on 127.0.0.2 when ``ssh`` is asked for and possible; else None and a reason."""

    def __init__(self, tmp: str, modes: list[str], report: dict[str, Any]):
        self.tmp, self.modes, self.report = tmp, modes, report
        self._cm = None

    def __enter__(self):
        if "ssh" not in self.modes:
            return None
        tests = os.path.join(REPO_ROOT, "tests")
        if tests not in sys.path:
            sys.path.insert(0, tests)
        try:
            import pytest  # sshd_util skips (or fails, under CI) through pytest when sshd is unavailable
            from sshd_util import running_sshd
        except ImportError as exc:
            self.report["ssh_unavailable"] = f"cannot import tests/sshd_util.py: {exc}"
            return None
        try:
            self._cm = running_sshd(os.path.join(self.tmp, "sshd"), address="127.0.0.2")
            return self._cm.__enter__()
        except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
            self.report["ssh_unavailable"] = f"{type(exc).__name__}: {exc}"
        except (pytest.skip.Exception, pytest.fail.Exception) as exc:  # BaseException subclasses
            self.report["ssh_unavailable"] = str(exc) or type(exc).__name__
        self._cm = None
        return None

    def __exit__(self, *exc_info):
        if self._cm is not None:
            return self._cm.__exit__(*exc_info)
        return False


if __name__ == "__main__":
    sys.exit(main())
