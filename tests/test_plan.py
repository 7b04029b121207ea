"""The rank plan and each process's environment, for the shipped 1x2 cpu, 1x8 and 2x8 ascend files.

The two ways HCCL starts are checked against their sources: ``ascend.init: dynamic`` against
msrun's (MindSpore 2.10, ``mindspore/parallel/cluster/process_entity/_api.py``: the installed
wheel's file is read), ``ascend.init: ranktable`` against the model zoo's
``official/cv/ResNet/scripts/run_distribute_train.sh`` (mindspore-ai/models): ``RANK_TABLE_FILE``,
``RANK_SIZE``, ``RANK_ID = 8 * SERVER_ID + i``, ``DEVICE_ID = i``, ``DEVICE_NUM``, ``SERVER_ID``.
"""
from __future__ import annotations

import dataclasses
import importlib.metadata
import logging
import os
import re
import shlex
from pathlib import Path

import pytest

from launcher.config import load_cluster, parse_cluster
from launcher.jobplan import OWN_MODULE_BOOT, build_job_plan, format_job_plan
from launcher.plan import plan_ranks, rank_env, scheduler_env, with_scheduler_port
from launcher.spec import AscendSpec, AtLaunch, RankAssignment, SchedulerAssignment

CONFIGS = Path(__file__).resolve().parent.parent / "cluster_configs"


def shipped(name: str, *set_pairs: str):
    return load_cluster(str(CONFIGS / name), set_pairs)


def test_local_cpu_plan_two_workers_and_a_scheduler():
    plan = plan_ranks(shipped("local_cpu.yaml"))
    assert plan.ranks == (
        RankAssignment(rank=0, host="localhost", host_index=0, device_id=0, local_rank=0, local_size=2, world_size=2),
        RankAssignment(rank=1, host="localhost", host_index=0, device_id=1, local_rank=1, local_size=2, world_size=2),
    )
    assert plan.scheduler == SchedulerAssignment(host="localhost", port=None)  # chosen at launch
    assert with_scheduler_port(plan, 40123).scheduler.port == 40123


def test_scheduler_port_from_argument_over_file():
    spec = shipped("cpu_2hosts.yaml")
    assert plan_ranks(spec).scheduler == SchedulerAssignment(host="192.168.1.10", port=29500)
    assert plan_ranks(spec, scheduler_port=31000).scheduler.port == 31000


def test_ascend_1x8_plan():
    plan = plan_ranks(shipped("ascend_1x8.yaml"))
    assert plan.scheduler == SchedulerAssignment(host="localhost", port=None)  # init: dynamic, as msrun
    assert plan_ranks(shipped("ascend_1x8.yaml", "ascend.init=ranktable")).scheduler is None
    assert [(r.rank, r.device_id, r.local_rank) for r in plan.ranks] == [(i, i, i) for i in range(8)]
    assert {(r.host, r.local_size, r.world_size) for r in plan.ranks} == {("localhost", 8, 8)}


def test_ascend_2x8_plan_numbers_servers_in_file_order():
    plan = plan_ranks(shipped("ascend_2x8.yaml"))
    assert len(plan.ranks) == 16
    assert [r.host for r in plan.ranks] == ["10.0.0.1"] * 8 + ["10.0.0.2"] * 8
    rank9 = plan.ranks[9]
    assert (rank9.host_index, rank9.device_id, rank9.local_rank, rank9.local_size, rank9.world_size) == (1, 1, 1, 8, 16)
    assert [r.rank for r in plan.ranks_on("10.0.0.2")] == list(range(8, 16))


def test_devices_in_id_order_and_hosts_in_file_order():
    spec = parse_cluster("""
name: order
hosts:
  - {address: 10.0.0.9, devices: [5, 2]}
  - {address: 10.0.0.1, devices: [1, 0, 3]}
""", "order.yaml")
    plan = plan_ranks(spec)
    assert [(r.host, r.device_id, r.local_rank, r.local_size) for r in plan.ranks] == [
        ("10.0.0.9", 2, 0, 2), ("10.0.0.9", 5, 1, 2),
        ("10.0.0.1", 0, 0, 3), ("10.0.0.1", 1, 1, 3), ("10.0.0.1", 3, 2, 3)]
    assert plan.scheduler.host == "10.0.0.9"


def test_cpu_rank_env_is_the_dynamic_cluster():
    plan = with_scheduler_port(plan_ranks(shipped("local_cpu.yaml")), 40123)
    env = rank_env(plan, plan.ranks[1], job_dir="/runs/job1", rank_table_path=None)
    assert env == {
        "GLOG_v": "3", "MS_TOPO_TIMEOUT": "120",  # the file's env:
        "MS_ROLE": "MS_WORKER", "MS_SCHED_HOST": "127.0.0.1", "MS_SCHED_PORT": "40123",
        "MS_WORKER_NUM": "2", "MS_NODE_ID": "1", "RANK_ID": "1", "RANK_SIZE": "2",
        "LOCAL_RANK": "1", "LOCAL_SIZE": "2", "MSCLUSTER_JOB_DIR": "/runs/job1", "MSCLUSTER_DEVICE_TARGET": "CPU",
    }
    sched = scheduler_env(plan, job_dir="/runs/job1")
    assert sched["MS_ROLE"] == "MS_SCHED"
    assert {k: sched[k] for k in ("MS_SCHED_HOST", "MS_SCHED_PORT", "MS_WORKER_NUM")} == {
        "MS_SCHED_HOST": "127.0.0.1", "MS_SCHED_PORT": "40123", "MS_WORKER_NUM": "2"}
    assert "MS_NODE_ID" not in sched and "RANK_ID" not in sched


def test_cpu_two_hosts_point_every_worker_at_the_first_host():
    plan = plan_ranks(shipped("cpu_2hosts.yaml"))
    envs = [rank_env(plan, r, job_dir="runs/j", rank_table_path=None) for r in plan.ranks]
    assert {e["MS_SCHED_HOST"] for e in envs} == {"192.168.1.10"}
    assert {e["MS_SCHED_PORT"] for e in envs} == {"29500"}
    assert [e["MS_NODE_ID"] for e in envs] == ["0", "1", "2", "3"]
    assert [e["LOCAL_RANK"] for e in envs] == ["0", "1", "0", "1"]


def test_cpu_env_needs_the_port_unless_previewing():
    plan = plan_ranks(shipped("local_cpu.yaml"))
    with pytest.raises(ValueError, match="with_scheduler_port"):
        rank_env(plan, plan.ranks[0], job_dir="j", rank_table_path=None)
    with pytest.raises(ValueError, match="with_scheduler_port"):
        scheduler_env(plan)
    preview = rank_env(plan, plan.ranks[0], job_dir="j", rank_table_path=None, preview=True)
    assert preview["MS_SCHED_PORT"] is AtLaunch.SCHEDULER_PORT


def test_ascend_ranktable_env_is_the_zoo_scripts():
    plan = plan_ranks(shipped("ascend_2x8.yaml", "ascend.init=ranktable"))
    env = rank_env(plan, plan.ranks[9], job_dir="/runs/j", rank_table_path="/runs/j/rank_table.json")
    assert env == {
        "GLOG_v": "2", "HCCL_CONNECT_TIMEOUT": "600",
        "RANK_TABLE_FILE": "/runs/j/rank_table.json", "RANK_SIZE": "16", "RANK_ID": "9",
        "DEVICE_ID": "1", "DEVICE_NUM": "8", "SERVER_ID": "1",
        "LOCAL_RANK": "1", "LOCAL_SIZE": "8", "MSCLUSTER_JOB_DIR": "/runs/j", "MSCLUSTER_DEVICE_TARGET": "Ascend",
    }
    with pytest.raises(ValueError, match="rank table"):
        rank_env(plan, plan.ranks[0], job_dir="/runs/j", rank_table_path=None)
    with pytest.raises(ValueError, match="no scheduler"):
        scheduler_env(plan)


def _msrun_sets() -> tuple[set[str], str]:
    """The variables msrun's process manager sets (os.environ[...] = ...), read from the installed MindSpore."""
    # the installed wheel's file (MindSpore is a dependency), found without importing MindSpore
    path = str(importlib.metadata.distribution("mindspore").locate_file(
        "mindspore/parallel/cluster/process_entity/_api.py"))
    with open(path, encoding="utf-8") as handle:
        source = handle.read()
    return set(re.findall(r"os\.environ\[[\"'](\w+)[\"']\]\s*=", source)), path


# set by msrun only in modes mscluster does not run: a user's rank table "for other features",
# simulation (dry runs), MindX's process recovery
MSRUN_OPTIONAL = {"RANK_TABLE_FILE", "MS_SIMULATION_LEVEL", "MS_ENABLE_RECOVERY"}


def test_ascend_dynamic_env_is_msruns():
    msrun, path = _msrun_sets()
    assert {"MS_ROLE", "MS_SCHED_HOST", "MS_SCHED_PORT", "MS_WORKER_NUM", "MS_NODE_ID", "RANK_ID", "RANK_SIZE",
            "DEVICE_ID"} <= msrun, path  # the source still reads as expected
    plan = plan_ranks(shipped("ascend_2x8.yaml"), scheduler_port=8118)
    worker = rank_env(plan, plan.ranks[9], job_dir="/runs/j", rank_table_path=None)
    assert msrun - MSRUN_OPTIONAL <= set(worker), f"msrun sets {sorted(msrun - set(worker))} too ({path})"
    assert {k: worker[k] for k in ("MS_ROLE", "MS_SCHED_HOST", "MS_SCHED_PORT", "MS_WORKER_NUM", "MS_NODE_ID",
                                   "RANK_ID", "RANK_SIZE", "DEVICE_ID", "MS_TOPO_TIMEOUT")} == {
        "MS_ROLE": "MS_WORKER", "MS_SCHED_HOST": "10.0.0.1", "MS_SCHED_PORT": "8118", "MS_WORKER_NUM": "16",
        "MS_NODE_ID": "9", "RANK_ID": "9", "RANK_SIZE": "16", "DEVICE_ID": "1", "MS_TOPO_TIMEOUT": "300"}
    assert "RANK_TABLE_FILE" not in worker and worker["MSCLUSTER_DEVICE_TARGET"] == "Ascend"
    sched = scheduler_env(plan, job_dir="/runs/j")
    assert {k: sched[k] for k in ("MS_ROLE", "MS_SCHED_HOST", "MS_SCHED_PORT", "MS_WORKER_NUM", "RANK_ID",
                                  "RANK_SIZE")} == {
        "MS_ROLE": "MS_SCHED", "MS_SCHED_HOST": "10.0.0.1", "MS_SCHED_PORT": "8118", "MS_WORKER_NUM": "16",
        "RANK_ID": "0", "RANK_SIZE": "16"}  # msrun's start_scheduler: "For Scheduler, 'RANK_ID' is always 0."
    assert "DEVICE_ID" not in sched and "MS_NODE_ID" not in sched


def test_every_rank_gets_a_distinct_rank_id():
    for name in ("local_cpu.yaml", "ascend_1x8.yaml", "ascend_2x8.yaml", "cpu_2hosts.yaml"):
        plan = plan_ranks(shipped(name), scheduler_port=1234)
        envs = [rank_env(plan, r, job_dir="j", rank_table_path="t.json") for r in plan.ranks]
        assert sorted(int(e["RANK_ID"]) for e in envs) == list(range(len(plan.ranks))), name
        assert all(isinstance(v, str) for e in envs for v in e.values())


def _section(lines: list[str], title: str) -> list[str]:
    """The lines under ``title`` up to the next blank line or ``environment per process:``."""
    start = lines.index(title) + 1
    end = next((i for i in range(start, len(lines)) if not lines[i] or lines[i] == "environment per process:"),
               len(lines))
    return lines[start:end]


def _argvs(lines: list[str]) -> dict[str, list[str]]:
    """The processes section read back as a shell would: label -> argv, ``$BOOT`` as its definition makes it."""
    section = _section(lines, "processes (argv, folder):")
    boot = "".join(shlex.split(line.split("=", 1)[1])[0] for line in section if line.lstrip().startswith("BOOT"))
    argvs, label, text = {}, None, ""
    for line in section + ["  end:"]:
        if line.startswith("  where "):
            continue
        if line.startswith("  ") and not line.startswith("   ") and line.endswith(":"):
            if label is not None:
                argvs[label] = shlex.split(text.replace('"$BOOT"', shlex.quote(boot)))
            label, text = line.strip(), ""
        elif not line.lstrip().startswith(("BOOT", "#")):
            text += line.rstrip("\\").strip() + " " if line.endswith("\\") else line.strip() + " "
    return argvs


def _per_process(lines: list[str]) -> dict[str, dict[str, str]]:
    """The table under ``environment per process:`` as process label -> {variable: value} (``-`` left out)."""
    table = lines[lines.index("environment per process:") + 1:]
    table = table[:table.index("")] if "" in table else table
    head = table[0].split()
    rows = {}
    for row in table[1:]:
        cells = row.split()
        label = " ".join(cells[:2]) if cells[0] == "rank" else cells[0]
        values = cells[2:] if cells[0] == "rank" else cells[1:]
        rows[label] = {k: v for k, v in zip(head[1:], values) if v != "-"}
    return rows


def test_plan_output_shows_ranks_processes_and_env():
    job = build_job_plan(shipped("local_cpu.yaml"), launch_dir="/launch", local_python="/py")
    text = format_job_plan(job)
    lines = text.splitlines()
    assert lines[0] == "local-cpu: backend cpu, 2 rank(s) on 1 host, built-in trainer"
    assert lines[1] == f"  cluster file: {CONFIGS / 'local_cpu.yaml'}"
    table = lines[lines.index("  rank   host       slot  local rank"):]
    assert table[1].split()[:3] == ["sched", "localhost", "-"]
    assert table[1].endswith("port <free port at launch>")
    assert table[2].split() == ["0", "localhost", "0", "0/2"]
    assert table[3].split() == ["1", "localhost", "1", "1/2"]
    # mscluster's own programs: run as -m would, but never a same-named file of the launch folder; the same
    # argv in the same folder is printed once, for every process that runs it
    sched, ranks = lines.index("  sched on localhost:"), lines.index("  ranks 0-1 on localhost:")
    assert lines[sched + 1] == lines[ranks + 1] == "    # in /launch"
    assert _argvs(lines) == {
        "sched on localhost:": ["/py", "-c", OWN_MODULE_BOOT, "trainer.scheduler"],
        "ranks 0-1 on localhost:": ["/py", "-c", OWN_MODULE_BOOT, "mscluster_cli", "train", "--config",
                                    "<job dir>/train.attempt0.yaml"]}
    assert [list(p.argv) for _, p in job.processes()][1:] == [_argvs(lines)["ranks 0-1 on localhost:"]] * 2
    common = _section(lines, "environment of every process (on top of the host's own):")
    for wanted in ("MS_WORKER_NUM=2", "MS_TOPO_TIMEOUT=120", "MSCLUSTER_RESTART_COUNT=0", "PYTHONUNBUFFERED=1",
                   "MSCLUSTER_JOB_DIR='<job dir>'", "MSCLUSTER_EVENT_FD='<pipe fd>'",
                   "MSCLUSTER_ERROR_FILE='<job dir>/errors/<name>.attempt0.json'"):
        assert f"  {wanted}" in common, wanted
    assert "  (<name>: each process's own: scheduler, rank0, rank1)" in common
    per_process = _per_process(lines)
    assert per_process["sched"] == {"MS_ROLE": "MS_SCHED"}
    assert per_process["rank 1"]["MS_NODE_ID"] == "1" and per_process["rank 1"]["RANK_ID"] == "1"
    # every process's environment is exactly the common part, its <name> patterns and its row
    for _, p in job.processes():
        label = "sched" if p.rank is None else f"rank {p.rank}"
        shown = {}
        for line in common:
            if "=" in line and not line.startswith("  ("):
                key, value = line.strip().split("=", 1)
                shown[key] = shlex.split(value)[0].replace("<name>", p.name)
        shown.update(per_process[label])
        assert shown == {k: str(v) for k, v in p.env}, label


def test_plan_says_where_the_job_folder_will_be_and_the_training_it_runs():
    lines = format_job_plan(build_job_plan(shipped("ascend_2x8.yaml"))).splitlines()
    assert "  job folder:   /home/ma-user/runs/resnet50-cifar10-2x8-<time>" in lines
    assert "  training:     epochs 90, lr 0.2 (warmup_poly, 5 warm-up epoch(s))" in lines
    assert "  batch:        global 512 = batch_size 32 x 16 rank(s) x grad_accumulation 1" in lines
    lines = format_job_plan(build_job_plan(shipped("cpu_2hosts.yaml", "train.grad_accumulation=4"),
                                           job_dir="/scratch/j1")).splitlines()
    assert "  job folder:   /scratch/j1 (--job-dir)" in lines
    assert "global 512 = batch_size 32 x 4 rank(s) x grad_accumulation 4" in "\n".join(lines)
    assert "MSCLUSTER_JOB_DIR=/scratch/j1" in "\n".join(lines)
    relative = "\n".join(format_job_plan(build_job_plan(shipped("cpu_2hosts.yaml"))).splitlines())
    assert "  job folder:   runs/cpu-2hosts-<time>" in relative
    assert "under the login folder\n                 on remote hosts" in relative
    command = format_job_plan(build_job_plan(parse_cluster(CPU2 + "command: [python, train.py]\n", "t.yaml")))
    assert "training:" not in command and "batch:" not in command  # a program's own business


@pytest.mark.parametrize("name", sorted(p.name for p in CONFIGS.glob("*.yaml")))
def test_every_shipped_plan_fits_100_columns(name, capsys, monkeypatch, tmp_path):
    from mscluster_cli.main import main

    monkeypatch.chdir(tmp_path)  # a long launch folder (the ranks' folder on local hosts) fits too

    for key in [k for k in os.environ if k.startswith("SLURM_")]:  # outside an allocation, as on a laptop
        monkeypatch.delenv(key)
    assert main(["plan", str(CONFIGS / name)]) == 0
    text = capsys.readouterr().out
    assert "processes (argv, folder):" in text
    wide = [line for line in text.splitlines() if len(line) > 100]
    assert wide == [], name


def test_sixteen_ranks_print_their_argv_once():
    lines = format_job_plan(build_job_plan(shipped("ascend_2x8.yaml"))).splitlines()
    ranks = lines.index("  ranks 0-15 on 10.0.0.1, 10.0.0.2:")
    assert lines[ranks + 1] == "    # in ~ (the login folder)"
    assert sum("mscluster_cli train" in line for line in lines) == 1
    assert set(_per_process(lines)) == {"sched"} | {f"rank {i}" for i in range(16)}


def test_plan_output_ascend_shows_how_hccl_starts():
    dynamic = format_job_plan(build_job_plan(shipped("ascend_2x8.yaml"))).splitlines()
    hccl = next(i for i, line in enumerate(dynamic) if line.startswith("HCCL starts"))
    assert dynamic[hccl].startswith("HCCL starts as msrun starts it (ascend.init: dynamic)")
    assert dynamic[hccl + 2].split()[:3] == ["sched", "10.0.0.1", "-"]
    assert "rank_table.json" not in "\n".join(dynamic) and "RANK_TABLE_FILE" not in "\n".join(dynamic)
    text = format_job_plan(build_job_plan(shipped("ascend_2x8.yaml", "ascend.init=ranktable")))
    lines = text.splitlines()
    hccl = next(i for i, line in enumerate(lines) if line.startswith("HCCL starts"))
    assert lines[hccl].startswith("HCCL starts from the rank table (ascend.init: ranktable, version 1.0)")
    assert "sched" not in text
    assert lines[hccl + 1].split()[:3] == ["rank", "host", "npu"]
    assert _per_process(lines)["rank 15"]["DEVICE_ID"] == "7"
    assert "files written in the job folder of every host first: rank_table.json, train.attempt0.yaml" in text


def _job(text: str, **kwargs):
    return build_job_plan(parse_cluster(text, "t.yaml"), launch_dir="/launch", local_python="/py", **kwargs)


CPU2 = "name: t\nbackend: cpu\nhosts: [{address: localhost, devices: 2}]\n"


def test_a_command_runs_on_every_rank_with_the_hosts_python_and_the_launch_folder():
    job = _job(CPU2 + "command: [python, train.py, --epochs, 2]\n", job_dir="/runs/j", scheduler_port=4000)
    (host, sched), (_, rank0), (_, rank1) = job.processes()
    assert sched.argv == ("/py", "-c", OWN_MODULE_BOOT, "trainer.scheduler")  # ours, whatever the ranks run
    assert rank0.argv == rank1.argv == ("/py", "train.py", "--epochs", "2")
    assert rank0.cwd == rank1.cwd == "/launch"
    assert job.agent("localhost").files == ()  # no trainer settings for a command
    env = dict(rank1.env)
    assert env["RANK_ID"] == "1" and env["MS_SCHED_PORT"] == "4000" and env["MSCLUSTER_JOB_DIR"] == "/runs/j"
    assert env["MSCLUSTER_ERROR_FILE"] == "/runs/j/errors/rank1.attempt0.json" == rank1.error_file
    assert "GLOG_v" not in env  # a user's program keeps MindSpore's own default log level
    assert not job.preview


def test_cwd_and_a_program_not_named_python():
    job = _job(CPU2 + "command: [./run.sh, x]\ncwd: /shared/proj\n")
    assert job.processes()[1][1].argv == ("./run.sh", "x") and job.processes()[1][1].cwd == "/shared/proj"
    assert job.preview  # job dir and port are placeholders


def test_a_preview_is_told_by_its_placeholders_not_by_their_text():
    """A job folder that happens to be named like a placeholder is a real folder, not a preview."""
    job = _job(CPU2 + "command: [python, train.py]\n", job_dir="<job dir>", scheduler_port=4000)
    assert not job.preview
    assert dict(job.processes()[1][1].env)["MSCLUSTER_JOB_DIR"] == os.path.abspath("<job dir>")  # a local folder
    preview = _job(CPU2 + "command: [python, train.py]\n")
    assert preview.preview and preview.job_dir is AtLaunch.JOB_DIR
    env = dict(preview.processes()[1][1].env)
    assert env["MSCLUSTER_EVENT_FD"] is AtLaunch.EVENT_FD and env["MS_SCHED_PORT"] is AtLaunch.SCHEDULER_PORT
    text = format_job_plan(preview)  # the placeholders print as the text users know
    assert "MSCLUSTER_JOB_DIR='<job dir>'" in text and "MSCLUSTER_EVENT_FD='<pipe fd>'" in text


def test_a_restart_attempt_is_numbered_in_env_error_file_and_settings():
    job = _job(CPU2, job_dir="/runs/j", scheduler_port=4000, attempt=2)
    rank0 = job.processes()[1][1]
    assert dict(rank0.env)["MSCLUSTER_RESTART_COUNT"] == "2"
    assert rank0.argv[-1] == "/runs/j/train.attempt2.yaml"
    (name, content), = job.agent("localhost").files
    assert name == "train.attempt2.yaml" and "resume: auto" in content


def test_unsorted_server_ids_are_warned_about_when_a_rank_table_numbers_them(caplog):
    spec = parse_cluster("""
name: order
backend: ascend
ascend: {init: ranktable}
hosts:
  - {address: 10.0.0.9, devices: 8}
  - {address: 10.0.0.10, devices: 8}
""", "order.yaml")
    with caplog.at_level(logging.WARNING, logger="launcher.plan"):
        plan = plan_ranks(spec)
    assert plan.ranks[8].host == "10.0.0.10"  # the file's order is kept
    assert "dictionary order" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="launcher.plan"):
        plan_ranks(shipped("ascend_2x8.yaml", "ascend.init=ranktable"))
        plan_ranks(dataclasses.replace(spec, ascend=AscendSpec(init="dynamic")))  # no rank table: no such rule
    assert caplog.text == ""


def test_dynamic_cluster_gives_up_waiting_after_300_s_unless_the_file_says():
    text = "name: t\nbackend: cpu\nhosts: [{address: localhost, devices: 2}]\n"
    plan = plan_ranks(parse_cluster(text, "t.yaml"), scheduler_port=1234)
    envs = [rank_env(plan, r, job_dir="/j", rank_table_path=None) for r in plan.ranks] + [scheduler_env(plan)]
    assert {e["MS_TOPO_TIMEOUT"] for e in envs} == {"300"}
    plan = plan_ranks(parse_cluster(text + "env: {MS_TOPO_TIMEOUT: '30'}\n", "t.yaml"), scheduler_port=1234)
    assert rank_env(plan, plan.ranks[0], job_dir="/j", rank_table_path=None)["MS_TOPO_TIMEOUT"] == "30"


def test_plan_shows_the_watchdog_and_the_backend_timeouts_it_sets():
    text = format_job_plan(build_job_plan(shipped("local_cpu.yaml")))
    flat = " ".join(text.split())  # the watchdog's sentence wraps at 100 columns
    assert ("watchdog: stall_timeout auto: 900 s before the first step; then 600 s per step until 5 steps are timed, "
            "then 10 x the slowest step; a section (checkpoint, eval) 600 s the first time, then 3 x its slowest; "
            "each within 30..1800 s; frozen after 16 s without a beat (beats every 5 s); "
            "a host is lost after 15 s of silence (keepalive every 5 s)") in flat
    assert all(len(line) <= 100 for line in text.splitlines() if line.startswith(("watchdog", "  ")))
    # auto: the backend waits out the longest limit auto can set (1800 s) plus the margin
    assert "  MS_NODE_TIMEOUT=1830" in text and "  MS_RECEIVE_MSG_TIMEOUT=1830" in text
    by_hand = format_job_plan(build_job_plan(parse_cluster(CPU2 + "watchdog: {stall_timeout: 300}\n", "t.yaml")))
    assert ("watchdog: a rank stalls after 300 s without a step (900 s before the first step); frozen after 16 s"
            in " ".join(by_hand.split()))
    assert "  MS_NODE_TIMEOUT=330" in by_hand
    assert "  MS_COMPILER_CACHE_PATH='<job dir>/compile_cache/ranks2_k1'" in text
    off = format_job_plan(build_job_plan(parse_cluster(CPU2 + "watchdog: false\nenv: {MS_NODE_TIMEOUT: '45'}\n", "t.yaml")))
    assert "watchdog: off" in off and "MS_NODE_TIMEOUT=45" in off and "MS_RECEIVE_MSG_TIMEOUT" not in off
    ascend = format_job_plan(build_job_plan(parse_cluster(
        "name: a\nbackend: ascend\nhosts: [{address: 10.0.0.1, devices: 8}]\n", "a.yaml")))
    assert "  HCCL_EXEC_TIMEOUT=1830" in ascend and "  HCCL_CONNECT_TIMEOUT=900" in ascend
    assert "  HCCL_CONNECT_TIMEOUT=600" in format_job_plan(build_job_plan(shipped("ascend_1x8.yaml")))  # env: wins


def test_the_printed_boot_lines_give_bash_the_exact_boot():
    """Copied into bash, the plan's BOOT= and BOOT+= lines make OWN_MODULE_BOOT, byte for byte."""
    import subprocess

    lines = format_job_plan(build_job_plan(shipped("ascend_2x8.yaml"))).splitlines()
    boot = [line.strip() for line in lines if line.lstrip().startswith(("BOOT=", "BOOT+="))]
    assert len(boot) >= 2 and all(len(line) <= 96 for line in boot)
    done = subprocess.run(["bash", "-c", "\n".join(boot) + '\nprintf %s "$BOOT"'], capture_output=True, text=True,
                          timeout=30)
    assert done.stdout == OWN_MODULE_BOOT


def test_plan_shows_the_spares_that_stand_by():
    text = format_job_plan(build_job_plan(parse_cluster(
        "name: t\nbackend: ascend\nrestarts: 1\nhosts: [{address: 10.0.0.2, devices: 8}]\n"
        "spares: [{address: 10.0.0.3, devices: [0, 1, 2, 3, 4, 5, 6, 7]}]\n", "t.yaml")))
    lines = text.splitlines()
    assert lines[0] == "t: backend ascend, 8 rank(s) on 1 host and 1 spare, built-in trainer"
    assert all("10.0.0.3" not in ln for ln in lines[:lines.index("")])  # no rank of it
    spares = lines[lines.index("") + 1:]
    assert spares[0].startswith("spares: pre-flighted at the start, they run nothing until one takes the place")
    assert [ln.split() for ln in spares[2:4]] == [["spare", "npus"], ["10.0.0.3", "0-7"]], spares[:5]
    assert "spares:" not in format_job_plan(build_job_plan(parse_cluster(CPU2, "t.yaml")))
