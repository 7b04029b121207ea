"""Typed objects passed between the launcher's layers: the cluster file, the rank plan, a job.

All frozen dataclasses; mappings are stored as tuples of pairs so that specs stay hashable. The
cluster file's words (backend, scheduler, ascend.init, rank_table_version) are str-valued enums
defined here once, so JSON, YAML and messages keep the words while code compares members.
"""
from __future__ import annotations

import dataclasses
import enum
import ipaddress
from dataclasses import dataclass, field
from typing import Any, Optional

from trainer.config import TrainConfig, from_dict as train_config_from_dict


class _Word(str, enum.Enum):
    """A str-valued enum that prints as its word (``f"{Backend.CPU}"`` is ``cpu`` on every Python)."""

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)


class Backend(_Word):
    """``backend:``: how the ranks form a cluster."""

    CPU = "cpu"  # MindSpore's dynamic cluster on CPU
    ASCEND = "ascend"  # NPUs and HCCL, started as ascend.init says


class SchedulerKind(_Word):
    """``scheduler:``: where the hosts come from and how processes start on them."""

    SSH = "ssh"  # the hosts: list, over SSH (a local host directly)
    SLURM = "slurm"  # the allocation's nodes, through srun


class AscendInit(_Word):
    """``ascend.init``: how HCCL starts (see ``AscendSpec``)."""

    DYNAMIC = "dynamic"  # msrun's way: a scheduler process and the MS_* variables
    RANKTABLE = "ranktable"  # every process gets RANK_TABLE_FILE


class RankTableVersion(_Word):
    """``ascend.rank_table_version``: the rank table's format."""

    V1_0 = "1.0"  # servers and their NPUs
    V1_2 = "1.2"  # Atlas A3 SuperPoD


class AtLaunch(_Word):
    """Placeholders of a preview plan (``mscluster plan``) for what is fixed only at launch; each
    prints as the text the plan shows. Code asks ``x is AtLaunch.JOB_DIR``, never compares text."""

    JOB_DIR = "<job dir>"
    SCHEDULER_PORT = "<free port at launch>"  # the launcher picks a free port
    EVENT_FD = "<pipe fd>"  # the agent opens each process's event pipe and fills in its number
    RANK_TABLE = "<discovered at launch>"  # the NPUs' IPs are asked at launch


LOCAL_ADDRESSES = ("localhost", "127.0.0.1", "::1")


def is_ipv4(text: str) -> bool:
    """Whether ``text`` is a dotted IPv4 address."""
    try:
        ipaddress.IPv4Address(text)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class SSHSpec:
    """How to reach remote hosts (fabric/paramiko settings)."""

    user: Optional[str] = None
    port: int = 22
    key_file: Optional[str] = None
    connect_timeout: float = 10.0
    strict_host_keys: bool = True
    known_hosts: Optional[str] = None  # None = ~/.ssh/known_hosts (and /etc/ssh/ssh_known_hosts)
    keepalive_interval: float = 5.0  # seconds between beats, launcher <-> agent, both ways
    keepalive_count: int = 3  # beats missed before a host (or, on the host, the launcher) is lost

    @property
    def silence_limit(self) -> float:
        """Seconds without a word after which the other side counts as lost."""
        return self.keepalive_interval * self.keepalive_count


@dataclass(frozen=True)
class WatchdogSpec:
    """When a rank counts as stalled, and how often ranks say they are alive (seconds)."""

    enabled: bool = True
    stall_timeout: Optional[float] = None  # no step for this long after the first step; None: auto (learned)
    startup_timeout: float = 900.0  # no first step for this long after the attempt began
    beat_interval: float = 5.0  # a liveness beat from each rank's background thread
    stacks: str = "auto"  # how stacks are taken: py-spy, faulthandler (no ptrace needed), auto (py-spy, else faulthandler)

    @property
    def frozen_after(self) -> float:
        """Seconds without a beat after which a rank counts as frozen (three beats missed)."""
        return 3 * self.beat_interval + 1.0

    @property
    def auto(self) -> bool:
        """``stall_timeout: auto``: each section's limit is learned from the job (launcher.watchdog.Learned)."""
        return self.stall_timeout is None


class StragglerAction(_Word):
    """``stragglers.action``: what the launcher does about a rank that runs slower than the others."""

    WARN = "warn"  # name it: a warning line, status.json, ``mscluster status``, result.json
    EXCLUDE = "exclude"  # name it, then at once: rank 0 saves, the attempt stops, its host is replaced (or shrunk)
    OFF = "off"  # score nothing


@dataclass(frozen=True)
class StragglerSpec:
    """When a rank counts as a straggler (``launcher.stragglers``).

    ``threshold`` 0.75: a rank slowed to 60% scores about 0.6, while the median of 10 steps with
    +-15% jitter on every rank keeps a healthy one above 0.85; ``window_steps`` 10: a median over
    10 steps ignores a checkpoint or a hiccup, and a window below the threshold names a rank
    slowed to 60% about 15 steps after it slowed."""

    action: StragglerAction = StragglerAction.WARN
    threshold: float = 0.75  # relative score (fastest median / own median) under which a rank is slow
    window_steps: int = 10  # steps each median is taken over, and how long a rank stays slow to be named

    def __post_init__(self) -> None:
        object.__setattr__(self, "action", StragglerAction(self.action))

    @property
    def enabled(self) -> bool:
        return self.action is not StragglerAction.OFF


@dataclass(frozen=True)
class ExclusionSpec:
    """When a host is taken out of the job, and for how long (``launcher.hostpool``).

    A host is excluded at once when it is lost, its rank crashed with a hardware-looking cause, its
    NPU pre-flight fails, or it is named a straggler with ``stragglers.action: exclude``; and when it
    is the root cause of ``after`` failures of any kind. Its ``cooldown`` doubles each time the same
    host is excluded again (Horovod elastic's exponential cooldown), up to ``MAX_COOLDOWN_FACTOR`` x."""

    after: int = 2  # failures a host may be the root cause of before it is excluded
    cooldown: float = 300.0  # seconds before an excluded host may come back (as a spare, after its pre-flight)


@dataclass(frozen=True)
class ElasticSpec:
    """``elastic:``: with no spare left, go on with fewer hosts, at the same global batch."""

    min_hosts: int = 1  # the fewest hosts the job may shrink to
    allow_batch_change: bool = False  # when batch x ranks x grad_accumulation cannot be kept exactly


@dataclass(frozen=True)
class SlurmSpec:
    """``scheduler: slurm``: the allocation's shape and what ``mscluster submit`` asks sbatch for."""

    nodes: Optional[int] = None  # None: every node of the allocation (submit asks for 1)
    devices_per_host: Optional[int] = None  # None: the backend's default (ascend 8, cpu 1)
    partition: Optional[str] = None
    account: Optional[str] = None
    time: Optional[str] = None  # sbatch --time, Slurm's format ("90", "1:30:00", "2-00:00:00")
    requeue: bool = False  # preempted (time limit near): requeue the job, which resumes
    warning_s: int = 120  # sbatch --signal=B:USR1@<warning_s>: USR1 this long before the time limit
    exclusive: bool = True  # whole nodes: every core of a node for its ranks
    start_timeout: float = 120.0  # seconds for the agent step to start on every node
    spares: int = 0  # nodes asked for beyond ``nodes``: they pass the pre-flight and stand by (launcher.hostpool)
    sbatch_options: tuple[str, ...] = ()  # more #SBATCH lines, e.g. ["--qos=high", "--gres=npu:8"]


DEFAULT_DEVICES_PER_HOST = {Backend.ASCEND: 8, Backend.CPU: 1}


@dataclass(frozen=True)
class AscendSpec:
    """``backend: ascend``: how HCCL starts, and the rank table's format when it starts from one.

    ``dynamic`` is msrun's way (MindSpore 2.x): a scheduler process and the ``MS_*`` variables,
    HCCL initialised from root info, no rank table. ``ranktable``: every process gets
    ``RANK_TABLE_FILE`` (the model zoo's ``run_distribute_train.sh``), version 1.0 (servers and
    their NPUs) or 1.2 (Atlas A3 SuperPoD: ``host_ip``, ``super_device_id``, ``super_pod_list``).
    """

    init: AscendInit = AscendInit.DYNAMIC
    rank_table_version: RankTableVersion = RankTableVersion.V1_0

    def __post_init__(self) -> None:
        # a word given as text (a test, dataclasses.replace) becomes its member; an unknown one raises ValueError
        object.__setattr__(self, "init", AscendInit(self.init))
        object.__setattr__(self, "rank_table_version", RankTableVersion(self.rank_table_version))


@dataclass(frozen=True)
class HostSpec:
    """One host of the cluster and the devices (NPUs, or CPU worker slots) it runs ranks on."""

    address: str
    devices: tuple[int, ...]
    device_ips: tuple[tuple[int, str], ...] = ()  # (device id, NPU ip) given in the cluster file
    node: Optional[str] = None  # its Slurm node name (scheduler: slurm); None for a host of hosts:
    # rank table 1.2 (Atlas A3 SuperPoD): the server's host IP (default: its address), its SuperPoD,
    # and each NPU's id in the SuperPoD (npu-smi info -t spod-info: SDID)
    host_ip: Optional[str] = None
    super_pod_id: Optional[str] = None
    super_device_ids: tuple[tuple[int, int], ...] = ()

    @property
    def is_local(self) -> bool:
        return self.address in LOCAL_ADDRESSES

    @property
    def sees_launch_folder(self) -> bool:
        """Whether its processes see the launcher's folders and interpreter at the same paths: a
        local host, or a Slurm node (srun starts a step in the folder it was run in)."""
        return self.is_local or self.node is not None

    @property
    def label(self) -> str:
        """How messages name it: ``n1 (10.0.0.2)`` for a Slurm node, else its address."""
        return f"{self.node} ({self.address})" if self.node is not None else self.address

    def device_ip(self, device_id: int) -> Optional[str]:
        return dict(self.device_ips).get(device_id)

    def super_device_id(self, device_id: int) -> Optional[int]:
        return dict(self.super_device_ids).get(device_id)


@dataclass(frozen=True)
class ClusterSpec:
    """A validated cluster file."""

    name: str
    backend: Backend
    hosts: tuple[HostSpec, ...]
    workdir: str = "runs"
    python: Optional[str] = None
    ssh: SSHSpec = field(default_factory=SSHSpec)
    restarts: int = 0
    bind_cores: bool = True
    env: tuple[tuple[str, str], ...] = ()
    train: tuple[tuple[str, Any], ...] = ()  # the trainer's own keys, validated by trainer.config
    scheduler_port: Optional[int] = None  # cpu backend; None = a free port at launch
    command: tuple[str, ...] = ()  # the argv every rank runs; () = the built-in trainer with train:
    cwd: Optional[str] = None  # a command's folder on every host; None = the folder launch runs in
    console: Optional[tuple[int, ...]] = (0,)  # ranks whose every line the terminal shows; None = all
    watchdog: WatchdogSpec = field(default_factory=WatchdogSpec)
    stragglers: StragglerSpec = field(default_factory=StragglerSpec)
    spares: tuple[HostSpec, ...] = ()  # hosts that pass the pre-flight and stand by to replace a failed one
    exclusion: ExclusionSpec = field(default_factory=ExclusionSpec)
    elastic: Optional[ElasticSpec] = None  # None: no spare left means the job ends, naming the host
    scheduler: SchedulerKind = SchedulerKind.SSH
    slurm: SlurmSpec = field(default_factory=SlurmSpec)
    ascend: AscendSpec = field(default_factory=AscendSpec)
    source: str = "<cluster file>"  # the path it was read from, for messages
    # the train: section parsed (the trainer's defaults for keys not given); derived from train
    train_config: TrainConfig = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "backend", Backend(self.backend))
        object.__setattr__(self, "scheduler", SchedulerKind(self.scheduler))
        # parsed once here, so dataclasses.replace(train=...) cannot leave a stale copy
        object.__setattr__(self, "train_config", train_config_from_dict(dict(self.train), source="train"))

    @property
    def uses_scheduler(self) -> bool:
        """Whether the job has a dynamic-cluster scheduler: cpu, and ascend started as msrun does."""
        return self.backend is Backend.CPU or self.ascend.init is AscendInit.DYNAMIC

    @property
    def uses_rank_table(self) -> bool:
        """Whether the ranks start HCCL from a rank table (``RANK_TABLE_FILE``)."""
        return self.backend is Backend.ASCEND and self.ascend.init is AscendInit.RANKTABLE

    @property
    def on_slurm(self) -> bool:
        return self.scheduler is SchedulerKind.SLURM

    @property
    def builtin_trainer(self) -> bool:
        """Whether the ranks run mscluster's own trainer (no ``command:``)."""
        return not self.command

    @property
    def world_size(self) -> int:
        return sum(len(h.devices) for h in self.hosts)

    def train_dict(self) -> dict[str, Any]:
        """The ``train:`` section as given (the keys the file sets)."""
        return dict(self.train)

    def train_section(self, **changes: Any) -> dict[str, Any]:
        """The ``train:`` section as given with ``changes`` on top, each a ``TrainConfig`` field.

        Raises:
            TypeError: a name that is no training setting.
        """
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(TrainConfig)})
        if unknown:
            raise TypeError(f"not training settings: {', '.join(unknown)}")
        return {**dict(self.train), **changes}

    def with_train(self, **changes: Any) -> "ClusterSpec":
        """This cluster with ``changes`` (``TrainConfig`` fields) set in its ``train:`` section."""
        return dataclasses.replace(self, train=tuple(self.train_section(**changes).items()))

    def env_dict(self) -> dict[str, str]:
        return dict(self.env)


@dataclass(frozen=True)
class RankAssignment:
    """Where one rank runs: global rank, host, device, and its place among the host's ranks."""

    rank: int
    host: str
    host_index: int
    device_id: int
    local_rank: int
    local_size: int
    world_size: int


@dataclass(frozen=True)
class SchedulerAssignment:
    """The dynamic cluster's scheduler process (cpu, and ascend with ``init: dynamic``)."""

    host: str
    port: Optional[int]  # None until the launcher picks a free port (launcher.plan.with_scheduler_port)


@dataclass(frozen=True)
class Plan:
    """Every rank of a job, in rank order, plus the dynamic cluster's scheduler where there is one."""

    cluster: ClusterSpec
    ranks: tuple[RankAssignment, ...]
    scheduler: Optional[SchedulerAssignment] = None

    def ranks_on(self, host: str) -> tuple[RankAssignment, ...]:
        return tuple(r for r in self.ranks if r.host == host)
