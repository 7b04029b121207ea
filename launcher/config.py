"""Cluster file (YAML) -> a validated ``ClusterSpec``; and back, for the job folder.

Every error is a ``ConfigError`` of one line naming the file, the field path and the line, e.g.
``cluster.yaml:7: hosts[1].devices[2]: duplicate device id 1``; a field set on the command line
says ``(from --set)`` instead of a line. The file is composed with ``yaml.compose`` so that each
node keeps its line; ``--set`` pairs (``train.epochs=3``) are merged in before validation.

The format (see cluster_configs/ for commented examples)::

    name: resnet50-cifar10
    backend: cpu              # cpu | ascend
    workdir: runs
    python: null
    ssh: {user: null, port: 22, key_file: null, connect_timeout: 10, strict_host_keys: true, known_hosts: null,
          keepalive_interval: 5, keepalive_count: 3}
    hosts:
      - {address: localhost, devices: 2}
      - {address: 10.0.0.2, devices: [0, 1, 2, 3], device_ips: {0: 192.98.92.100}}
    scheduler_port: null
    restarts: 0
    bind_cores: true
    env: {GLOG_v: "2"}
    console: [0]              # ranks whose every line the terminal shows (or: all); warnings always show
    train: {epochs: 1, image_size: 32}     # the built-in trainer's settings, or instead:
    command: [python, my_train.py, --epochs, "2"]   # the program every rank runs
    cwd: /shared/project      # its folder on every host (default: the folder launch runs in)
    watchdog: {stall_timeout: auto, startup_timeout: 900, beat_interval: 5}   # or: false; stall_timeout: 300
    stragglers: {action: warn, threshold: 0.75, window_steps: 10}   # action: off scores nothing; exclude
    spares:                   # stand by; one takes a failed host's place at the next restart
      - {address: 10.0.0.9, devices: [0, 1, 2, 3]}
    exclusion: {after: 2, cooldown: 300}   # a host that caused 2 failures is excluded, for 300 s (doubling)
    elastic: {min_hosts: 1, allow_batch_change: false}   # no spare left: go on with fewer hosts
    scheduler: ssh            # ssh (the hosts: above) | slurm (the allocation's nodes, no hosts:)
    slurm: {nodes: 2, devices_per_host: 1, partition: null, account: null, time: "1:00:00", requeue: false,
            warning_s: 120, exclusive: true, start_timeout: 120, spares: 0, sbatch_options: []}
"""
from __future__ import annotations

import difflib
import enum
import math
import re
from dataclasses import fields
from typing import Any, Iterable, Mapping, Optional, Sequence, TypeVar

import yaml

from launcher import settings
from launcher.errors import ConfigError
from launcher.plan import is_reserved_env
from launcher.settings import ASCEND_MAX_DEVICES, MAX_DEVICE_ID, MAX_DEVICES_PER_HOST, MAX_SDID
from launcher.watchdog import AUTO_FLOOR_S
from launcher.spec import (DEFAULT_DEVICES_PER_HOST, AscendInit, AscendSpec, Backend, ClusterSpec, ElasticSpec,
                           ExclusionSpec, HostSpec,
                           RankTableVersion, SchedulerKind, SlurmSpec, SSHSpec, StragglerAction, StragglerSpec,
                           WatchdogSpec, is_ipv4)
from mscluster import safeyaml
from trainer import config as train_config
from trainer.errors import ConfigError as TrainConfigError
from trainer.overrides import OverrideError, merge, parse_pairs

# the keys, defaults, bounds, choices and patterns are launcher/settings.py's (the reference page's too)
TOP, HOST, SSH, SLURM, ASCEND, WATCHDOG = (settings.TOP, settings.HOST, settings.SSH, settings.SLURM,
                                           settings.ASCEND, settings.WATCHDOG)
STRAGGLERS, EXCLUSION, ELASTIC = settings.STRAGGLERS, settings.EXCLUSION, settings.ELASTIC
TOP_KEYS = TOP.keys()
SLURM_KEYS = SLURM.keys()
SSH_KEYS = SSH.keys()
HOST_KEYS = HOST.keys()
ASCEND_KEYS = ASCEND.keys()
TRAIN_KEYS = settings.TRAIN.keys()

# every pattern is used with fullmatch: ``$`` would accept a trailing newline
_NAME = re.compile(TOP["name"].kind.pattern)  # it names job folders on every host
_ADDRESS = re.compile(HOST["address"].kind.pattern)
_HOST_PORT = re.compile(r"[^:]+:[0-9]+")  # one colon and digits: a port, not IPv6
_ENV_NAME = re.compile(TOP["env"].kind.key_pattern)
_PYTHON = re.compile(TOP["python"].kind.pattern)
_USER = re.compile(SSH["user"].kind.pattern)
RESTARTS = TOP["restarts"].kind

W = TypeVar("W", bound=enum.Enum)
Path = tuple  # field path: str keys and int list indices, e.g. ("hosts", 1, "devices", 2)


def format_path(path: Path) -> str:
    """``("hosts", 1, "devices", 2)`` -> ``hosts[1].devices[2]``."""
    text = ""
    for part in path:
        if isinstance(part, str) and not part.isprintable():
            part = repr(part)  # a key with a newline or NUL must not break the one-line message
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


class _Where:
    """Where each field came from: a line of the file, or ``--set``; builds the one-line errors."""

    def __init__(self, source: str, lines: dict[Path, int], set_paths: set[Path], command_given: bool = False,
                 texts: Optional[dict[Path, str]] = None):
        self.source = source
        self.lines = lines
        self.texts = texts or {}  # a scalar's text as written, where YAML read it as a number
        self.set_paths = set_paths
        self.command_given = command_given

    def error(self, path: Path, message: str) -> ConfigError:
        field = format_path(path)
        if path[:1] == ("command",) and self.command_given:
            return ConfigError(f"{self.source}: {field} (from the command line after --): {message}")
        given = tuple(str(part) for part in path)  # --set names list items as text: hosts.0.devices
        if any(given[:n] in self.set_paths for n in range(1, len(path) + 1)):
            return ConfigError(f"{self.source}: {field} (from --set): {message}")
        for n in range(len(path), 0, -1):
            if path[:n] in self.lines:
                return ConfigError(f"{self.source}:{self.lines[path[:n]]}: {field}: {message}")
        return ConfigError(f"{self.source}: {field}: {message}" if field else f"{self.source}: {message}")


# ---------------------------------------------------------------- reading

def load_cluster(path: str, set_pairs: Sequence[str] = (), command: Optional[Sequence[str]] = None) -> ClusterSpec:
    """Read and validate the cluster file at ``path``, with ``--set`` pairs applied.

    Args:
        command: the program given after ``--`` on the command line: it replaces the file's
            ``command:``, and its ``train:`` section (the built-in trainer's) is then not used.

    Raises:
        ConfigError: the file is missing or unreadable, not YAML, or a field is bad.
    """
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read(safeyaml.MAX_BYTES + 1)  # a larger file is refused without reading it all
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such cluster file") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a folder, not a cluster file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the cluster file ({exc})") from None
    return parse_cluster(text, path, set_pairs, command)


def parse_cluster(text: str, source: str, set_pairs: Sequence[str] = (),
                  command: Optional[Sequence[str]] = None) -> ClusterSpec:
    """Validate a cluster file's text; ``source`` names it in messages.

    Raises:
        ConfigError: not YAML, a bad ``--set`` pair, or a bad field (one line: file, field, line).
    """
    data, lines, texts = _compose(text, source)
    try:
        overrides = parse_pairs(set_pairs)
    except OverrideError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}:1: expected a mapping of cluster settings (name, hosts, ...), "
                          f"got {_describe(data)}")
    set_paths = set(_leaf_paths(overrides))
    try:
        data = merge(data, overrides, lists=True)  # hosts.0.devices=4: a number indexes a list
    except OverrideError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    if command is not None:
        if not command:
            raise ConfigError(f"{source}: nothing after --: give the program every rank runs, e.g. -- python train.py")
        data = {k: v for k, v in data.items() if k != "train"}
        data["command"] = list(command)
        set_paths.add(("command",))
    return _validate(data, _Where(source, lines, set_paths, command is not None, texts))


def _compose(text: str, source: str) -> tuple[Any, dict[Path, int], dict[Path, str]]:
    """Parse YAML (within ``mscluster.safeyaml``'s bounds), keeping the line of every mapping key and list item."""
    try:
        node, loader = safeyaml.compose(text)
    except safeyaml.YAMLLimitError as exc:
        mark = exc.problem_mark
        raise ConfigError(f"{source}:{f'{mark.line + 1}:' if mark is not None else ''} refused: {exc.problem} "
                          f"(a cluster file is small and plain)") from None
    except yaml.YAMLError as exc:
        raise ConfigError(_yaml_error(source, exc)) from None
    try:
        lines: dict[Path, int] = {}
        texts: dict[Path, str] = {}
        if node is not None:
            _record_lines(node, (), lines, source, set(), texts)
        data = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as exc:
        raise ConfigError(_yaml_error(source, exc)) from None
    finally:
        loader.dispose()
    return data, lines, texts


def _yaml_error(source: str, exc: yaml.YAMLError) -> str:
    line, problem = safeyaml.describe_error(exc)
    return f"{source}:{f'{line}:' if line is not None else ''} not valid YAML: {problem}"


def _record_lines(node: yaml.Node, path: Path, lines: dict[Path, int], source: str,
                  active: set[int], texts: dict[Path, str]) -> None:
    if id(node) in active:  # a recursive alias; the constructor reports it
        return
    active = active | {id(node)}
    if isinstance(node, yaml.MappingNode):
        first_seen: dict[str, int] = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *anchor`: merged keys keep their parent's line
            key = str(key_node.value) if isinstance(key_node, yaml.ScalarNode) else "<complex key>"
            line = key_node.start_mark.line + 1
            if key in first_seen:
                raise ConfigError(f"{source}:{line}: {format_path(path + (key,))}: duplicate key "
                                  f"(first at line {first_seen[key]})")
            first_seen[key] = line
            lines[path + (key,)] = line
            _record_lines(value_node, path + (key,), lines, source, active, texts)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            lines[path + (index,)] = item.start_mark.line + 1
            _record_lines(item, path + (index,), lines, source, active, texts)
    elif isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:int":
        texts[path] = str(node.value)  # YAML 1.1 reads 1:30:00 as the integer 5400 (base 60)


def _leaf_paths(tree: Mapping[str, Any], prefix: Path = ()) -> Iterable[Path]:
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from _leaf_paths(value, prefix + (key,))
        else:
            yield prefix + (key,)


# ---------------------------------------------------------------- validation

def _validate(data: dict, where: _Where) -> ClusterSpec:
    _check_keys(data, TOP_KEYS, (), where)
    scheduler = _word(SchedulerKind, data.get("scheduler", TOP.default("scheduler")), ("scheduler",), where)
    for required in ("name",) if scheduler is SchedulerKind.SLURM else ("name", "hosts"):
        if required not in data:
            raise where.error((required,), "missing (required)")
    name = _string(data["name"], ("name",), where)
    if not _NAME.fullmatch(name):
        raise where.error(("name",), f"use letters, digits, '.', '_' or '-' (it names job folders), got {name!r}")
    backend = _word(Backend, data.get("backend", TOP.default("backend")), ("backend",), where)
    slurm = _slurm(data.get("slurm"), scheduler, backend, where)
    ascend = _ascend(data.get("ascend"), backend, where)
    if scheduler is SchedulerKind.SLURM:
        if "hosts" in data:
            raise where.error(("hosts",), "not used with scheduler: slurm: the nodes come from the allocation "
                              "(SLURM_JOB_NODELIST); remove hosts:, or set scheduler: ssh")
        hosts: tuple[HostSpec, ...] = ()
        world = (slurm.nodes or 0) * (slurm.devices_per_host or DEFAULT_DEVICES_PER_HOST[backend]) or None
    else:
        hosts = _hosts(data["hosts"], backend, where)
        world = sum(len(h.devices) for h in hosts)
    spares = _spares(data.get("spares"), hosts, scheduler, backend, where)
    scheduler_port = _port(data.get("scheduler_port"), ("scheduler_port",), where, optional=True)
    if scheduler_port is not None and backend is Backend.ASCEND and ascend.init is AscendInit.RANKTABLE:
        raise where.error(("scheduler_port",), "not used with ascend.init: ranktable (HCCL starts from the rank "
                          "table; the dynamic cluster's scheduler runs with init: dynamic)")
    if ascend.rank_table_version is RankTableVersion.V1_2:
        _check_superpods(hosts, where)
    restarts = _integer(data.get("restarts", TOP.default("restarts")), ("restarts",), where)
    if not RESTARTS.holds(restarts):
        raise where.error(("restarts",), f"must be {RESTARTS.low}..{RESTARTS.high} (each restart relaunches every "
                          f"rank), got {restarts}")
    python = data.get("python")
    if python is not None:
        python = _string(python, ("python",), where)
        if not _PYTHON.fullmatch(python):
            # the one word of a remote command line: no shell may read anything else into it
            raise where.error(("python",), "an interpreter path of letters, digits and . _ / + ~ - only, "
                              f"got {python!r}")
    command = _command(data.get("command"), where)
    if command and data.get("train") is not None:
        raise where.error(("command",), "command: and train: exclude each other: train: sets up the built-in "
                          "trainer, command: runs your own program instead; keep one")
    train, settings = _train(data.get("train"), where)
    cpu_only = settings.cpu_only()
    if backend is Backend.ASCEND and cpu_only is not None:
        raise where.error(("train", cpu_only[0]), cpu_only[1])
    cwd = data.get("cwd")
    if cwd is not None:
        cwd = _path_text(cwd, ("cwd",), where)
        if not command:
            raise where.error(("cwd",), "only used with command: (the built-in trainer runs in the job folder)")
    stragglers = _stragglers(data.get("stragglers"), where)
    elastic = _elastic(data.get("elastic"), hosts, slurm, scheduler, where)
    for path, what in ((("spares",), spares or slurm.spares), (("elastic",), elastic),
                       (("stragglers", "action"), stragglers.action is StragglerAction.EXCLUDE)):
        if what and restarts == 0:
            where_given = ("slurm", "spares") if path == ("spares",) and not spares else path
            raise where.error(where_given, "needs restarts: 1 or more: a host is replaced (or the job shrinks) "
                              "when the job restarts")
    return ClusterSpec(
        name=name,
        backend=backend,
        hosts=hosts,
        workdir=_path_text(data.get("workdir", TOP.default("workdir")), ("workdir",), where),
        python=python,
        ssh=_ssh(data.get("ssh"), where),
        restarts=restarts,
        bind_cores=_boolean(data.get("bind_cores", TOP.default("bind_cores")), ("bind_cores",), where),
        env=_env(data.get("env"), where),
        train=train,
        scheduler_port=scheduler_port,
        command=command,
        cwd=cwd,
        console=_console(data.get("console", TOP.default("console")), world, where),
        watchdog=_watchdog(data.get("watchdog"), where),
        stragglers=stragglers,
        spares=spares,
        exclusion=_exclusion(data.get("exclusion"), where),
        elastic=elastic,
        scheduler=scheduler,
        slurm=slurm,
        ascend=ascend,
        source=where.source,
    )


def _hosts(raw: Any, backend: Backend, where: _Where) -> tuple[HostSpec, ...]:
    if not isinstance(raw, list):
        raise where.error(("hosts",), f"expected a list of hosts, got {_describe(raw)}")
    if not raw:
        raise where.error(("hosts",), "must list at least one host")
    hosts = tuple(_host(item, ("hosts", index), backend, where) for index, item in enumerate(raw))

    seen: dict[str, int] = {}
    for index, host in enumerate(hosts):
        key = "<loopback>" if host.is_local else host.address.lower()
        if key in seen:
            other = hosts[seen[key]].address
            raise where.error(("hosts", index, "address"), f"duplicate host: {host.address!r} is the same "
                              f"machine as hosts[{seen[key]}] ({other!r}); list its devices once")
        seen[key] = index
    if len(hosts) > 1:
        for index, host in enumerate(hosts):
            if host.is_local:
                who = "the scheduler" if backend is Backend.CPU else "HCCL (the rank table's server_id)"
                raise where.error(("hosts", index, "address"), f"{host.address!r} is a loopback name, but the "
                                  f"cluster has several hosts and {who} must be reachable from the others: "
                                  "write this host's network address")
        if backend is Backend.CPU and not is_ipv4(hosts[0].address):
            raise where.error(("hosts", 0, "address"), "the scheduler runs on the first host and MindSpore "
                              "reads its address (MS_SCHED_HOST) as an IPv4 address: write the first "
                              f"host's IP, not {hosts[0].address!r}")
    if backend is Backend.ASCEND:
        for index, host in enumerate(hosts):
            if not (host.is_local or is_ipv4(host.address)):
                raise where.error(("hosts", index, "address"), "on ascend the address is the rank table's "
                                  f"server_id, the server's IPv4 address; got {host.address!r}")
            if len(host.devices) != len(hosts[0].devices):
                raise where.error(("hosts", index, "devices"), f"{len(host.devices)} devices, but hosts[0] has "
                                  f"{len(hosts[0].devices)}: HCCL needs the same number on every server")
    return hosts


def _spares(raw: Any, hosts: tuple[HostSpec, ...], scheduler: SchedulerKind, backend: Backend,
            where: _Where) -> tuple[HostSpec, ...]:
    """``spares:``: hosts as ``hosts:`` lists them, none of them a host of the job, each able to take the
    place (the device ids) of at least one host."""
    if raw is None or raw == []:
        return ()
    if scheduler is SchedulerKind.SLURM:
        raise where.error(("spares",), "not used with scheduler: slurm: ask the allocation for spare nodes with "
                          "slurm.spares: N")
    if not isinstance(raw, list):
        raise where.error(("spares",), f"expected a list of hosts (address, devices), got {_describe(raw)}")
    spares = tuple(_host(item, ("spares", index), backend, where) for index, item in enumerate(raw))
    seen = {("<loopback>" if h.is_local else h.address.lower()): f"hosts[{i}]" for i, h in enumerate(hosts)}
    for index, spare in enumerate(spares):
        path = ("spares", index, "address")
        if spare.is_local:
            raise where.error(path, f"{spare.address!r} is a loopback name: a spare takes another host's place, "
                              "so the others must reach it; write its network address")
        key = spare.address.lower()
        if key in seen:
            raise where.error(path, f"{spare.address!r} is already {seen[key]}: a spare is a host the job "
                              "does not use")
        seen[key] = f"spares[{index}]"
        if backend is Backend.CPU and not is_ipv4(spare.address):
            raise where.error(path, "a spare may take the first host's place, where the scheduler runs and "
                              "MindSpore reads the address (MS_SCHED_HOST) as an IPv4 address: write its IP, "
                              f"not {spare.address!r}")
        if backend is Backend.ASCEND and not is_ipv4(spare.address):
            raise where.error(path, "on ascend the address is the rank table's server_id, the server's IPv4 "
                              f"address; got {spare.address!r}")
        if not any(set(h.devices) <= set(spare.devices) for h in hosts):
            raise where.error(("spares", index, "devices"), f"devices {list(spare.devices)} cannot stand in for any "
                              "host: a spare takes the device ids of the host it replaces ("
                              + "; ".join(f"hosts[{i}]: {list(h.devices)}" for i, h in enumerate(hosts)) + ")")
    return spares


EXCLUSION_KEYS, ELASTIC_KEYS = EXCLUSION.keys(), ELASTIC.keys()


def _exclusion(raw: Any, where: _Where) -> ExclusionSpec:
    if raw is None:
        return ExclusionSpec()
    if not isinstance(raw, dict):
        raise where.error(("exclusion",), f"expected a mapping (after, cooldown), got {_describe(raw)}")
    _check_keys(raw, EXCLUSION_KEYS, ("exclusion",), where)
    values: dict[str, Any] = {}
    if "after" in raw:
        after, kind = _integer(raw["after"], ("exclusion", "after"), where), EXCLUSION["after"].kind
        if not kind.holds(after):
            raise where.error(("exclusion", "after"), f"must be {kind.low}..{kind.high} failures, got {after}")
        values["after"] = after
    if "cooldown" in raw:
        cooldown, kind = raw["cooldown"], EXCLUSION["cooldown"].kind
        if isinstance(cooldown, bool) or not isinstance(cooldown, (int, float)) or not math.isfinite(cooldown) \
                or not kind.holds(cooldown):
            raise where.error(("exclusion", "cooldown"), f"expected seconds from {kind.low:g} to {kind.high:g}, "
                              f"got {_describe(cooldown)}")
        values["cooldown"] = float(cooldown)
    return ExclusionSpec(**values)


def _elastic(raw: Any, hosts: tuple[HostSpec, ...], slurm: SlurmSpec, scheduler: SchedulerKind,
             where: _Where) -> Optional[ElasticSpec]:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise where.error(("elastic",), f"expected a mapping (min_hosts, allow_batch_change), got {_describe(raw)}")
    _check_keys(raw, ELASTIC_KEYS, ("elastic",), where)
    if "min_hosts" not in raw:
        raise where.error(("elastic", "min_hosts"), "missing (required): the fewest hosts the job may shrink to")
    least, kind = _integer(raw["min_hosts"], ("elastic", "min_hosts"), where), ELASTIC["min_hosts"].kind
    if not kind.holds(least):
        raise where.error(("elastic", "min_hosts"), f"must be {kind.low}..{kind.high} hosts, got {least}")
    for index, host in enumerate(hosts):
        if not is_ipv4(host.address) and not host.is_local:
            # after a shrink that leaves out the first host, the next one runs the scheduler (MS_SCHED_HOST)
            raise where.error(("hosts", index, "address"), "with elastic:, any host may become the first one, "
                              "where the scheduler runs and MindSpore reads the address as an IPv4 address: "
                              f"write its IP, not {host.address!r}")
    count = len(hosts) if scheduler is not SchedulerKind.SLURM else slurm.nodes
    if count is not None and least > count:
        raise where.error(("elastic", "min_hosts"), f"{least} is more than the job's {count} host(s)")
    allow = _boolean(raw.get("allow_batch_change", ELASTIC.default("allow_batch_change")),
                     ("elastic", "allow_batch_change"), where)
    return ElasticSpec(min_hosts=least, allow_batch_change=allow)


def _host(raw: Any, path: Path, backend: Backend, where: _Where) -> HostSpec:
    if not isinstance(raw, dict):
        raise where.error(path, f"expected a mapping with address and devices, got {_describe(raw)}")
    _check_keys(raw, HOST_KEYS, path, where)
    for required in ("address", "devices"):
        if required not in raw:
            raise where.error(path + (required,), "missing (required)")
    address = _string(raw["address"], path + ("address",), where)
    if "@" in address:
        raise where.error(path + ("address",), f"{address!r}: write the user under ssh.user, not in the address")
    if _HOST_PORT.fullmatch(address):
        raise where.error(path + ("address",), f"{address!r}: write the port under ssh.port, not in the address")
    if not _ADDRESS.fullmatch(address):
        raise where.error(path + ("address",), f"not a host name or IP address: {address!r}")

    devices_path = path + ("devices",)
    raw_devices = raw["devices"]
    if isinstance(raw_devices, int) and not isinstance(raw_devices, bool):
        if raw_devices <= 0:
            raise where.error(devices_path, f"must be > 0 (a count) or a list of device ids, got {raw_devices}")
        if raw_devices > MAX_DEVICES_PER_HOST:
            raise where.error(devices_path, f"at most {MAX_DEVICES_PER_HOST} per host (one process each), "
                              f"got {raw_devices}")
        devices = tuple(range(raw_devices))
    elif isinstance(raw_devices, list):
        if not raw_devices:
            raise where.error(devices_path, "must list at least one device id")
        if len(raw_devices) > MAX_DEVICES_PER_HOST:
            raise where.error(devices_path, f"at most {MAX_DEVICES_PER_HOST} per host (one process each), "
                              f"got {len(raw_devices)}")
        ids: list[int] = []
        for index, item in enumerate(raw_devices):
            item_path = devices_path + (index,)
            if isinstance(item, bool) or not isinstance(item, int):
                raise where.error(item_path, f"expected a device id (an integer), got {_describe(item)}")
            if not 0 <= item <= MAX_DEVICE_ID:
                raise where.error(item_path, f"device ids are 0..{MAX_DEVICE_ID}, got {item}")
            if item in ids:
                raise where.error(item_path, f"duplicate device id {item}")
            ids.append(item)
        devices = tuple(sorted(ids))
    else:
        raise where.error(devices_path, f"expected a count or a list of device ids, got {_describe(raw_devices)}")
    if backend is Backend.ASCEND:
        if len(devices) > ASCEND_MAX_DEVICES:
            raise where.error(devices_path, f"an Ascend server has at most {ASCEND_MAX_DEVICES} NPUs, got {len(devices)}")
        too_big = [d for d in devices if d >= ASCEND_MAX_DEVICES]
        if too_big:
            item_path = devices_path + (raw_devices.index(too_big[0]),) if isinstance(raw_devices, list) else devices_path
            raise where.error(item_path, f"Ascend device ids are 0..{ASCEND_MAX_DEVICES - 1}, got {too_big[0]}")

    device_ips: tuple[tuple[int, str], ...] = ()
    raw_ips = raw.get("device_ips")
    if raw_ips is not None:
        ips_path = path + ("device_ips",)
        if backend is not Backend.ASCEND:
            raise where.error(ips_path, "only used by the ascend backend (the rank table's device_ip)")
        if not isinstance(raw_ips, dict):
            raise where.error(ips_path, f"expected a mapping of device id to IP, got {_describe(raw_ips)}")
        pairs = []
        for key, value in raw_ips.items():
            key_path = ips_path + (str(key),)
            device = key if isinstance(key, int) and not isinstance(key, bool) else None
            if isinstance(key, str) and key.isdigit():
                device = int(key)
            if device is None:
                raise where.error(key_path, f"expected a device id (an integer), got {key!r}")
            if device not in devices:
                raise where.error(key_path, f"device {device} is not among this host's devices "
                                  f"({', '.join(map(str, devices))})")
            if not isinstance(value, str) or not is_ipv4(value):
                raise where.error(key_path, f"expected an IPv4 address, got {value!r}")
            pairs.append((device, value))
        device_ips = tuple(sorted(pairs))
    superpod: dict[str, Any] = {}
    for key in ("host_ip", "super_pod_id", "super_device_ids"):
        if raw.get(key) is not None and backend is not Backend.ASCEND:
            raise where.error(path + (key,), "only used by the ascend backend (rank table 1.2)")
    if raw.get("host_ip") is not None:
        host_ip = raw["host_ip"]
        if not isinstance(host_ip, str) or not is_ipv4(host_ip):
            raise where.error(path + ("host_ip",), f"expected the server's IPv4 address, got {_describe(host_ip)}")
        superpod["host_ip"] = host_ip
    if raw.get("super_pod_id") is not None:
        pod = raw["super_pod_id"]
        if isinstance(pod, bool) or not isinstance(pod, (int, str)) or not _SUPER_POD_ID.fullmatch(str(pod)):
            raise where.error(path + ("super_pod_id",), f"expected the SuperPoD's id (digits or a name), got "
                              f"{_describe(pod)}")
        superpod["super_pod_id"] = str(pod)
    raw_sdids = raw.get("super_device_ids")
    if raw_sdids is not None:
        sdid_path = path + ("super_device_ids",)
        if not isinstance(raw_sdids, dict):
            raise where.error(sdid_path, f"expected a mapping of device id to its SuperPoD device id (SDID), "
                              f"got {_describe(raw_sdids)}")
        sdids = []
        for key, value in raw_sdids.items():
            key_path = sdid_path + (str(key),)
            device = int(key) if isinstance(key, str) and key.isdigit() else key
            if isinstance(device, bool) or not isinstance(device, int) or device not in devices:
                raise where.error(key_path, f"device {key!r} is not among this host's devices "
                                  f"({', '.join(map(str, devices))})")
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_SDID:
                raise where.error(key_path, f"expected the NPU's SuperPoD device id (an integer, npu-smi info "
                                  f"-t spod-info: SDID), got {_describe(value)}")
            sdids.append((device, value))
        superpod["super_device_ids"] = tuple(sorted(sdids))
    return HostSpec(address=address, devices=devices, device_ips=device_ips, **superpod)


_SUPER_POD_ID = re.compile(HOST["super_pod_id"].kind.pattern)


def _ascend(raw: Any, backend: Backend, where: _Where) -> AscendSpec:
    if raw is None:
        return AscendSpec()
    if backend is not Backend.ASCEND:
        raise where.error(("ascend",), "only used by the ascend backend (this file says backend: cpu)")
    if not isinstance(raw, dict):
        raise where.error(("ascend",), f"expected a mapping of Ascend settings, got {_describe(raw)}")
    _check_keys(raw, ASCEND_KEYS, ("ascend",), where)
    values: dict[str, Any] = {}
    for key, kind in (("init", AscendInit), ("rank_table_version", RankTableVersion)):
        if raw.get(key) is not None:
            value = raw[key]
            if isinstance(value, float):  # rank_table_version: 1.2, unquoted
                value = repr(value)
            values[key] = _word(kind, value, ("ascend", key), where, describe=True)
    spec = AscendSpec(**values)
    if "rank_table_version" in values and spec.init is not AscendInit.RANKTABLE:
        raise where.error(("ascend", "rank_table_version"), "only used with init: ranktable (init: dynamic starts "
                          "HCCL without a rank table)")
    return spec


def _check_superpods(hosts: tuple[HostSpec, ...], where: _Where) -> None:
    """Rank table 1.2: every server names its SuperPoD and every NPU its SDID; a SuperPoD's servers together."""
    for index, host in enumerate(hosts):
        if host.super_pod_id is None:
            raise where.error(("hosts", index, "super_pod_id"), "missing: rank table 1.2 lists every server in "
                              "its SuperPoD (super_pod_list)")
        missing = [d for d in host.devices if host.super_device_id(d) is None]
        if missing:
            raise where.error(("hosts", index, "super_device_ids"), f"missing for device(s) "
                              f"{', '.join(map(str, missing))}: rank table 1.2 gives every NPU its super_device_id "
                              "(npu-smi info -t spod-info -i <id> -c <chip>: SDID)")
    seen: list[str] = []
    for index, host in enumerate(hosts):
        pod = host.super_pod_id
        if seen and pod != seen[-1] and pod in seen:
            raise where.error(("hosts", index, "super_pod_id"), f"SuperPoD {pod!r} again after another one: CANN "
                              "needs the servers of one SuperPoD listed together (and so ranked together)")
        if not seen or pod != seen[-1]:
            seen.append(pod)


def _ssh(raw: Any, where: _Where) -> SSHSpec:
    if raw is None:
        return SSHSpec()
    if not isinstance(raw, dict):
        raise where.error(("ssh",), f"expected a mapping of ssh settings, got {_describe(raw)}")
    _check_keys(raw, SSH_KEYS, ("ssh",), where)
    defaults = SSHSpec()
    timeout_kind, interval_kind, count_kind = (SSH[key].kind for key in ("connect_timeout", "keepalive_interval",
                                                                        "keepalive_count"))
    values: dict[str, Any] = {}
    for key in ("user", "key_file", "known_hosts"):
        value = raw.get(key)
        values[key] = None if value is None else _path_text(value, ("ssh", key), where)
    if values["user"] is not None and not _USER.fullmatch(values["user"]):
        raise where.error(("ssh", "user"), f"not a user name: {values['user']!r}")
    values["port"] = _port(raw.get("port", defaults.port), ("ssh", "port"), where, optional=False)
    timeout = raw.get("connect_timeout", defaults.connect_timeout)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not math.isfinite(timeout):
        raise where.error(("ssh", "connect_timeout"), f"expected a number of seconds, got {_describe(timeout)}")
    if not timeout_kind.holds(timeout):
        raise where.error(("ssh", "connect_timeout"), f"must be > {timeout_kind.low} and at most {timeout_kind.high} s "
                          f"(every host is checked within it before anything starts), got {timeout}")
    values["connect_timeout"] = float(timeout)
    interval = raw.get("keepalive_interval", defaults.keepalive_interval)
    if isinstance(interval, bool) or not isinstance(interval, (int, float)) or not math.isfinite(interval) \
            or not interval_kind.holds(interval):
        raise where.error(("ssh", "keepalive_interval"), f"expected seconds from {interval_kind.low:g} to "
                          f"{interval_kind.high:g}, got {_describe(interval)}")
    values["keepalive_interval"] = float(interval)
    count = _integer(raw.get("keepalive_count", defaults.keepalive_count), ("ssh", "keepalive_count"), where)
    if not count_kind.holds(count):
        raise where.error(("ssh", "keepalive_count"), f"must be {count_kind.low}..{count_kind.high}, got {count}")
    values["keepalive_count"] = count
    values["strict_host_keys"] = _boolean(raw.get("strict_host_keys", defaults.strict_host_keys),
                                          ("ssh", "strict_host_keys"), where)
    return SSHSpec(**values)


_SLURM_WORD = re.compile(settings.SLURM_WORD)  # a partition or account name
_SLURM_TIME = re.compile(SLURM["time"].kind.pattern)  # sbatch --time's formats


def _slurm(raw: Any, scheduler: SchedulerKind, backend: Backend, where: _Where) -> SlurmSpec:
    if raw is None:
        return SlurmSpec()
    if scheduler is not SchedulerKind.SLURM:
        raise where.error(("slurm",), "only used with scheduler: slurm (this file runs over SSH: scheduler: ssh)")
    if not isinstance(raw, dict):
        raise where.error(("slurm",), f"expected a mapping of Slurm settings, got {_describe(raw)}")
    _check_keys(raw, SLURM_KEYS, ("slurm",), where)
    values: dict[str, Any] = {}
    for key in ("nodes", "devices_per_host", "spares"):
        if raw.get(key) is not None:
            number, kind = _integer(raw[key], ("slurm", key), where), SLURM[key].kind
            if not kind.holds(number):
                raise where.error(("slurm", key), f"must be {kind.low}..{kind.high}, got {number}")
            values[key] = number
    if backend is Backend.ASCEND and values.get("devices_per_host", 1) > ASCEND_MAX_DEVICES:
        raise where.error(("slurm", "devices_per_host"), f"an Ascend server has at most {ASCEND_MAX_DEVICES} NPUs, "
                          f"got {values['devices_per_host']}")
    for key in ("partition", "account", "time"):
        if raw.get(key) is not None:
            value = raw[key]
            if isinstance(value, int) and not isinstance(value, bool):  # minutes, or 1:30:00 as YAML wrote it
                value = where.texts.get(("slurm", key), str(value))
            text = _string(value, ("slurm", key), where)
            pattern = _SLURM_TIME if key == "time" else _SLURM_WORD
            if not pattern.fullmatch(text):
                what = ("a time limit as sbatch reads it (minutes, H:MM:SS or D-HH:MM:SS)" if key == "time"
                        else f"a Slurm {key} name (letters, digits and . _ , : + -)")
                raise where.error(("slurm", key), f"expected {what}, got {text!r}")
            values[key] = text
    for key in ("requeue", "exclusive"):
        if key in raw:
            values[key] = _boolean(raw[key], ("slurm", key), where)
    if "warning_s" in raw:
        warning = _integer(raw["warning_s"], ("slurm", "warning_s"), where)
        kind = SLURM["warning_s"].kind  # sbatch --signal's limit
        if not kind.holds(warning):
            raise where.error(("slurm", "warning_s"), f"must be {kind.low}..{kind.high} seconds, got {warning}")
        values["warning_s"] = warning
    if "start_timeout" in raw:
        timeout, kind = raw["start_timeout"], SLURM["start_timeout"].kind
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not kind.holds(timeout):
            raise where.error(("slurm", "start_timeout"), f"expected seconds from {kind.low} to {kind.high}, "
                              f"got {_describe(timeout)}")
        values["start_timeout"] = float(timeout)
    options = raw.get("sbatch_options")
    if options is not None:
        if not isinstance(options, list):
            raise where.error(("slurm", "sbatch_options"), f"expected a list of sbatch options such as "
                              f"[--qos=high], got {_describe(options)}")
        words = []
        for index, option in enumerate(options):
            text = option if isinstance(option, str) else None
            if text is None or not text.startswith("-") or any(ord(ch) < 32 or ord(ch) == 127 for ch in text):
                raise where.error(("slurm", "sbatch_options", index), f"expected one sbatch option on one line, "
                                  f"starting with '-' (e.g. --qos=high), got {_describe(option)}")
            words.append(text)
        values["sbatch_options"] = tuple(words)
    return SlurmSpec(**values)


WATCHDOG_KEYS = WATCHDOG.keys()
STACK_TOOLS = WATCHDOG["stacks"].kind.words
WATCHDOG_SECONDS = ("stall_timeout", "startup_timeout", "beat_interval")
AUTO = "auto"  # stall_timeout: auto (the default): learned from the job (launcher.watchdog.Learned)


def _watchdog(raw: Any, where: _Where) -> WatchdogSpec:
    if raw is None:
        return WatchdogSpec()
    if raw is False:
        return WatchdogSpec(enabled=False)
    if not isinstance(raw, dict):
        raise where.error(("watchdog",), f"expected a mapping (stall_timeout, startup_timeout, beat_interval, "
                          f"enabled) or false, got {_describe(raw)}")
    _check_keys(raw, WATCHDOG_KEYS, ("watchdog",), where)
    values: dict[str, Any] = {}
    if "enabled" in raw:
        values["enabled"] = _boolean(raw["enabled"], ("watchdog", "enabled"), where)
    for key in WATCHDOG_SECONDS:
        if key not in raw:
            continue
        value = raw[key]
        if key == "stall_timeout" and value in (AUTO, None):
            continue  # auto: WatchdogSpec's default
        kind = settings.seconds_kind(WATCHDOG[key].kind)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise where.error(("watchdog", key), f"expected a number of seconds{' or auto' if key == 'stall_timeout' else ''}, "
                                                 f"got {_describe(value)}")
        if not kind.holds(value):
            raise where.error(("watchdog", key), f"must be {kind.low:g}..{kind.high:g} s, got {value:g}")
        values[key] = float(value)
    if "stacks" in raw:
        stacks = raw["stacks"]
        if stacks not in STACK_TOOLS:
            raise where.error(("watchdog", "stacks"), f"expected one of {', '.join(STACK_TOOLS)}, got {_describe(stacks)}")
        values["stacks"] = stacks
    spec = WatchdogSpec(**values)
    shortest = AUTO_FLOOR_S if spec.auto else spec.stall_timeout
    if spec.beat_interval * 3 >= shortest:
        raise where.error(("watchdog", "beat_interval"), f"must be under a third of stall_timeout ({shortest:g} s"
                          f"{', the least auto sets' if spec.auto else ''}), so a frozen rank is told from a slow one")
    return spec



STRAGGLER_KEYS = STRAGGLERS.keys()


def _stragglers(raw: Any, where: _Where) -> StragglerSpec:
    if raw is None:
        return StragglerSpec()
    if not isinstance(raw, dict):
        raise where.error(("stragglers",), "expected a mapping (action, threshold, window_steps), "
                          f"got {_describe(raw)}")
    _check_keys(raw, STRAGGLER_KEYS, ("stragglers",), where)
    values: dict[str, Any] = {}
    if "action" in raw:
        # YAML 1.1 reads a bare `off` as false: the word the user wrote
        action = StragglerAction.OFF.value if raw["action"] is False else raw["action"]
        values["action"] = _word(StragglerAction, action, ("stragglers", "action"), where, describe=True)
    if "threshold" in raw:
        threshold, kind = raw["threshold"], STRAGGLERS["threshold"].kind
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not math.isfinite(threshold) \
                or not kind.holds(threshold):
            raise where.error(("stragglers", "threshold"), f"expected a relative score between 0 and 1 (exclusive), "
                              f"got {_describe(threshold)}")
        values["threshold"] = float(threshold)
    if "window_steps" in raw:
        window = _integer(raw["window_steps"], ("stragglers", "window_steps"), where)
        kind = STRAGGLERS["window_steps"].kind
        if not kind.holds(window):
            raise where.error(("stragglers", "window_steps"), f"must be {kind.low}..{kind.high} steps, got {window}")
        values["window_steps"] = window
    return StragglerSpec(**values)


def _env(raw: Any, where: _Where) -> tuple[tuple[str, str], ...]:
    if raw is None:
        return ()
    if not isinstance(raw, dict):
        raise where.error(("env",), f"expected a mapping of variable names to values, got {_describe(raw)}")
    pairs = []
    for name, value in raw.items():
        path = ("env", str(name))
        if not isinstance(name, str) or not _ENV_NAME.fullmatch(name):
            raise where.error(path, f"not a valid environment variable name: {name!r}")
        if is_reserved_env(name):
            raise where.error(path, "set by the launcher for each process; it cannot be overridden")
        if isinstance(value, bool) or not isinstance(value, (str, int, float)) or (
                isinstance(value, float) and not math.isfinite(value)):
            raise where.error(path, f"expected a string or a number, got {_describe(value)} "
                              "(quote true/false/null to pass them as text)")
        if "\x00" in str(value):
            raise where.error(path, "holds a NUL character, which no environment can carry")
        pairs.append((name, str(value)))
    return tuple(pairs)


def _command(raw: Any, where: _Where) -> tuple[str, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise where.error(("command",), f"expected a list of strings (the argv every rank runs, e.g. "
                          f"[python, train.py, --epochs, \"2\"]), got {_describe(raw)}")
    if not raw:
        raise where.error(("command",), "is empty: give the program and its arguments, e.g. [python, train.py]")
    words = []
    for index, word in enumerate(raw):
        if isinstance(word, bool) or not isinstance(word, (str, int, float)):
            raise where.error(("command", index), f"expected a string, got {_describe(word)}")
        text = str(word)
        if "\x00" in text:
            raise where.error(("command", index), "holds a NUL character")
        if index == 0 and not text.strip():
            raise where.error(("command", 0), "the program's name is empty")
        words.append(text)
    return tuple(words)


def _path_text(value: Any, path: Path, where: _Where) -> str:
    text = _string(value, path, where)
    bad = next((ch for ch in text if ord(ch) < 32 or ord(ch) == 127), None)
    if bad is not None:
        raise where.error(path, f"holds a control character ({bad!r}): a path or name may not")
    return text


def _console(raw: Any, world_size: Optional[int], where: _Where) -> Optional[tuple[int, ...]]:
    """``world_size`` None: not known before the allocation (Slurm); only ranks >= 0 are checked."""
    if raw == "all":
        return None
    if not isinstance(raw, list) or not raw:
        raise where.error(("console",), f"expected all, or a list of ranks (e.g. [0, 3]), got {_describe(raw)}")
    ranks = []
    for index, item in enumerate(raw):
        top = world_size if world_size is not None else 1 << 30
        if isinstance(item, bool) or not isinstance(item, int) or not 0 <= item < top:
            expected = f"a rank 0..{world_size - 1}" if world_size is not None else "a rank (an integer >= 0)"
            raise where.error(("console", index), f"expected {expected}, got {_describe(item)}")
        ranks.append(item)
    return tuple(sorted(set(ranks)))


def _train(raw: Any, where: _Where) -> tuple[tuple[tuple[str, Any], ...], train_config.TrainConfig]:
    """The section's pairs as given (the trainer's defaults stay unwritten) and the settings they make."""
    if raw is None:
        return (), train_config.TrainConfig()
    if not isinstance(raw, dict):
        raise where.error(("train",), f"expected a mapping of training settings, got {_describe(raw)}")
    _check_keys(raw, TRAIN_KEYS, ("train",), where, what="training setting")
    for key, value in raw.items():  # one key at a time, so the message points at its line
        try:
            train_config.from_dict({key: value}, source="train")
        except TrainConfigError as exc:
            message = str(exc).removeprefix("train: ").removeprefix(f"{key}: ")
            raise where.error(("train", key), message) from None
    try:
        config = train_config.from_dict(raw, source="train")
    except TrainConfigError as exc:
        raise where.error(("train",), str(exc).removeprefix("train: ")) from None
    return tuple((key, getattr(config, key)) for key in raw), config


# ---------------------------------------------------------------- small checks

def _check_keys(mapping: Mapping, known: Sequence[str], path: Path, where: _Where, what: str = "key") -> None:
    for key in mapping:
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"expected one of {', '.join(known)}"
            raise where.error(path + (str(key),), f"unknown {what} {key!r}; {hint}")


def _word(kind: type[W], value: Any, path: Path, where: _Where, describe: bool = False) -> W:
    """One of the enum ``kind``'s words; the message lists them all (``describe``: a non-string is
    refused by that message too, not by the non-empty-string one)."""
    if not describe:
        value = _string(value, path, where)
    if isinstance(value, str) and value in {member.value for member in kind}:
        return kind(value)
    raise where.error(path, f"expected one of {', '.join(kind)}, got {_describe(value) if describe else repr(value)}")


def _string(value: Any, path: Path, where: _Where) -> str:
    if not isinstance(value, str) or not value.strip():
        raise where.error(path, f"expected a non-empty string, got {_describe(value)}")
    return value


def _integer(value: Any, path: Path, where: _Where) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise where.error(path, f"expected an integer, got {_describe(value)}")
    return value


def _boolean(value: Any, path: Path, where: _Where) -> bool:
    if not isinstance(value, bool):
        raise where.error(path, f"expected true or false, got {_describe(value)}")
    return value


def _port(value: Any, path: Path, where: _Where, optional: bool) -> Optional[int]:
    if value is None and optional:
        return None
    port = _integer(value, path, where)
    if not settings.PORT.holds(port):
        raise where.error(path, f"a port is {settings.PORT.low}..{settings.PORT.high}, got {port}")
    return port




def _describe(value: Any) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return repr(value)


# ---------------------------------------------------------------- writing

def resolved_yaml(spec: ClusterSpec) -> str:
    """The cluster file as validated, every default written out (saved in the job folder).

    ``parse_cluster(resolved_yaml(spec), spec.source) == spec``.
    """
    hosts = [_host_entry(host) for host in spec.hosts]
    data = {
        "name": spec.name,
        "backend": spec.backend,
        "workdir": spec.workdir,
        "python": spec.python,
        "ssh": {f.name: getattr(spec.ssh, f.name) for f in fields(SSHSpec)},
        "hosts": hosts,
        "scheduler_port": spec.scheduler_port,
        "restarts": spec.restarts,
        "bind_cores": spec.bind_cores,
        "env": spec.env_dict(),
        "console": "all" if spec.console is None else list(spec.console),
        "watchdog": {f.name: (AUTO if f.name == "stall_timeout" and spec.watchdog.auto else getattr(spec.watchdog, f.name))
                     for f in fields(WatchdogSpec)},
        "stragglers": {f.name: getattr(spec.stragglers, f.name) for f in fields(StragglerSpec)},
        "exclusion": {f.name: getattr(spec.exclusion, f.name) for f in fields(ExclusionSpec)},
    }
    if spec.spares:
        data["spares"] = [_host_entry(host) for host in spec.spares]
    if spec.elastic is not None:
        data["elastic"] = {f.name: getattr(spec.elastic, f.name) for f in fields(ElasticSpec)}
    if spec.backend is Backend.ASCEND:
        data["ascend"] = {"init": spec.ascend.init}
        if spec.ascend.init is AscendInit.RANKTABLE:
            data["ascend"]["rank_table_version"] = spec.ascend.rank_table_version
    nodes = ""
    if spec.on_slurm:  # the nodes come from each allocation: the file form has no hosts: (nor spares:)
        del data["hosts"]
        data.pop("spares", None)
        data["scheduler"] = spec.scheduler
        data["slurm"] = {f.name: (list(v) if isinstance(v := getattr(spec.slurm, f.name), tuple) else v)
                         for f in fields(SlurmSpec)}
        if spec.hosts:
            nodes = "# this run's allocation: " + ", ".join(h.label for h in spec.hosts) + (
                "; spares: " + ", ".join(h.label for h in spec.spares) if spec.spares else "") + "\n"
    if spec.command:
        data["command"] = list(spec.command)
        if spec.cwd is not None:
            data["cwd"] = spec.cwd
    else:
        data["train"] = spec.train_dict()
    header = f"# {spec.name}: resolved from {spec.source} (defaults and --set applied)\n" + nodes
    return header + yaml.dump(data, Dumper=_Dumper, sort_keys=False, default_flow_style=False,
                              allow_unicode=True)


def _host_entry(host: HostSpec) -> dict[str, Any]:
    entry: dict[str, Any] = {"address": host.address, "devices": list(host.devices)}
    if host.device_ips:
        entry["device_ips"] = dict(host.device_ips)
    if host.host_ip is not None:
        entry["host_ip"] = host.host_ip
    if host.super_pod_id is not None:
        entry["super_pod_id"] = host.super_pod_id
    if host.super_device_ids:
        entry["super_device_ids"] = dict(host.super_device_ids)
    return entry


class _Dumper(yaml.SafeDumper):
    """Block style, except lists of scalars (``devices: [0, 1]``) on one line."""


def _represent_list(dumper: yaml.SafeDumper, data: list) -> yaml.Node:
    flat = all(not isinstance(item, (list, dict)) for item in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flat)


_Dumper.add_representer(list, _represent_list)
# backend: cpu, not a tagged Python object: an enum of the cluster file's words is written as its word
_Dumper.add_multi_representer(str, lambda dumper, data: dumper.represent_str(str(data)))
