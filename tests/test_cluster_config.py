"""Cluster files: what a user gets back for good and bad files (one-line errors naming file, field, line)."""
from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from launcher.slurm import allocation as slurm_alloc
from launcher.config import load_cluster, parse_cluster, resolved_yaml
from launcher.errors import ConfigError
from launcher.plan import plan_ranks
from launcher.spec import AscendInit, AscendSpec, Backend, HostSpec, RankTableVersion, SchedulerKind, SSHSpec
from trainer import config as train_config

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = sorted((ROOT / "cluster_configs").glob("*.yaml"))

LOCAL_HOST = "hosts:\n  - {address: localhost, devices: 1}\n"


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "cluster.yaml"
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return str(path)


def error_of(tmp_path: Path, text: str, set_pairs=()) -> tuple[str, str]:
    """The message load_cluster raises for ``text``, and the file's path."""
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_cluster(path, set_pairs)
    message = str(info.value)
    assert "\n" not in message, message
    return path, message


# Each case: the file, the line and field the message must name, and a fragment of the reason.
BAD_FILES = [
    ("unknown top-level key", """
        name: a
        hosts:
          - {address: localhost, devices: 1}
        restart: 1
        """, 4, "restart", "did you mean 'restarts'"),
    ("unknown host key", """
        name: a
        hosts:
          - {address: localhost, devices: 1, gpus: 2}
        """, 3, "hosts[0].gpus", "unknown key 'gpus'"),
    ("unknown ssh key", """
        name: a
        ssh:
          user: me
          prot: 22
        hosts:
          - {address: localhost, devices: 1}
        """, 4, "ssh.prot", "did you mean 'port'"),
    ("unknown train key", """
        name: a
        hosts:
          - {address: localhost, devices: 1}
        train:
          epoch: 2
        """, 5, "train.epoch", "did you mean 'epochs'"),
    ("missing host address", """
        name: a
        hosts:
          - {devices: 1}
        """, 3, "hosts[0].address", "missing"),
    ("missing host devices", """
        name: a
        hosts:
          - address: localhost
        """, 3, "hosts[0].devices", "missing"),
    ("empty host list", """
        name: a
        hosts: []
        """, 2, "hosts", "at least one host"),
    ("hosts not a list", """
        name: a
        hosts: localhost
        """, 2, "hosts", "expected a list"),
    ("host not a mapping", """
        name: a
        hosts:
          - localhost
        """, 3, "hosts[0]", "expected a mapping"),
    ("duplicate host", """
        name: a
        hosts:
          - {address: 10.0.0.1, devices: 1}
          - {address: 10.0.0.1, devices: 1}
        """, 4, "hosts[1].address", "duplicate host"),
    ("two loopback names for one machine", """
        name: a
        hosts:
          - {address: localhost, devices: 1}
          - {address: 127.0.0.1, devices: 1}
        """, 4, "hosts[1].address", "same machine as hosts[0]"),
    ("duplicate device id", """
        name: a
        hosts:
          - address: localhost
            devices:
              - 0
              - 1
              - 1
        """, 7, "hosts[0].devices[2]", "duplicate device id 1"),
    ("negative device id", """
        name: a
        hosts:
          - {address: localhost, devices: [0, -1]}
        """, 3, "hosts[0].devices[1]", "device ids are 0..65535, got -1"),
    ("device count zero", """
        name: a
        hosts:
          - {address: localhost, devices: 0}
        """, 3, "hosts[0].devices", "must be > 0"),
    ("device count of the wrong type", """
        name: a
        hosts:
          - {address: localhost, devices: two}
        """, 3, "hosts[0].devices", "expected a count or a list"),
    ("empty device list", """
        name: a
        hosts:
          - {address: localhost, devices: []}
        """, 3, "hosts[0].devices", "at least one device"),
    ("unknown backend", """
        name: a
        backend: gpu
        hosts:
          - {address: localhost, devices: 1}
        """, 2, "backend", "expected one of cpu, ascend"),
    ("ascend servers with different device counts", """
        name: a
        backend: ascend
        hosts:
          - {address: 10.0.0.1, devices: 8}
          - {address: 10.0.0.2, devices: 4}
        """, 5, "hosts[1].devices", "same number on every server"),
    ("ascend server with more than 8 NPUs", """
        name: a
        backend: ascend
        hosts:
          - {address: 10.0.0.1, devices: 9}
        """, 4, "hosts[0].devices", "at most 8 NPUs"),
    ("ascend device id above 7", """
        name: a
        backend: ascend
        hosts:
          - {address: 10.0.0.1, devices: [0, 8]}
        """, 4, "hosts[0].devices[1]", "0..7"),
    ("ascend host named instead of its IP", """
        name: a
        backend: ascend
        hosts:
          - {address: npu-server, devices: 8}
        """, 4, "hosts[0].address", "server_id"),
    ("device_ips key not among the devices", """
        name: a
        backend: ascend
        hosts:
          - address: 10.0.0.1
            devices: [0, 1]
            device_ips:
              0: 192.98.92.100
              2: 192.98.92.102
        """, 8, "hosts[0].device_ips.2", "not among this host's devices"),
    ("device_ips value not IPv4", """
        name: a
        backend: ascend
        hosts:
          - {address: 10.0.0.1, devices: 1, device_ips: {0: 300.1.1.1}}
        """, 4, "hosts[0].device_ips.0", "expected an IPv4 address"),
    ("device_ips on cpu", """
        name: a
        hosts:
          - {address: localhost, devices: 1, device_ips: {0: 192.98.92.100}}
        """, 3, "hosts[0].device_ips", "only used by the ascend backend"),
    ("env name not a variable name", """
        name: a
        hosts:
          - {address: localhost, devices: 1}
        env:
          GLOG_v: "2"
          1BAD: x
        """, 6, "env.1BAD", "not a valid environment variable name"),
    ("env name the launcher sets", """
        name: a
        hosts:
          - {address: localhost, devices: 1}
        env: {RANK_ID: "3"}
        """, 4, "env.RANK_ID", "set by the launcher"),
    ("env name in the launcher's namespace", """
        name: a
        hosts:
          - {address: localhost, devices: 1}
        env: {MSCLUSTER_RESTART_COUNT: "1"}
        """, 4, "env.MSCLUSTER_RESTART_COUNT", "set by the launcher"),
    ("env value true", """
        name: a
        hosts:
          - {address: localhost, devices: 1}
        env:
          FLAG: true
        """, 5, "env.FLAG", "quote true/false/null"),
    ("ssh port out of range", """
        name: a
        ssh: {port: 70000}
        hosts:
          - {address: localhost, devices: 1}
        """, 2, "ssh.port", "1..65535"),
    ("ssh timeout zero", """
        name: a
        ssh:
          connect_timeout: 0
        hosts:
          - {address: localhost, devices: 1}
        """, 3, "ssh.connect_timeout", "must be > 0"),
    ("scheduler port zero", """
        name: a
        hosts:
          - {address: localhost, devices: 1}
        scheduler_port: 0
        """, 4, "scheduler_port", "1..65535"),
    ("scheduler port on ascend started from a rank table", """
        name: a
        backend: ascend
        ascend: {init: ranktable}
        hosts:
          - {address: localhost, devices: 8}
        scheduler_port: 29500
        """, 6, "scheduler_port", "not used with ascend.init: ranktable"),
    ("an ascend init mode that does not exist", """
        name: a
        backend: ascend
        ascend: {init: hccl}
        hosts:
          - {address: localhost, devices: 8}
        """, 3, "ascend.init", "expected one of dynamic, ranktable, got 'hccl'"),
    ("a rank table version without a rank table", """
        name: a
        backend: ascend
        ascend: {rank_table_version: "1.2"}
        hosts:
          - {address: localhost, devices: 8}
        """, 3, "ascend.rank_table_version", "only used with init: ranktable"),
    ("a rank table version CANN does not have", """
        name: a
        backend: ascend
        ascend: {init: ranktable, rank_table_version: 2.1}
        hosts:
          - {address: localhost, devices: 8}
        """, 3, "ascend.rank_table_version", "expected one of 1.0, 1.2, got '2.1'"),
    ("ascend settings on cpu", """
        name: a
        ascend: {init: dynamic}
        hosts:
          - {address: localhost, devices: 2}
        """, 2, "ascend", "only used by the ascend backend"),
    ("rank table 1.2 without the server's SuperPoD", """
        name: a
        backend: ascend
        ascend: {init: ranktable, rank_table_version: "1.2"}
        hosts:
          - {address: 10.0.0.1, devices: 2, super_device_ids: {0: 0, 1: 1}}
        """, 5, "hosts[0].super_pod_id", "missing: rank table 1.2 lists every server in its SuperPoD"),
    ("rank table 1.2 without an NPU's SDID", """
        name: a
        backend: ascend
        ascend: {init: ranktable, rank_table_version: "1.2"}
        hosts:
          - {address: 10.0.0.1, devices: 2, super_pod_id: 0, super_device_ids: {0: 0}}
        """, 5, "hosts[0].super_device_ids", "missing for device(s) 1"),
    ("an SDID for a device the host does not run", """
        name: a
        backend: ascend
        hosts:
          - {address: 10.0.0.1, devices: 2, super_device_ids: {5: 5}}
        """, 4, "hosts[0].super_device_ids.5", "device 5 is not among this host's devices (0, 1)"),
    ("a SuperPoD split by another", """
        name: a
        backend: ascend
        ascend: {init: ranktable, rank_table_version: "1.2"}
        hosts:
          - {address: 10.0.0.1, devices: 1, super_pod_id: 0, super_device_ids: {0: 0}}
          - {address: 10.0.0.2, devices: 1, super_pod_id: 1, super_device_ids: {0: 0}}
          - {address: 10.0.0.3, devices: 1, super_pod_id: 0, super_device_ids: {0: 1}}
        """, 7, "hosts[2].super_pod_id", "SuperPoD '0' again after another one"),
    ("negative restarts", """
        name: a
        hosts:
          - {address: localhost, devices: 1}
        restarts: -1
        """, 4, "restarts", "must be 0..100"),
    ("restarts not an integer", """
        name: a
        hosts:
          - {address: localhost, devices: 1}
        restarts: often
        """, 4, "restarts", "expected an integer"),
    ("bind_cores not a boolean", """
        name: a
        hosts:
          - {address: localhost, devices: 1}
        bind_cores: 1
        """, 4, "bind_cores", "expected true or false"),
    ("name not usable as a folder", """
        name: my/job
        hosts:
          - {address: localhost, devices: 1}
        """, 1, "name", "names job folders"),
    ("name not a string", """
        name: [a]
        hosts:
          - {address: localhost, devices: 1}
        """, 1, "name", "expected a non-empty string"),
    ("duplicate YAML key", """
        name: a
        hosts:
          - {address: localhost, devices: 1}
        name: b
        """, 4, "name", "duplicate key (first at line 1)"),
    ("user in the address", """
        name: a
        hosts:
          - {address: me@10.0.0.1, devices: 1}
        """, 3, "hosts[0].address", "ssh.user"),
    ("loopback host among remote cpu hosts", """
        name: a
        hosts:
          - {address: localhost, devices: 1}
          - {address: 10.0.0.2, devices: 1}
        """, 3, "hosts[0].address", "loopback name"),
    ("loopback host among remote ascend servers", """
        name: a
        backend: ascend
        hosts:
          - {address: 10.0.0.1, devices: 8}
          - {address: 127.0.0.1, devices: 8}
        """, 5, "hosts[1].address", "loopback name"),
    ("cpu scheduler host named instead of its IP", """
        name: a
        hosts:
          - {address: node1, devices: 1}
          - {address: node2, devices: 1}
        """, 3, "hosts[0].address", "MS_SCHED_HOST"),
    ("train value out of range", """
        name: a
        hosts:
          - {address: localhost, devices: 1}
        train:
          epochs: 2
          batch_size: 0
        """, 6, "train.batch_size", "must be > 0"),
    ("train value of the wrong type", """
        name: a
        hosts:
          - {address: localhost, devices: 1}
        train:
          lr: fast
        """, 5, "train.lr", "expected a number"),
    ("train choice not offered", """
        name: a
        hosts:
          - {address: localhost, devices: 1}
        train: {arch: vgg16}
        """, 4, "train.arch", "expected one of resnet18"),
    ("grad_accumulation of zero", """
        name: a
        hosts:
          - {address: localhost, devices: 1}
        train: {grad_accumulation: 0}
        """, 4, "train.grad_accumulation", "must be > 0"),
    ("an exchange dtype MindSpore's CPU collective does not take", """
        name: a
        hosts:
          - {address: localhost, devices: 1}
        train: {grad_allreduce_dtype: bfloat16}
        """, 4, "train.grad_allreduce_dtype", "expected one of float32, float16"),
    ("grad_buckets too many", """
        name: a
        hosts:
          - {address: localhost, devices: 1}
        train: {grad_buckets: 5000}
        """, 4, "train.grad_buckets", "at most 1024"),
    ("buckets with the shared-memory exchange, which has none", """
        name: a
        hosts:
          - {address: localhost, devices: 2}
        train: {grad_exchange: shared_memory, grad_buckets: 8}
        """, 4, "train", "grad_buckets: applies to grad_exchange collective"),
    ("sink mode with the trainer's own step loop", """
        name: a
        hosts:
          - {address: localhost, devices: 2}
        train: {sink_mode: true, grad_accumulation: 4}
        """, 4, "train", "sink_mode: sinks MindSpore's own step"),
    ("the shared-memory exchange on Ascend", """
        name: a
        backend: ascend
        hosts:
          - {address: 10.0.0.1, devices: [0, 1]}
        train: {grad_exchange: shared_memory}
        """, 5, "train.grad_exchange", "shared_memory is for backend cpu"),
    ("spares without restarts", """
        name: a
        hosts:
          - {address: 10.0.0.1, devices: 2}
        spares:
          - {address: 10.0.0.9, devices: 2}
        """, 4, "spares", "needs restarts: 1 or more"),
    ("a spare that is a host of the job", """
        name: a
        hosts:
          - {address: 10.0.0.1, devices: 2}
        restarts: 1
        spares:
          - {address: 10.0.0.1, devices: 2}
        """, 6, "spares[0].address", "is already hosts[0]"),
    ("a spare on a loopback name", """
        name: a
        hosts:
          - {address: localhost, devices: 2}
        restarts: 1
        spares: [{address: 127.0.0.1, devices: 2}]
        """, 5, "spares[0].address", "loopback name"),
    ("a spare with too few devices", """
        name: a
        hosts:
          - {address: 10.0.0.1, devices: 2}
        restarts: 1
        spares: [{address: 10.0.0.9, devices: 1}]
        """, 5, "spares[0].devices", "cannot stand in for any host"),
    ("a cpu spare by name", """
        name: a
        hosts:
          - {address: 10.0.0.1, devices: 2}
        restarts: 1
        spares: [{address: spare1, devices: 2}]
        """, 5, "spares[0].address", "write its IP"),
    ("spares under slurm", """
        name: a
        scheduler: slurm
        restarts: 1
        spares: [{address: 10.0.0.9, devices: 2}]
        """, 4, "spares", "slurm.spares: N"),
    ("slurm spares without restarts", """
        name: a
        scheduler: slurm
        slurm: {nodes: 2, spares: 1}
        """, 3, "slurm.spares", "needs restarts"),
    ("elastic min_hosts above the hosts", """
        name: a
        hosts:
          - {address: 10.0.0.1, devices: 2}
        restarts: 1
        elastic: {min_hosts: 2}
        """, 5, "elastic.min_hosts", "more than the job's 1 host"),
    ("elastic without min_hosts", """
        name: a
        hosts:
          - {address: 10.0.0.1, devices: 2}
        restarts: 1
        elastic: {allow_batch_change: true}
        """, 5, "elastic.min_hosts", "missing (required)"),
    ("elastic misspelt", """
        name: a
        hosts:
          - {address: 10.0.0.1, devices: 2}
        restarts: 1
        elastic: {min_host: 1}
        """, 5, "elastic.min_host", "unknown key"),
    ("exclusion after 0", """
        name: a
        hosts:
          - {address: 10.0.0.1, devices: 2}
        exclusion: {after: 0}
        """, 4, "exclusion.after", "must be 1..100"),
    ("exclusion cooldown not a number", """
        name: a
        hosts:
          - {address: 10.0.0.1, devices: 2}
        exclusion: {cooldown: soon}
        """, 4, "exclusion.cooldown", "expected seconds"),
    ("straggler exclusion without restarts", """
        name: a
        hosts:
          - {address: 10.0.0.1, devices: 2}
        stragglers: {action: exclude}
        """, 4, "stragglers.action", "needs restarts"),
    ("train not a mapping", """
        name: a
        hosts:
          - {address: localhost, devices: 1}
        train: [epochs]
        """, 4, "train", "expected a mapping of training settings"),
]


@pytest.mark.parametrize("text,line,field,reason", [case[1:] for case in BAD_FILES],
                         ids=[case[0] for case in BAD_FILES])
def test_bad_field_is_named_with_file_and_line(tmp_path, text, line, field, reason):
    path, message = error_of(tmp_path, text)
    assert message.startswith(f"{path}:{line}: {field}: "), message
    assert reason in message


@pytest.mark.parametrize("text,field", [
    (LOCAL_HOST, "name"),
    ("name: a\n", "hosts"),
    ("", "name"),
])
def test_missing_required_field(tmp_path, text, field):
    path, message = error_of(tmp_path, text)
    assert message == f"{path}: {field}: missing (required)"


@pytest.mark.parametrize("text,line,fragment", [
    ("name: a\nhosts:\n  - address: localhost\n   devices: 1\n", 4, "expected <block end>"),
    ("name: a\nhosts: [\n  {address: x, devices: 1}\nrestarts: 0\n", 2, "'[' or '{' opened on this line is not closed"),
    ("name: a\n\tb: 1\n", 2, "'\\t'"),
])
def test_not_yaml_names_the_line(tmp_path, text, line, fragment):
    path, message = error_of(tmp_path, text)
    assert message.startswith(f"{path}:{line}: not valid YAML: "), message
    assert fragment in message


def test_a_list_instead_of_a_mapping(tmp_path):
    path, message = error_of(tmp_path, "- name: a\n")
    assert message.startswith(f"{path}:1: expected a mapping of cluster settings")


def test_missing_file_is_one_line(tmp_path):
    missing = str(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match=r"nope\.yaml: no such cluster file$"):
        load_cluster(missing)
    with pytest.raises(ConfigError, match="is a folder"):
        load_cluster(str(tmp_path))


def test_defaults_and_normalised_values(tmp_path):
    spec = load_cluster(write(tmp_path, """
        name: demo
        hosts:
          - {address: localhost, devices: [3, 1]}
        env: {THREADS: 4, RATIO: 0.5}
        train: {lr: 1, epochs: 2}
        """))
    assert spec.backend == "cpu"
    assert spec.workdir == "runs"
    assert spec.python is None
    assert spec.ssh == SSHSpec()
    assert spec.restarts == 0 and spec.bind_cores is True and spec.scheduler_port is None
    assert spec.hosts == (HostSpec(address="localhost", devices=(1, 3)),)  # ids in order
    assert spec.env_dict() == {"THREADS": "4", "RATIO": "0.5"}  # values become strings
    assert spec.train_dict() == {"lr": 1.0, "epochs": 2}
    assert isinstance(spec.train_dict()["lr"], float)
    assert spec.source.endswith("cluster.yaml")


def test_device_count_and_device_ips(tmp_path):
    spec = load_cluster(write(tmp_path, """
        name: npu
        backend: ascend
        hosts:
          - {address: 10.0.0.1, devices: 2, device_ips: {1: 192.98.92.101, "0": 192.98.92.100}}
        """))
    host = spec.hosts[0]
    assert host.devices == (0, 1)
    assert host.device_ip(0) == "192.98.92.100" and host.device_ip(1) == "192.98.92.101"


def test_merge_keys_keep_working(tmp_path):
    spec = load_cluster(write(tmp_path, """
        name: anchors
        backend: ascend
        hosts:
          - &server {address: 10.0.0.1, devices: 8}
          - <<: *server
            address: 10.0.0.2
        """))
    assert [h.address for h in spec.hosts] == ["10.0.0.1", "10.0.0.2"]
    assert spec.world_size == 16


# ---------------------------------------------------------------- --set

BASE = """
    name: a
    hosts:
      - {address: localhost, devices: 2}
    ssh:
      port: 22
    train:
      epochs: 1
    """


def test_set_pairs_apply_before_validation(tmp_path):
    spec = load_cluster(write(tmp_path, BASE),
                        ["train.epochs=3", "restarts=1", "ssh.port=2222", "train.lr=0.2", "env.GLOG_v=3"])
    assert spec.train_dict() == {"epochs": 3, "lr": 0.2}
    assert spec.restarts == 1
    assert spec.ssh.port == 2222
    assert spec.env_dict() == {"GLOG_v": "3"}


@pytest.mark.parametrize("pair,field,reason", [
    ("restarts=-1", "restarts", "must be 0..100"),
    ("train.epochs=0", "train.epochs", "must be > 0"),
    ("ssh.port=99999", "ssh.port", "1..65535"),
    ("restart=1", "restart", "did you mean 'restarts'"),
    ("train.epoch=2", "train.epoch", "did you mean 'epochs'"),
    ("backend=tpu", "backend", "expected one of cpu, ascend"),
])
def test_bad_set_pair_says_from_set(tmp_path, pair, field, reason):
    path, message = error_of(tmp_path, BASE, [pair])
    assert message.startswith(f"{path}: {field} (from --set): "), message
    assert reason in message


def test_set_pair_without_value(tmp_path):
    path, message = error_of(tmp_path, BASE, ["train.epochs"])
    assert message.startswith(f"{path}: --set 'train.epochs': expected key=value")


def test_a_file_error_beside_set_pairs_keeps_its_line(tmp_path):
    path, message = error_of(tmp_path, BASE.replace("epochs: 1", "epochs: -1"), ["restarts=1"])
    assert message.startswith(f"{path}:7: train.epochs: ")


# ---------------------------------------------------------------- shipped files and round trips

def test_every_shipped_file_parses_and_plans():
    assert {p.name for p in SHIPPED} >= {"local_cpu.yaml", "ascend_1x8.yaml", "ascend_2x8.yaml", "cpu_2hosts.yaml"}
    expected = {"local_cpu.yaml": ("cpu", 2), "ascend_1x8.yaml": ("ascend", 8),
                "ascend_2x8.yaml": ("ascend", 16), "cpu_2hosts.yaml": ("cpu", 4), "slurm_cpu.yaml": ("cpu", 2)}
    for path in SHIPPED:
        spec = load_cluster(str(path))
        if spec.on_slurm:  # its hosts come from the allocation: plan it on placeholder nodes, as `plan` does
            spec = slurm_alloc.with_allocation(spec, slurm_alloc.placeholder_allocation(spec))
        plan = plan_ranks(spec)
        if path.name in expected:
            assert (spec.backend, len(plan.ranks)) == expected[path.name], path.name
        # the trainer reads the same train: section on every rank
        assert train_config.load(str(path)) == train_config.from_dict(spec.train_dict())


def test_local_demo_is_small_and_fast():
    config = train_config.from_dict(load_cluster(str(ROOT / "cluster_configs" / "local_cpu.yaml")).train_dict())
    assert config.image_size == 32 and config.width <= 32 and config.steps_per_epoch is not None
    assert config.data_dir == "data/cifar-10-batches-bin"


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_resolved_yaml_round_trips(path):
    spec = load_cluster(str(path), ["restarts=2"])
    text = resolved_yaml(spec)
    assert parse_cluster(text, spec.source) == spec
    assert "restarts: 2" in text


def test_resolved_yaml_round_trips_every_field(tmp_path):
    spec = load_cluster(write(tmp_path, """
        name: full
        backend: ascend
        workdir: /scratch/runs
        python: /opt/venv/bin/python
        ssh: {user: train, port: 2222, key_file: /keys/id, connect_timeout: 3.5,
              strict_host_keys: false, known_hosts: /keys/known_hosts}
        hosts:
          - {address: 10.0.0.1, devices: [0, 1], device_ips: {0: 192.98.92.100, 1: 192.98.93.100}}
          - {address: 10.0.0.2, devices: [4, 5]}
        restarts: 3
        bind_cores: false
        env: {GLOG_v: "1", SOME_ID: "007"}
        train: {resume: "123", epochs: 5, lr: 0.1}
        spares: [{address: 10.0.0.9, devices: [4, 5, 6, 7], device_ips: {4: 192.98.92.104}}]
        exclusion: {after: 3, cooldown: 60}
        elastic: {min_hosts: 1, allow_batch_change: true}
        stragglers: {action: exclude}
        """))
    again = parse_cluster(resolved_yaml(spec), spec.source)
    assert again.spares[0].device_ips == ((4, "192.98.92.104"),) and again.elastic.allow_batch_change
    assert again == spec
    assert again.env_dict()["SOME_ID"] == "007" and again.train_dict()["resume"] == "123"


def test_the_files_words_are_typed_and_written_back_as_words(tmp_path):
    spec = load_cluster(write(tmp_path, """
        name: npus
        backend: ascend
        ascend: {init: ranktable, rank_table_version: 1.2}
        hosts:
          - {address: 10.0.0.1, devices: 1, super_pod_id: 0, super_device_ids: {0: 7}}
        """))
    assert spec.backend is Backend.ASCEND and spec.scheduler is SchedulerKind.SSH
    assert spec.ascend.init is AscendInit.RANKTABLE and spec.ascend.rank_table_version is RankTableVersion.V1_2
    text = resolved_yaml(spec)  # the job folder's cluster.yaml: plain words, no Python tags
    assert "backend: ascend\n" in text and "init: ranktable\n" in text and "rank_table_version: '1.2'" in text
    assert "!!" not in text and parse_cluster(text, spec.source) == spec
    # a spec built in code from the words gets the same members
    assert AscendSpec(init="dynamic").init is AscendInit.DYNAMIC
    with pytest.raises(ValueError):
        AscendSpec(init="Dynamic")


def test_training_settings_are_read_typed_and_set_by_name(tmp_path):
    spec = load_cluster(write(tmp_path, "name: t\n" + LOCAL_HOST + "train: {epochs: 2}\n"))
    assert spec.train_config.epochs == 2 and spec.train_config.arch == "resnet50"  # the trainer's default
    assert not spec.train_config.resumes
    assert load_cluster(spec.source, ["train.resume=auto"]).train_config.resumes
    again = spec.with_train(resume=train_config.RESUME_AUTO)
    assert again.train_config.resumes and again.train_dict() == {"epochs": 2, "resume": "auto"}
    assert spec.train_section(output_dir="/j") == {"epochs": 2, "output_dir": "/j"}  # only what was given, plus it
    with pytest.raises(TypeError, match="resum"):
        spec.with_train(resum="auto")
    with pytest.raises(train_config.ConfigError, match="epochs"):
        spec.with_train(epochs=0)  # checked as the file's values are
