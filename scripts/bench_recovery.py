#!/usr/bin/env python3
"""How fast a failure is detected and the job is back: a killed rank, a frozen one, one stuck in Python.

Each case is a real 2-rank ``mscluster launch`` of the built-in trainer on this machine with
``restarts: 1`` and a checkpoint every few steps; the fault hits rank 1 (or rank 0 for the Python
hang) at a fixed step of attempt 0. From ``result.json`` (the launcher's own clock):

- ``detect_s``: from the fault to the teardown's start. A SIGKILL is seen at the exit; a stall
  counts from the rank's last step, so it is ``stall_timeout`` plus the stack capture.
- ``recover_s``: from the fault to the first step of the restarted attempt (back-off included).
- ``cold_first_step_s``: attempt 0's start to its first step; ``restart_over_cold`` compares the
  restarted attempt's own start-to-first-step with it (target: at most 0.5).

Every case runs with MindSpore's compile cache on (the default) and off (``env:
{MS_COMPILER_CACHE_ENABLE: "0"}``). ``lost_link`` (root only) runs on two network-namespace hosts
of the tests' own harness (``tests/netns_util.py``, real sshd), takes the second host's link down
at the fault step and brings it back once the keepalive window has passed, so the restart can
reach it; its detection counts from the link going down.

Three cases run ``examples/paced_steps.py`` (no model: 0.1 s steps, reported with
``mscluster.rank``) on 2 ranks with the **default** watchdog settings (``stall_timeout: auto``,
beats every 5 s), ``restarts: 0``, once each:

- ``frozen_default``: rank 1 SIGSTOPped at step 50; ``detect_s`` from the SIGSTOP to the teardown
  (target: at most 20 s; ``why`` must be ``frozen``).
- ``stuck_default``: rank 1 stuck in Python (a sleep; it still beats) after step 50;
  ``detect_s`` from its last step (target: at most 60 s).
- ``long_save_default``: rank 0 saves for 60 s (marked ``section("checkpoint")``) after step 30,
  then 100 more steps: the job must succeed (no stall).

Usage: .venv/bin/python scripts/bench_recovery.py [--arch resnet50] [--stall-timeout 15] [--cases ...]
Prints one JSON document, with the CPU model. About 10 minutes with the defaults; the three
default-settings cases alone (``--cases frozen_default,stuck_default,long_save_default``) about 3.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any, Optional

import yaml

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)
sys.path.insert(0, os.path.join(REPO_ROOT, "scripts"))

from benchlib import cpu_model  # noqa: E402

FAULT_STEP = 6


def _status_step(job: str, rank: int) -> int:
    try:
        with open(os.path.join(job, "status.json")) as handle:
            return json.load(handle)["processes"][f"rank{rank}"].get("global_step") or 0
    except (OSError, ValueError, KeyError):
        return 0


def _rank_pid(job: str, rank: int) -> Optional[int]:
    import psutil

    for proc in psutil.process_iter():
        try:
            env = proc.environ()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if env.get("MSCLUSTER_JOB_DIR") == os.path.abspath(job) and env.get("MS_ROLE") == "MS_WORKER" \
                and env.get("RANK_ID") == str(rank):
            return proc.pid
    return None


def run_case(tmp: str, data_dir: str, case: str, cache: bool, arch: str, stall: float, lab=None) -> dict[str, Any]:
    work = tempfile.mkdtemp(dir=tmp, prefix=f"{case}-{'cache' if cache else 'nocache'}-")
    train = {"arch": arch, "stem": "cifar", "width": 16 if arch == "resnet18" else 64, "image_size": 32,
             "batch_size": 16, "epochs": 1, "steps_per_epoch": 40, "save_every_steps": 4, "lr": 0.01,
             "log_every_steps": 1, "eval_every_epochs": 0, "tensorboard": False, "data_dir": data_dir}
    if case == "python_hang":
        train.update(debug_hang_step=FAULT_STEP, debug_hang_rank=0, debug_fail_attempt=0)
    env = {"MS_TOPO_TIMEOUT": "120"}
    if not cache:
        env["MS_COMPILER_CACHE_ENABLE"] = "0"
    cluster = {"name": "rec", "backend": "cpu", "hosts": [{"address": "localhost", "devices": 2}], "restarts": 1,
               "env": env, "train": train, "workdir": os.path.join(work, "runs"),
               "watchdog": {"stall_timeout": stall, "startup_timeout": 600, "beat_interval": 1}}
    if case == "lost_link":
        spec = lab.ssh_spec()
        cluster.update(hosts=[{"address": h.address, "devices": 1} for h in lab.hosts[:2]], python=sys.executable,
                       ssh={"user": spec.user, "port": spec.port, "key_file": spec.key_file, "connect_timeout": 5,
                            "known_hosts": spec.known_hosts, "keepalive_interval": 1, "keepalive_count": 3})
    path = os.path.join(work, "c.yaml")
    with open(path, "w") as handle:
        yaml.safe_dump(cluster, handle)
    job = os.path.join(work, "job")
    proc = subprocess.Popen([sys.executable, "-m", "mscluster_cli", "launch", path, "--job-dir", job, "-q"],
                            cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    fault_at = None
    try:
        victim = 0 if case == "python_hang" else 1
        deadline = time.monotonic() + 600
        while _status_step(job, victim) < FAULT_STEP and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        if case == "sigkill":
            os.kill(_rank_pid(job, 1), signal.SIGKILL)
        elif case == "sigstop":
            os.kill(_rank_pid(job, 1), signal.SIGSTOP)
        elif case == "lost_link":
            netns = lab.hosts[1].netns
            link = _ns_link(netns)
            subprocess.run(["ip", "-n", netns, "link", "set", link, "down"], check=True)
        fault_at = time.time()
        if case == "lost_link":  # back once the launcher has given the host up, so the restart reaches it
            time.sleep(3 + 1)
            subprocess.run(["ip", "-n", netns, "link", "set", link, "up"], check=True)
        proc.wait(timeout=900)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    with open(os.path.join(job, "result.json")) as handle:
        result = json.load(handle)
    first, second = result["attempts"][0], result["attempts"][-1]
    root = first.get("root_cause") or {}
    detected_at = (root.get("time") or 0.0) + (first.get("detect_s") or 0.0)
    cold = (first["first_step_at"] - first["started_at"]) if first.get("first_step_at") else None
    warm = (second["first_step_at"] - second["started_at"]) if second.get("first_step_at") else None
    return {"case": case, "compile_cache": cache, "status": result["status"], "root_cause": root.get("name"),
            "why": root.get("reason") or root.get("signal") or root.get("exit_code"),
            "detect_s": round(detected_at - fault_at, 2) if fault_at and root else None,
            "recover_s": round(second["first_step_at"] - fault_at, 2) if second.get("first_step_at") and fault_at else None,
            "cold_first_step_s": round(cold, 2) if cold else None,
            "restart_first_step_s": round(warm, 2) if warm else None,
            "restart_over_cold": round(warm / cold, 3) if cold and warm else None,
            "steps_lost": first.get("steps_lost"), "goodput": result.get("goodput")}


PACED = os.path.join(REPO_ROOT, "examples", "paced_steps.py")
PACED_CASES = ("frozen_default", "stuck_default", "long_save_default")
PACED_FAULT_STEP = 50


def run_paced_case(tmp: str, case: str) -> dict[str, Any]:
    """One default-settings case of a paced program (see the module's docstring)."""
    work = tempfile.mkdtemp(dir=tmp, prefix=f"{case}-")
    argv = ["python", PACED, "--step-s", "0.1"]
    if case == "stuck_default":
        argv += ["--steps", "100000", "--hang-rank", "1", "--hang-at", str(PACED_FAULT_STEP + 1)]
    elif case == "long_save_default":
        argv += ["--steps", "130", "--save-at", "30", "--save-s", "60"]
    else:
        argv += ["--steps", "100000"]
    # ascend from a rank table: no scheduler waiting for a MindSpore that this program never starts
    cluster = {"name": "paced", "backend": "ascend", "ascend": {"init": "ranktable"}, "python": sys.executable,
               "workdir": os.path.join(work, "runs"), "command": argv,
               "hosts": [{"address": "localhost", "devices": 2, "device_ips": {0: "10.9.0.1", 1: "10.9.0.2"}}]}
    path = os.path.join(work, "c.yaml")
    with open(path, "w") as handle:
        yaml.safe_dump(cluster, handle)
    job = os.path.join(work, "job")
    t0 = time.time()
    proc = subprocess.Popen([sys.executable, "-m", "mscluster_cli", "launch", path, "--skip-preflight",
                             "--job-dir", job, "-q"], cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    fault_at = None
    try:
        if case == "frozen_default":
            deadline = time.monotonic() + 120
            while _status_step(job, 1) < PACED_FAULT_STEP and time.monotonic() < deadline and proc.poll() is None:
                time.sleep(0.02)
            with open(os.path.join(job, "status.json")) as handle:
                os.kill(json.load(handle)["processes"]["rank1"]["pid"], signal.SIGSTOP)
            fault_at = time.time()
        proc.wait(timeout=400)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    with open(os.path.join(job, "result.json")) as handle:
        result = json.load(handle)
    first = result["attempts"][0]
    root = first.get("root_cause") or {}
    detected_at = (root.get("time") or 0.0) + (first.get("detect_s") or 0.0)
    if case == "stuck_default":
        fault_at = root.get("time")  # its last step: the hang began there
    return {"case": case, "status": result["status"], "root_cause": root.get("name"), "why": root.get("reason"),
            "message": root.get("message"), "detect_s": round(detected_at - fault_at, 2) if fault_at and root else None,
            "job_s": round(time.time() - t0, 1)}


def _ns_link(netns: str) -> str:
    out = subprocess.run(["ip", "-n", netns, "-o", "link", "show"], capture_output=True, text=True, check=True).stdout
    return next(line.split(":")[1].strip().split("@")[0] for line in out.splitlines()
                if line.split(":")[1].strip() != "lo")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnet18", choices=("resnet18", "resnet50"))
    parser.add_argument("--stall-timeout", type=float, default=15.0)
    parser.add_argument("--cases", default="sigkill,sigstop,python_hang,lost_link," + ",".join(PACED_CASES),
                        help="lost_link needs root (network namespaces)")
    args = parser.parse_args()
    from trainer.standin import make_digits_standin

    out: dict[str, Any] = {"cpu": cpu_model(), "cpus": os.cpu_count(), "arch": args.arch,
                           "stall_timeout": args.stall_timeout, "results": []}
    import contextlib

    cases = args.cases.split(",")
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        data_dir = make_digits_standin(os.path.join(tmp, "data")).dir if set(cases) - set(PACED_CASES) else ""
        lab = None
        if "lost_link" in cases:
            sys.path.insert(0, os.path.join(REPO_ROOT, "tests"))
            from netns_util import netns_lab  # the tests' harness: namespaces, bridge, one sshd each

            lab = stack.enter_context(netns_lab(os.path.join(tmp, "lab"), count=2))
        for case in cases:
            if case in PACED_CASES:
                out["results"].append(run_paced_case(tmp, case))
                print(json.dumps(out["results"][-1]), file=sys.stderr, flush=True)
                continue
            for cache in (True, False):
                out["results"].append(run_case(tmp, data_dir, case, cache, args.arch, args.stall_timeout, lab))
                print(json.dumps(out["results"][-1]), file=sys.stderr, flush=True)
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
