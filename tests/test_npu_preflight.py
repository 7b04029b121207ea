"""Feature: the NPU pre-flight of Ascend jobs, and each rank's cores by its NPU's CPU affinity.

Description: the parsers read real outputs of ``npu-smi`` and ``hccn_tool`` (tests/fixtures/ascend,
sources in its SOURCES.md); the pre-flight runs the real probe on this machine as two "servers"
(each a local executor with the environment of its host: the fakes of the two tools first on
PATH, its fixtures, a CANN toolkit folder), and ``mscluster launch`` runs it end to end.
Expectation: healthy hosts pass and each rank is bound to its share of its NPU's affine cores; a
device with Health Warning, a busy device, a link DOWN, a network Fault, a lost ping, a mismatched
IP, another CANN version, a data_dir that differs, each is one line naming the host and the device,
all of them reported together, exit 3, and nothing started; ``--skip-preflight`` starts anyway.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from launcher import npu
from launcher.config import parse_cluster
from launcher.errors import NpuCheckFailed
from launcher.executor import LocalExecutor
from launcher.launch import _in_parallel
from launcher.npucheck import npu_preflight
from npu_fakes import FIXTURES, host_env, install_fakes, toolkit_home


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text()


# ---------------------------------------------------------------- parsing real outputs

def test_npu_smi_910b3_with_a_process_on_npu_2():
    smi = npu.parse_npu_smi(fixture("npu-smi_info_910b3_busy.txt"))
    assert smi.health == {d: "OK" for d in range(8)}
    assert smi.processes == {2: (1333928,)}


def test_npu_smi_910prob_idle_and_910a_warning():
    idle = npu.parse_npu_smi(fixture("npu-smi_info_910prob.txt"))
    assert idle.health == {d: "OK" for d in range(8)} and idle.processes == {}
    warning = npu.parse_npu_smi(fixture("npu-smi_info_910a_warning.txt"))
    assert warning.health == {1: "Warning"} and warning.processes == {}  # a container that sees NPU 1 only


def test_topo_cpu_affinity_and_the_shares_of_npus_on_one_numa_node():
    affinity = npu.parse_topo_affinity(fixture("npu-smi_topo_910b3.txt"))
    assert affinity[0] == affinity[1] == tuple(range(144, 168))
    assert affinity[4] == tuple(range(0, 24)) and affinity[7] == tuple(range(48, 72))
    shares = npu.affinity_cpus(affinity, range(8))
    assert shares[0] == tuple(range(144, 156)) and shares[1] == tuple(range(156, 168))  # NPU 0 and 1 split 144-167
    assert shares[4] == tuple(range(0, 12)) and shares[5] == tuple(range(12, 24))
    assert npu.affinity_cpus(affinity, [4, 5], allowed=[0, 1]) == {4: (0,), 5: (1,)}  # this host's mask
    assert npu.affinity_cpus(affinity, [0], allowed=[0, 1]) == {0: ()}  # its node is not ours: the OS decides
    assert npu.parse_cpu_list("0-3,8,10-11") == (0, 1, 2, 3, 8, 10, 11)


def test_hccn_tool_lines():
    assert npu.parse_link("link status: UP\n") == "UP" and npu.parse_link("link status: DOWN\n") == "DOWN"
    assert npu.parse_net_health("net health status: Success\n") == "Success"
    assert npu.parse_net_health("net health status: Receive timeout\n") == "Receive timeout"
    assert npu.parse_ip("ipaddr:10.10.100.10\nnetmask:255.255.255.0\n") == "10.10.100.10"
    assert npu.ping_loss(fixture("hccn_ping_ok.txt")) == 0.0 and npu.ping_loss(fixture("hccn_ping_loss.txt")) == 33.33
    assert npu.parse_toolkit_version(fixture("ascend_toolkit_install_8.1.RC1.info")) == "8.1.RC1"


def test_ring_of_pings_between_servers():
    peers = npu.ring_peers([("a", {0: "1.0.0.1", 1: "1.0.0.2"}), ("b", {0: "2.0.0.1", 1: "2.0.0.2"}),
                            ("c", {0: "3.0.0.1"})])
    assert peers == {"a": {0: "2.0.0.1", 1: "2.0.0.2"}, "b": {0: "3.0.0.1"}, "c": {0: "1.0.0.1"}}
    assert npu.ring_peers([("a", {0: "1.0.0.1"})]) == {}


# ---------------------------------------------------------------- the pre-flight, real probes

class HostExecutor(LocalExecutor):
    """This machine as one server: its commands run with that server's environment."""

    def __init__(self, host: str, env: dict[str, str]):
        super().__init__(host)
        self.host_env = env

    def run(self, argv, *, timeout, env={}, cwd=None, input=""):
        return super().run(argv, timeout=timeout, env={**self.host_env, **env}, cwd=cwd, input=input)


TWO_SERVERS = """
name: npu
backend: ascend
python: {python}
workdir: {workdir}
bind_cores: true
hosts:
  - {{address: 10.0.0.1, devices: [4, 5]}}
  - {{address: 10.0.0.2, devices: [4, 5]}}
train: {{data_dir: {data}}}
"""


@pytest.fixture
def servers(tmp_path, cifar_dir):
    fakes = install_fakes(tmp_path / "bin")
    toolkit = toolkit_home(tmp_path / "cann")
    other_toolkit = toolkit_home(tmp_path / "cann-8.0", "ascend_toolkit_install_8.0.T6.info")
    cluster = parse_cluster(TWO_SERVERS.format(python=sys.executable, workdir=tmp_path / "runs", data=cifar_dir),
                            "npu.yaml")

    def run(a: dict = {}, b: dict = {}, ips=None, cann_b=toolkit):
        executors = {"10.0.0.1": HostExecutor("10.0.0.1", host_env(fakes, toolkit, subnet="91", **a)),
                     "10.0.0.2": HostExecutor("10.0.0.2", host_env(fakes, cann_b, subnet="92", **b))}
        return npu_preflight(cluster, executors, _in_parallel, ips)

    run.other_toolkit = other_toolkit
    return run


def test_healthy_servers_pass_and_bind_each_rank_to_its_npus_cores(servers):
    cpus = servers()
    allowed = sorted(os.sched_getaffinity(0))
    expected = npu.affinity_cpus(npu.parse_topo_affinity(fixture("npu-smi_topo_910b3.txt")), [4, 5], allowed)
    assert cpus == {(h, d): expected[d] for h in ("10.0.0.1", "10.0.0.2") for d in (4, 5) if expected[d]}


def test_every_problem_is_one_line_naming_host_and_device(servers):
    with pytest.raises(NpuCheckFailed) as info:
        servers(a={"down": "5"}, b={"fault": "4", "loss": "5"}, cann_b=servers.other_toolkit)
    lines = str(info.value).splitlines()
    assert lines[0] == "the NPU pre-flight failed (--skip-preflight runs anyway):"
    assert [ln.strip() for ln in lines[1:]] == [
        "host 10.0.0.1: NPU 5 link is DOWN (hccn_tool -i 5 -link -g), not UP",
        "host 10.0.0.2: NPU 4 network health is Fault (hccn_tool -i 4 -net_health -g), not Success",
        "host 10.0.0.2: NPU 5 does not reach 192.98.91.105 (the same NPU on the next server): "
        "hccn_tool -i 5 -ping -g address 192.98.91.105: 33.33% packet loss",
        "host 10.0.0.2: CANN 8.0.T6, but 10.0.0.1 has 8.1.RC1",
    ]


def test_a_missing_npu_and_a_mismatched_ip(servers):
    ips = {(h, d): f"192.98.{s}.10{d}" for h, s in (("10.0.0.1", "91"), ("10.0.0.2", "92")) for d in (4, 5)}
    ips[("10.0.0.2", 5)] = "192.98.92.199"  # the rank table (the file's device_ips) says otherwise
    with pytest.raises(NpuCheckFailed) as info:
        servers(a={"info": "npu-smi_info_910a_warning.txt"}, b={"info": "npu-smi_info_910b3_busy.txt"}, ips=ips)
    text = str(info.value)
    assert "host 10.0.0.1: NPU 4 is not listed by npu-smi info (listed: 1)" in text
    assert "host 10.0.0.2: NPU 5 has IP 192.98.92.105 (hccn_tool -i 5 -ip -g), the rank table says 192.98.92.199" in text
    assert "10.0.0.2: NPU 4" not in text and "busy" not in text  # NPU 2 is the busy one, and the job uses 4, 5


def test_warning_health_and_a_busy_npu_are_named():
    report = npu.HostReport("10.0.0.1", {"npu-smi info": (0, fixture("npu-smi_info_910a_warning.txt")),
                                         "link 1": (0, "link status: UP\n"),
                                         "health 1": (0, "net health status: Success\n")})
    assert npu.device_problems(report, [1], {}, {}) == [
        "host 10.0.0.1: NPU 1 Health is Warning (npu-smi info), not OK"]
    busy = npu.HostReport("10.0.0.2", {"npu-smi info": (0, fixture("npu-smi_info_910b3_busy.txt")),
                                       "link 2": (0, "link status: UP\n"),
                                       "health 2": (0, "net health status: Success\n")})
    assert npu.device_problems(busy, [2], {}, {}) == [
        "host 10.0.0.2: NPU 2 is busy: process(es) 1333928 hold it (npu-smi info)"]
    gone = npu.HostReport("10.0.0.3", {"npu-smi info": (127, "npu-smi: command not found")})
    assert npu.device_problems(gone, [], {}, {}) == [
        "host 10.0.0.3: npu-smi info failed (exit 127: npu-smi: command not found)"]


def test_versions_data_and_disk_across_hosts():
    def report(label, **kw):
        base = dict(toolkit="8.1.RC1", mindspore="2.10.0", data_dir="/data", data_files={"data_batch_1.bin": 30730000,
                                                                       "test_batch.bin": 30730000},
                    free_bytes=100 * 2**30)
        return npu.HostReport(label, {}, **{**base, **kw})

    assert npu.cluster_problems([report("a"), report("b")], 2**30) == []
    assert npu.cluster_problems([report("a"), report("b", mindspore="2.9.0"), report("c", data_files=None),
                                 report("d", data_files={"data_batch_1.bin": 30730000, "test_batch.bin": 1000}),
                                 report("e", free_bytes=2**29)], 2**30) == [
        "host b: MindSpore 2.9.0, but a has 2.10.0",
        "host c: data_dir /data is not there",
        "host d: data_dir/test_batch.bin is 1000 bytes, not whole CIFAR-10 records (3073 bytes each): a partial copy?",
        "host d: data_dir differs from a's (test_batch.bin)",
        "host e: 0.5 GiB free for the job folder, the checkpoints kept need 1.0 GiB",
    ]
    assert npu.checkpoint_room("resnet50", 64, 5) == int(25.6e6 * 8 * 6)


# ---------------------------------------------------------------- mscluster launch, end to end

PROGRAM = "import os; print('rank', os.environ['RANK_ID'], 'cpus', sorted(os.sched_getaffinity(0)))"


def _launch(tmp_path, env, *extra):
    cluster = tmp_path / "npu.yaml"
    cluster.write_text(f"""
name: npu
backend: ascend
ascend: {{init: ranktable}}
python: {sys.executable}
workdir: {tmp_path / 'runs'}
hosts:
  - {{address: localhost, devices: [4, 5], device_ips: {{4: 192.98.92.104, 5: 192.98.92.105}}}}
command: [python, -c, "{PROGRAM}"]
""")
    return subprocess.run([sys.executable, "-m", "mscluster_cli", "launch", str(cluster), "--console", "all", *extra],
                          cwd=str(tmp_path), capture_output=True, text=True, timeout=120,
                          env={**os.environ, **env, "PYTHONUNBUFFERED": "1"})


@pytest.mark.integration
def test_launch_binds_ranks_by_npu_affinity_and_refuses_a_busy_npu(tmp_path):
    fakes, toolkit = install_fakes(tmp_path / "bin"), toolkit_home(tmp_path / "cann")
    proc = _launch(tmp_path, host_env(fakes, toolkit))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    allowed = sorted(os.sched_getaffinity(0))
    shares = npu.affinity_cpus(npu.parse_topo_affinity(fixture("npu-smi_topo_910b3.txt")), [4, 5], allowed)
    for rank, device in ((0, 4), (1, 5)):
        cpus = list(shares[device]) or allowed
        assert re.search(rf"\] rank {rank} cpus {re.escape(str(cpus))}$", proc.stdout, re.M), proc.stdout

    busy = host_env(fakes, toolkit, info="npu-smi_info_910b3_busy.txt", down="4")
    (tmp_path / "runs").rename(tmp_path / "runs.ok")
    proc = _launch(tmp_path, busy)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert proc.stderr.splitlines()[-1].strip() == "host localhost: NPU 4 link is DOWN (hccn_tool -i 4 -link -g), not UP"
    assert "Traceback" not in proc.stderr and "rank 0" not in proc.stdout
    assert not (tmp_path / "runs").exists()  # nothing started, no job folder
    proc = _launch(tmp_path, busy, "--skip-preflight")
    assert proc.returncode == 0 and "rank 1 cpus" in proc.stdout, proc.stderr[-2000:]
