"""The Slurm layer's pure parts: the cluster file's slurm: section, Slurm's output formats, the
allocation as hosts, the srun and sbatch lines. No Slurm needed (tests/test_slurm.py runs a real one)."""
from __future__ import annotations

import subprocess
import sys

import pytest

from launcher.slurm import allocation as slurm_alloc, batch as slurm_batch, step as slurm_step
from launcher.config import parse_cluster, resolved_yaml
from launcher.errors import ConfigError, HostUnreachable
from launcher.jobplan import build_job_plan
from launcher.spec import HostSpec

BASE = "name: s\nbackend: cpu\nscheduler: slurm\n"


def cluster(extra: str = "slurm: {nodes: 2}\n", base: str = BASE):
    return parse_cluster(base + extra, "c.yaml")


def allocation(n: int = 2, cpus: int = 2) -> slurm_alloc.Allocation:
    return slurm_alloc.Allocation(job_id="42", nodes=tuple(f"n{i + 1}" for i in range(n)),
                            addresses=tuple(f"10.0.0.{i + 2}" for i in range(n)), cpus=(cpus,) * n)


@pytest.mark.parametrize("text, message", [
    ("hosts: [{address: 10.0.0.2, devices: 1}]\n",
     "c.yaml:4: hosts: not used with scheduler: slurm: the nodes come from the allocation (SLURM_JOB_NODELIST); "
     "remove hosts:, or set scheduler: ssh"),
    ("slurm: {nodez: 2}\n", "c.yaml:4: slurm.nodez: unknown key 'nodez'; did you mean 'nodes'?"),
    ("slurm: {nodes: 0}\n", "c.yaml:4: slurm.nodes: must be 1..4096, got 0"),
    ("slurm: {time: 1h}\n", "c.yaml:4: slurm.time: expected a time limit as sbatch reads it (minutes, H:MM:SS or "
                            "D-HH:MM:SS), got '1h'"),
    ("slurm: {partition: 'a b'}\n", "c.yaml:4: slurm.partition: expected a Slurm partition name (letters, digits "
                                    "and . _ , : + -), got 'a b'"),
    ('slurm: {sbatch_options: ["--qos=x\\n#SBATCH --x"]}\n',
     "c.yaml:4: slurm.sbatch_options[0]: expected one sbatch option on one line, starting with '-' (e.g. "
     "--qos=high), got '--qos=x\\n#SBATCH --x'"),
    ("slurm: {warning_s: 0}\n", "c.yaml:4: slurm.warning_s: must be 1..65535 seconds, got 0"),
])
def test_bad_slurm_sections_are_one_line(text, message):
    with pytest.raises(ConfigError) as err:
        cluster(text)
    assert str(err.value) == message


def test_slurm_section_needs_scheduler_slurm():
    with pytest.raises(ConfigError, match=r"^c.yaml:2: slurm: only used with scheduler: slurm"):
        parse_cluster("name: s\nslurm: {nodes: 2}\nhosts: [{address: localhost, devices: 1}]\n", "c.yaml")
    with pytest.raises(ConfigError, match=r"^c.yaml:3: scheduler: expected one of ssh, slurm, got 'pbs'"):
        parse_cluster("name: s\nhosts: [{address: localhost, devices: 1}]\nscheduler: pbs\n", "c.yaml")


def test_a_time_limit_yaml_reads_as_base_60_keeps_its_text():
    # YAML 1.1 reads 1:30:00 as 5400; sbatch must get 1:30:00 (90 minutes), not 5400 minutes
    assert cluster("slurm: {time: 1:30:00}\n").slurm.time == "1:30:00"
    assert cluster("slurm: {time: 90}\n").slurm.time == "90"
    assert cluster("slurm: {time: '2-00:00:00'}\n").slurm.time == "2-00:00:00"


def test_the_resolved_file_of_a_slurm_cluster_reads_back_the_same():
    spec = cluster("slurm: {nodes: 3, time: '1:00:00', requeue: true, sbatch_options: [--qos=high]}\n")
    assert parse_cluster(resolved_yaml(spec), "c.yaml") == spec
    placed = slurm_alloc.with_allocation(spec, allocation(3))
    text = resolved_yaml(placed)
    assert "\nhosts:" not in text and "# this run's allocation: n1 (10.0.0.2), n2 (10.0.0.3), n3 (10.0.0.4)" in text
    assert parse_cluster(text, "c.yaml") == spec


def test_slurm_output_formats():
    assert slurm_alloc.expand_cpus_per_node("2(x3),1") == [2, 2, 2, 1]
    assert slurm_alloc.expand_cpus_per_node("72") == [72]
    with pytest.raises(ValueError):
        slurm_alloc.expand_cpus_per_node("2(x")
    # scontrol -o show node, as Slurm 22.05 prints it (trimmed)
    text = ("NodeName=n1 Arch=x86_64 CoresPerSocket=1 CPUAlloc=1 CPUEfctv=2 CPUTot=2 NodeAddr=10.213.115.2 "
            "NodeHostName=n1 Version=22.05.8\n"
            "NodeName=gpu-a07 Arch=x86_64 NodeAddr=gpu-a07 NodeHostName=gpu-a07\n")
    assert slurm_alloc.parse_show_node(text) == {"n1": "10.213.115.2", "gpu-a07": "gpu-a07"}
    assert slurm_batch.parse_sbatch_id("123\n") == "123" and slurm_batch.parse_sbatch_id("123;cluster\n") == "123"
    assert slurm_batch.parse_sbatch_id("sbatch: error\n") is None
    fields = slurm_batch.parse_show_job("JobId=7 JobName=sl JobState=PENDING Reason=BeginTime Dependency=(null)")
    assert (fields["JobState"], fields["Reason"]) == ("PENDING", "BeginTime")


def test_the_allocation_becomes_the_hosts():
    spec = slurm_alloc.with_allocation(cluster("slurm: {nodes: 2, devices_per_host: 2}\n"), allocation(3))
    assert spec.hosts == (HostSpec("10.0.0.2", (0, 1), node="n1"), HostSpec("10.0.0.3", (0, 1), node="n2"))
    assert spec.world_size == 4
    every = slurm_alloc.with_allocation(cluster(""), allocation(3))  # no slurm.nodes: every node, 1 cpu slot each
    assert [h.node for h in every.hosts] == ["n1", "n2", "n3"] and every.world_size == 3
    ascend = slurm_alloc.with_allocation(parse_cluster("name: s\nbackend: ascend\nscheduler: slurm\n", "c.yaml"), allocation(1))
    assert ascend.hosts[0].devices == tuple(range(8))  # Ascend's default: 8 NPUs a server


def test_an_allocation_too_small_names_both_counts():
    with pytest.raises(slurm_alloc.SlurmError) as err:
        slurm_alloc.with_allocation(cluster("slurm: {nodes: 4}\n"), allocation(2))
    assert str(err.value) == ("Slurm job 42 has 2 nodes (n1, n2), but c.yaml asks for slurm.nodes: 4: allocate 4 "
                              "(salloc -N4) or lower slurm.nodes")
    with pytest.raises(slurm_alloc.SlurmError, match=r"console: rank 5 does not exist: the allocation gives 2 rank"):
        slurm_alloc.with_allocation(cluster("console: [0, 5]\n"), allocation(2))  # no slurm.nodes: checked at launch


def test_the_job_plan_of_an_allocation_runs_in_the_launch_folder_with_this_python():
    spec = slurm_alloc.with_allocation(cluster(), allocation(2))
    job = build_job_plan(spec, job_dir="/shared/runs/j", grace_period=5.0, launch_dir="/shared/proj",
                         scheduler_port=4000)
    for agent in job.agents:
        for p in agent.processes:
            assert p.cwd == "/shared/proj" and p.argv[0] == sys.executable
    env = dict(job.agents[0].processes[-1].env)
    assert env["MS_SCHED_HOST"] == "10.0.0.2" and env["MS_WORKER_NUM"] == "2"


def test_srun_lines_are_argv_not_shell():
    words = slurm_step.task_argv("n2", ["python", "-c", "print('a b')"], {"A": "x y"}, "/work dir")
    assert words == ["srun", "--nodes=1", "--ntasks=1", "--nodelist=n2", "--overlap", "--quiet",
                     "--kill-on-bad-exit=1", "--job-name=mscluster-check", "--chdir=/work dir", "--", "env",
                     "A=x y", "python", "-c", "print('a b')"]
    step = slurm_step.agent_step_argv(["n1", "n2"], 2, ["python", "-m", "launcher.agent"], None)
    assert step[:4] == ["srun", "--nodes=2", "--ntasks=2", "--ntasks-per-node=1"]
    assert "--kill-on-bad-exit=1" in step and "--label" in step and "--cpus-per-task=2" in step
    assert "--overlap" in step  # beside the last attempt's step, when that one lingers on a lost node
    assert step[-4:] == ["--", "python", "-m", "launcher.agent"]


def test_the_batch_script_asks_for_the_slurm_section_and_execs_the_launcher():
    spec = cluster("slurm: {nodes: 4, time: '2:00:00', partition: npu, account: proj1, requeue: true, "
                   "warning_s: 300, sbatch_options: ['--qos=high']}\n")
    text = slurm_batch.sbatch_script(spec, "/runs/job 1", ["/venv/bin/python", "-m", "mscluster_cli", "launch",
                                                     "/runs/job 1/cluster.yaml", "--from-sbatch"], "/proj")
    lines = text.splitlines()
    assert lines[0] == "#!/bin/bash"
    options = [ln.split(" ", 1)[1] for ln in lines if ln.startswith("#SBATCH ")]
    assert options == ["--job-name=s", "--nodes=4", "--ntasks-per-node=1", "'--output=/runs/job 1/logs/slurm-%j.out'",
                       "--open-mode=append", "--chdir=/proj", "--signal=B:USR1@300", "--requeue", "--exclusive",
                       "--partition=npu", "--account=proj1", "--time=2:00:00", "--qos=high"]
    assert lines[-1] == "exec /venv/bin/python -m mscluster_cli launch '/runs/job 1/cluster.yaml' --from-sbatch"
    check = subprocess.run(["bash", "-n"], input=text, text=True, capture_output=True)
    assert check.returncode == 0, check.stderr


def test_plan_outside_an_allocation_says_its_nodes_are_placeholders(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(BASE + "slurm: {nodes: 2}\ncommand: [python, train.py]\n")
    env = {"PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-m", "mscluster_cli", "plan", str(path)], capture_output=True, text=True,
                          env=env, cwd=str(tmp_path), timeout=60)
    assert done.returncode == 0, done.stderr
    note, plan = done.stdout.split(")\n", 1)  # the note, wrapped at 100 columns as the plan is
    assert " ".join(note.split()).startswith("(scheduler slurm, outside an allocation: the nodes are shown as "
                                             "node1, node2 at placeholder addresses")
    assert plan.startswith("s: backend cpu, 2 rank(s) on 2 hosts, command")


# -- slurm.spares: nodes beyond slurm.nodes that stand by ----------------------------------------------

def test_spare_nodes_follow_the_job_nodes_with_the_same_devices():
    spec = slurm_alloc.with_allocation(cluster("slurm: {nodes: 2, spares: 1, devices_per_host: 2}\nrestarts: 1\n"),
                                       allocation(4))
    assert [h.node for h in spec.hosts] == ["n1", "n2"] and spec.world_size == 4
    assert spec.spares == (HostSpec("10.0.0.4", (0, 1), node="n3"),)  # n4 is the allocation's, unused
    every = slurm_alloc.with_allocation(cluster("slurm: {spares: 2}\nrestarts: 1\n"), allocation(5))
    assert [h.node for h in every.hosts] == ["n1", "n2", "n3"] and [h.node for h in every.spares] == ["n4", "n5"]
    assert slurm_alloc.with_allocation(cluster(), allocation(3)).spares == ()


def test_an_allocation_without_room_for_the_spares_names_both_numbers():
    with pytest.raises(slurm_alloc.SlurmError) as err:
        slurm_alloc.with_allocation(cluster("slurm: {nodes: 2, spares: 1}\nrestarts: 1\n"), allocation(2))
    assert str(err.value) == ("Slurm job 42 has 2 nodes (n1, n2), but c.yaml asks for slurm.nodes: 2 and "
                              "slurm.spares: 1: allocate 3 (salloc -N3) or lower slurm.nodes or slurm.spares")
    with pytest.raises(slurm_alloc.SlurmError) as err:
        slurm_alloc.with_allocation(cluster("slurm: {spares: 1}\nrestarts: 1\n"), allocation(1))
    assert str(err.value) == ("Slurm job 42 has 1 node (n1), but c.yaml asks for one node at least and "
                              "slurm.spares: 1: allocate 2 (salloc -N2) or lower slurm.spares")


def test_every_spare_node_gets_an_executor_and_an_attempt_may_start_on_it():
    spec = slurm_alloc.with_allocation(cluster("slurm: {nodes: 2, spares: 1}\nrestarts: 1\n"), allocation(3))
    executors = slurm_step.executors(spec, allocation(3), {})
    assert sorted(executors) == ["10.0.0.2", "10.0.0.3", "10.0.0.4"]
    assert executors["10.0.0.4"].label == "n3 (10.0.0.4)"
    group = executors["10.0.0.2"].group
    slurm_step.use_hosts(executors, [spec.hosts[0], spec.spares[0]])  # n3 in n2's place
    assert [h.node for h in group._hosts] == ["n1", "n3"]
    with pytest.raises(ValueError, match="not nodes of Slurm job 42: n9"):
        group.use([HostSpec("10.0.0.9", (0,), node="n9")])
    with pytest.raises(HostUnreachable, match=r"node n2: not one of this attempt's nodes \(n1, n3\)"):
        executors["10.0.0.3"].start(["python"], env={}, cwd=None)  # n2 left out: no step starts for it


def test_the_batch_script_asks_for_the_spares_and_keeps_the_job_when_a_node_fails():
    text = slurm_batch.sbatch_script(cluster("slurm: {nodes: 2, spares: 1}\nrestarts: 1\n"), "/runs/j",
                                     ["mscluster", "launch"], "/proj")
    options = [ln.split(" ", 1)[1] for ln in text.splitlines() if ln.startswith("#SBATCH ")]
    assert "--nodes=3" in options and "--no-kill" in options, options
    every = slurm_batch.sbatch_script(cluster("slurm: {spares: 2}\nrestarts: 1\n"), "/runs/j", ["x"], "/proj")
    assert "#SBATCH --nodes=3" in every  # no slurm.nodes: one node for the job, two spares
    assert "--no-kill" not in slurm_batch.sbatch_script(cluster(), "/runs/j", ["x"], "/proj")


def test_the_resolved_file_with_spare_nodes_names_them_and_reads_back_the_same():
    spec = cluster("slurm: {nodes: 2, spares: 1}\nrestarts: 1\n")
    text = resolved_yaml(slurm_alloc.with_allocation(spec, allocation(3)))
    assert "# this run's allocation: n1 (10.0.0.2), n2 (10.0.0.3); spares: n3 (10.0.0.4)" in text
    assert "\nspares:" not in text and parse_cluster(text, "c.yaml") == spec


def test_plan_shows_the_spare_nodes(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(BASE + "slurm: {nodes: 2, spares: 1, devices_per_host: 2}\nrestarts: 1\ncommand: [python, t.py]\n")
    done = subprocess.run([sys.executable, "-m", "mscluster_cli", "plan", str(path)], capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin"}, cwd=str(tmp_path), timeout=60)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert "s: backend cpu, 4 rank(s) on 2 hosts and 1 spare, command" in lines
    assert not any("192.0.2.3" in ln for ln in lines if ln.startswith("  0 ") or ln.startswith("  3 "))
    spares = lines.index(next(ln for ln in lines if ln.startswith("spares: pre-flighted")))
    table = lines[spares:spares + 5]
    assert any(ln.split() == ["spare", "slots"] for ln in table), table
    assert any(ln.split() == ["node3", "(192.0.2.3)", "0-1"] for ln in table), table
