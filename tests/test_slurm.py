"""``scheduler: slurm`` against a real Slurm: slurmctld here, a slurmd in each of three namespaces.

Every job here is the built-in trainer on real MindSpore (CPU, dynamic cluster), one rank per node:
inside ``salloc -N2``, through ``mscluster submit`` (sbatch), with a rank SIGKILLed, and preempted
by USR1 to the batch script then requeued. Root, slurm-wlm and munge are needed (skip, or fail
under CI, without them): ``scripts/ci_system_deps.sh`` installs them.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
import yaml

from helpers import TINY_TRAIN, final_digests, only_job_dir, rank_step, wait_for
from netns_util import netns_pids
from slurm_util import SlurmLab

pytestmark = [pytest.mark.integration, pytest.mark.netns]

MSCLUSTER = [sys.executable, "-m", "mscluster_cli"]


def slurm_file(path, cifar_dir: str, train: dict = {}, slurm: dict = {}, **fields) -> str:
    data = {"name": "sl", "backend": "cpu", "scheduler": "slurm", "workdir": str(path.parent / "runs"),
            "python": sys.executable, "env": {"MS_TOPO_TIMEOUT": "120"}, "console": "all",
            "slurm": {"nodes": 2, "devices_per_host": 1, **slurm},
            "train": {**TINY_TRAIN, "data_dir": cifar_dir, "steps_per_epoch": 4, "width": 4, "batch_size": 8, **train}}
    data.update(fields)
    path.write_text(yaml.safe_dump(data))
    return str(path)


def salloc(lab: SlurmLab, nodes: int, *argv: str, cwd, timeout: float = 400) -> subprocess.CompletedProcess:
    return subprocess.run(["salloc", f"-N{nodes}", "--quiet", *argv], cwd=str(cwd), env=lab.env, capture_output=True,
                          text=True, timeout=timeout)


def leftovers(lab: SlurmLab) -> dict[str, list[str]]:
    """What runs in each node's namespace besides slurmd (and the test's sshd)."""
    import psutil

    left = {}
    for node, host in zip(lab.nodes, lab.lab.hosts):
        names = []
        for pid in netns_pids(host.netns):
            try:
                name = psutil.Process(pid).name()
            except psutil.NoSuchProcess:
                continue
            if name not in ("slurmd", "sshd"):
                names.append(f"{pid}:{name}")
        if names:
            left[node] = names
    return left


def nothing_left(lab: SlurmLab) -> bool:
    """No process of the job on any node and no step in Slurm's queue (slurmstepd takes a moment to go)."""
    left: dict = {}

    def clean() -> bool:
        nonlocal left
        left = leftovers(lab)
        return left == {} and no_steps_left(lab)

    try:
        wait_for(clean, 20, interval=0.5, what="the nodes to be clean")
    except AssertionError:
        raise AssertionError(f"left on the nodes: {left}; steps: {lab.run('squeue', '-h', '-s', check=False).stdout}")
    return True


def no_steps_left(lab: SlurmLab) -> bool:
    return lab.run("squeue", "-h", "-s", check=False).stdout.strip() == ""


def wait_job_gone(lab: SlurmLab, job_id: str, timeout: float) -> str:
    """Until Slurm's queue no longer lists the job; its final state."""
    wait_for(lambda: lab.run("squeue", "-h", "-j", job_id, check=False).stdout.strip() == "", timeout,
             interval=1.0, what=f"Slurm job {job_id} to leave the queue")
    return lab.job_state(job_id)


@pytest.mark.mindspore
def test_launch_in_a_two_node_allocation_ends_with_one_set_of_weights(slurm_cluster, tmp_path, cifar_dir):
    cluster = slurm_file(tmp_path / "c.yaml", cifar_dir)
    proc = salloc(slurm_cluster, 2, *MSCLUSTER, "launch", cluster, cwd=tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-5000:]
    assert re.search(r"Slurm job \d+: n1 \(10\.[\d.]+\), n2 \(10\.[\d.]+\)", out), out[-3000:]
    job = only_job_dir(str(tmp_path / "runs"))
    digests = final_digests(job)
    addresses = [slurm_cluster.address(n) for n in ("n1", "n2")]  # salloc -N2 of the lab's 3 nodes
    assert sorted(digests) == sorted(f"{a}:{r}" for r, a in enumerate(addresses)), digests  # rank r on node r
    assert len(set(digests.values())) == 1, digests
    assert nothing_left(slurm_cluster)
    saved = open(os.path.join(job, "cluster.yaml")).read()
    assert "scheduler: slurm" in saved and "\nhosts:" not in saved and "allocation: n1" in saved


@pytest.mark.mindspore
def test_sigkill_of_rank_1_stops_both_nodes_and_names_it(slurm_cluster, tmp_path, cifar_dir):
    cluster = slurm_file(tmp_path / "c.yaml", cifar_dir, train={"steps_per_epoch": 30, "debug_fail_step": 2,
                                                                 "debug_fail_rank": 1, "debug_fail_signal": 9})
    proc = salloc(slurm_cluster, 2, *MSCLUSTER, "launch", cluster, cwd=tmp_path)
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    root = next(line for line in proc.stderr.splitlines() if "root cause" in line and "SIG" in line)
    assert slurm_cluster.address("n2") in root and " 1 " in root and "SIGKILL" in root, proc.stderr[-3000:]
    job = only_job_dir(str(tmp_path / "runs"))
    result = json.load(open(os.path.join(job, "result.json")))
    assert result["status"] == "failed" and result["attempts"][0]["root_cause"]["rank"] == 1
    assert nothing_left(slurm_cluster)


@pytest.mark.mindspore
def test_usr1_saves_a_checkpoint_requeues_and_the_next_run_completes(slurm_cluster, tmp_path, cifar_dir):
    steps = 40  # rank 0 is at step 3 when USR1 comes: the rest leaves the signal seconds to arrive
    cluster = slurm_file(tmp_path / "c.yaml", cifar_dir, train={"steps_per_epoch": steps},
                         slurm={"requeue": True, "time": "20"})
    job = tmp_path / "job"
    proc = subprocess.run([*MSCLUSTER, "submit", cluster, "--job-dir", str(job)], cwd=str(tmp_path),
                          env=slurm_cluster.env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    job_id = re.search(r"submitted Slurm job (\d+)", proc.stdout).group(1)
    script = (job / "sbatch.sh").read_text()
    assert "#SBATCH --nodes=2" in script and "#SBATCH --time=20" in script and "#SBATCH --signal=B:USR1@120" in script
    assert "#SBATCH --requeue" in script, script

    def step0() -> int:
        try:
            return json.load(open(job / "status.json"))["processes"]["rank0"].get("global_step") or 0
        except (OSError, ValueError, KeyError):
            return 0

    wait_for(lambda: step0() >= 3, 300, what="rank 0 at step 3")
    slurm_cluster.run("scancel", "--signal=USR1", "--batch", job_id)  # what --signal=B:USR1@s sends
    wait_for(lambda: (job / "result.json").exists() and json.load(open(job / "result.json"))["status"] == "preempted",
             120, what="the first run to end preempted")
    preempted_at = json.load(open(job / "result.json"))
    assert preempted_at["exit_code"] == 75, preempted_at
    saved = [p for p in os.listdir(job / "checkpoints") if p.endswith(".ckpt")]
    assert saved, "no checkpoint written on USR1"
    # the requeued job waits cred_expire (10 s in the test cluster, Slurm's default 120 s) before it runs again
    assert wait_job_gone(slurm_cluster, job_id, 400) == "COMPLETED"
    result = json.load(open(job / "result.json"))
    assert result["status"] == "succeeded", result
    log = "".join(p.read_text() for p in (job / "logs").glob("slurm-*.out"))
    assert "preempted: saved" in log and "requeueing Slurm job" in log, log[-3000:]
    resumed = re.search(r"resumed from \S+ epoch=0 step=(\d+)", (job / "logs" / "rank_0.log").read_text())
    assert resumed and 3 <= int(resumed.group(1)) < steps, (job / "logs" / "rank_0.log").read_text()[-3000:]
    status = subprocess.run([*MSCLUSTER, "status", str(job)], env=slurm_cluster.env,
                            capture_output=True, text=True, timeout=60)
    assert status.returncode == 0, status.stderr
    assert "state:     succeeded" in status.stdout and f"slurm:     job {job_id} COMPLETED" in status.stdout, status.stdout
    digests = final_digests(str(job))
    assert len(digests) == 2 and len(set(digests.values())) == 1, digests
    assert nothing_left(slurm_cluster)


# Prints exactly what the real `hccn_tool -i <id> -ip -g` prints (as tests/test_ranktable.py's does); the
# third octet comes from the node it runs on (n1 -> 91, n2 -> 92), the last from the device id.
FAKE_HCCN_TOOL = """#!/bin/sh
if [ "$1" != "-i" ] || [ "$3" != "-ip" ] || [ "$4" != "-g" ]; then
    echo "usage: hccn_tool -i <id> -ip -g" >&2; exit 2
fi
node=$(echo "$SLURMD_NODENAME" | tr -dc 0-9)
echo "ipaddr:192.98.9${node}.10$2"
echo "netmask:255.255.255.0"
"""


def fake_hccn_tool(tmp_path) -> str:
    """A folder holding the fake hccn_tool, for the front of PATH (srun passes PATH to the nodes)."""
    fakebin = tmp_path / "fakebin"
    fakebin.mkdir()
    (fakebin / "hccn_tool").write_text(FAKE_HCCN_TOOL)
    (fakebin / "hccn_tool").chmod(0o755)
    return str(fakebin)


def test_ascend_under_slurm_discovers_device_ips_on_each_node_and_starts_every_rank(slurm_cluster, tmp_path):
    fakebin = fake_hccn_tool(tmp_path)
    program = "import os; print('rank', os.environ['RANK_ID'], 'device', os.environ['DEVICE_ID'], 'table', os.environ['RANK_TABLE_FILE'])"
    cluster = tmp_path / "c.yaml"
    cluster.write_text(yaml.safe_dump({
        "name": "npu", "backend": "ascend", "ascend": {"init": "ranktable"}, "scheduler": "slurm",
        "workdir": str(tmp_path / "runs"),
        "python": sys.executable, "console": "all", "bind_cores": False,
        "slurm": {"nodes": 2, "devices_per_host": 2}, "command": ["python", "-c", program]}))
    env = {**slurm_cluster.env, "PATH": f"{fakebin}:{slurm_cluster.env['PATH']}"}  # srun passes it to the nodes
    proc = subprocess.run(["salloc", "-N2", "--quiet", *MSCLUSTER, "launch", str(cluster), "--skip-preflight"],
                          cwd=str(tmp_path), env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    job = only_job_dir(str(tmp_path / "runs"))
    table = json.load(open(os.path.join(job, "rank_table.json")))
    n1, n2 = slurm_cluster.address("n1"), slurm_cluster.address("n2")
    assert [s["server_id"] for s in table["server_list"]] == [n1, n2]
    assert [[(d["device_id"], d["device_ip"], d["rank_id"]) for d in s["device"]] for s in table["server_list"]] == [
        [("0", "192.98.91.100", "0"), ("1", "192.98.91.101", "1")],
        [("0", "192.98.92.100", "2"), ("1", "192.98.92.101", "3")]]
    for rank, (host, device) in enumerate([(n1, 0), (n1, 1), (n2, 0), (n2, 1)]):
        assert f"[{host}:{rank}] rank {rank} device {device} table {job}/rank_table.json" in proc.stdout, proc.stdout
    assert nothing_left(slurm_cluster)


PACED = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples", "paced_steps.py")


def test_a_spare_node_takes_the_place_of_a_node_lost_for_good(slurm_cluster, tmp_path):
    """slurm.spares: 1 in a 3-node allocation (salloc --no-kill): n1 and n2 run the job, n3 stands by. n2's
    network goes down for good: it is named lost within the keepalive window, excluded, and the next attempt
    starts its agents on n1 and n3 (a new step beside the one n2 never ends), rank 1 on n3 with n3's device IP
    in the rank table; the job succeeds."""
    lab = slurm_cluster
    fakebin = fake_hccn_tool(tmp_path)
    cluster = tmp_path / "c.yaml"
    cluster.write_text(yaml.safe_dump({
        "name": "spare", "backend": "ascend", "ascend": {"init": "ranktable"}, "scheduler": "slurm",
        "workdir": str(tmp_path / "runs"), "python": sys.executable, "console": "all", "bind_cores": False,
        "restarts": 1, "ssh": {"keepalive_interval": 1, "keepalive_count": 3},
        "slurm": {"nodes": 2, "devices_per_host": 1, "spares": 1},
        "command": ["python", PACED, "--steps", "40", "--step-s", "0.1"]}))
    env = {**lab.env, "PATH": f"{fakebin}:{lab.env['PATH']}"}
    job = tmp_path / "job"
    proc = subprocess.Popen(["salloc", "-N3", "--no-kill", "--quiet", *MSCLUSTER, "launch", str(cluster),
                             "--skip-preflight", "--job-dir", str(job)],
                            cwd=str(tmp_path), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    n1, n2, n3 = (lab.address(n) for n in lab.nodes)
    try:
        wait_for(lambda: rank_step(str(job), 1) >= 2 or proc.poll() is not None, 60, what="rank 1 (on n2) at step 2")
        assert proc.poll() is None, proc.communicate()
        lab.lab.hosts[1].set_link(up=False)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
        lab.lab.hosts[1].set_link(up=True)
    assert proc.returncode == 0, out[-3000:] + err[-3000:]
    result = json.load(open(job / "result.json"))
    first, second = result["attempts"]
    root = first["root_cause"]
    assert (root["host"], root["name"], root["reason"]) == (n2, "agent", "lost"), root
    [change] = first["hosts_changed"]
    assert (change["label"], change["why"], change["move"], change["spare"]) == (
        f"n2 ({n2})", "lost", "replaced", f"n3 ({n3})"), change
    assert f"mscluster: spare n3 ({n3}) takes the place of n2 ({n2}) (lost: " in out + err
    assert result["status"] == "succeeded" and second["ok"]
    assert result["hosts"]["active"] == [f"n1 ({n1})", f"n3 ({n3})"] and result["hosts"]["spares"] == []
    assert [(e["host"], e["why"], e["attempt"]) for e in result["hosts"]["excluded"]] == [(n2, "lost", 0)]
    table = json.load(open(job / "rank_table.json"))  # the second attempt's: rank 1 on the spare
    assert [(s["server_id"], s["device"][0]["device_ip"], s["device"][0]["rank_id"]) for s in table["server_list"]] == [
        (n1, "192.98.91.100", "0"), (n3, "192.98.93.100", "1")]
    assert json.load(open(job / "status.json"))["processes"]["rank1"]["global_step"] == 40  # every step, on n3
    lab.wait_idle(60)  # n2 is back for the next tests
    assert nothing_left(lab)


def test_a_frozen_agent_is_cut_off_and_its_step_cancelled_leaving_nothing(slurm_cluster, tmp_path):
    import psutil

    fakebin = fake_hccn_tool(tmp_path)
    cluster = tmp_path / "c.yaml"
    cluster.write_text(yaml.safe_dump({
        "name": "npu", "backend": "ascend", "ascend": {"init": "ranktable"}, "scheduler": "slurm",
        "workdir": str(tmp_path / "runs"),
        "python": sys.executable, "bind_cores": False, "ssh": {"keepalive_interval": 1, "keepalive_count": 3},
        "slurm": {"nodes": 2, "devices_per_host": 1},
        "command": ["python", "-c", "import time; print('up', flush=True); time.sleep(300)"]}))
    env = {**slurm_cluster.env, "PATH": f"{fakebin}:{slurm_cluster.env['PATH']}"}
    proc = subprocess.Popen(["salloc", "-N2", "--quiet", *MSCLUSTER, "launch", str(cluster), "--console", "all",
                             "--skip-preflight"],
                            cwd=str(tmp_path), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    n2 = slurm_cluster.lab.hosts[1]

    def agent_on_n2():
        for pid in netns_pids(n2.netns):
            try:
                p = psutil.Process(pid)
                if "launcher.agent" in p.cmdline() and p.children():
                    return p
            except psutil.NoSuchProcess:
                continue
        return None

    agent = wait_for(agent_on_n2, 60, what="the agent on n2 with its rank")
    wait_for(lambda: len(agent.children()) == 1 and "time.sleep" in " ".join(agent.children()[0].cmdline()), 30,
             what="the rank on n2")
    agent.suspend()  # frozen: it neither beats nor stops its rank
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, out[-2000:] + err[-2000:]
    assert "no word from the agent on" in err and slurm_cluster.address("n2") in err, err[-3000:]
    assert re.search(r"the agent step did not end with its agents; cancelling it \(\d+\.\d+\)", err), err[-3000:]
    assert nothing_left(slurm_cluster)  # scancel of the step took it all


# -- bad input: one line, no traceback ------------------------------------------------------------

def test_launch_outside_an_allocation_is_one_line(slurm_cluster, tmp_path):
    cluster = slurm_file(tmp_path / "c.yaml", str(tmp_path))
    proc = subprocess.run([*MSCLUSTER, "launch", cluster], cwd=str(tmp_path), env=slurm_cluster.env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "mscluster launch: error: not inside a Slurm allocation (SLURM_JOB_ID is not set): run it under salloc "
        "(salloc -N2 mscluster launch ...) or submit it with mscluster submit"]
    assert not (tmp_path / "runs").exists()


def test_an_allocation_smaller_than_the_file_is_one_line(slurm_cluster, tmp_path):
    cluster = slurm_file(tmp_path / "c.yaml", str(tmp_path))
    proc = salloc(slurm_cluster, 1, *MSCLUSTER, "launch", cluster, cwd=tmp_path, timeout=60)
    lines = [ln for ln in proc.stderr.strip().splitlines() if not ln.startswith("salloc:")]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert re.fullmatch(r"mscluster launch: error: Slurm job \d+ has 1 node \(n1\), but .*c\.yaml asks for "
                        r"slurm.nodes: 2: allocate 2 \(salloc -N2\) or lower slurm.nodes", lines[0]), lines[0]


def test_missing_srun_and_sbatch_are_one_line(slurm_cluster, tmp_path):
    cluster = slurm_file(tmp_path / "c.yaml", str(tmp_path))
    bare = {**slurm_cluster.env, "PATH": os.path.dirname(sys.executable)}  # no Slurm tools on it
    inside = {**bare, "SLURM_JOB_ID": "1", "SLURM_JOB_NODELIST": "n[1-2]"}
    proc = subprocess.run([*MSCLUSTER, "launch", cluster], cwd=str(tmp_path), env=inside, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        "mscluster launch: error: srun not found on PATH: scheduler: slurm needs Slurm's client tools (srun, "
        "scontrol; sbatch for submit) on this machine"], proc.stderr
    proc = subprocess.run([*MSCLUSTER, "submit", cluster], cwd=str(tmp_path), env=bare, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        "mscluster submit: error: sbatch not found on PATH: scheduler: slurm needs Slurm's client tools (srun, "
        "scontrol; sbatch for submit) on this machine"], proc.stderr
    assert not (tmp_path / "runs").exists()


def test_sbatch_refusing_the_job_leaves_no_folder(slurm_cluster, tmp_path):
    cluster = slurm_file(tmp_path / "c.yaml", str(tmp_path), slurm={"partition": "nosuch"})
    proc = subprocess.run([*MSCLUSTER, "submit", cluster, "--job-dir", str(tmp_path / "job")], cwd=str(tmp_path),
                          env=slurm_cluster.env, capture_output=True, text=True, timeout=60)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("mscluster submit: error: sbatch refused "
                                                                            "the job: "), proc.stderr
    assert "partition" in lines[0].lower() and not (tmp_path / "job").exists()


@pytest.mark.parametrize("verb", ["cancel", "stop"])  # under Slurm, stop is cancel
def test_cancel_of_a_pending_job(slurm_cluster, tmp_path, verb):
    # --begin an hour from now: it pends until cancelled
    cluster = slurm_file(tmp_path / "c.yaml", str(tmp_path), slurm={"nodes": 2})
    job = tmp_path / "job"
    proc = subprocess.run([*MSCLUSTER, "submit", cluster, "--job-dir", str(job), "--", "--begin=now+1hour"],
                          cwd=str(tmp_path), env=slurm_cluster.env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    job_id = re.search(r"submitted Slurm job (\d+)", proc.stdout).group(1)
    status = subprocess.run([*MSCLUSTER, "status", str(job)], env=slurm_cluster.env, capture_output=True, text=True,
                            timeout=60)
    assert status.returncode == 0 and f"slurm:     job {job_id} PENDING (BeginTime)" in status.stdout, status.stdout
    done = subprocess.run([*MSCLUSTER, verb, str(job)], env=slurm_cluster.env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0 and f"cancelled Slurm job {job_id}" in done.stdout, done.stderr
    assert wait_job_gone(slurm_cluster, job_id, 60) == "CANCELLED"
