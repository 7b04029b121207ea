"""Every setting of the cluster file, once: its type, default, bounds or choices and one-line meaning.

The validator (``launcher/config.py``) takes its keys, defaults, bounds, choices and patterns from
here; the reference page (``python -m launcher.settings_doc``) and the JSON Schema (``mscluster
schema``) are generated from it. The ``train:`` section is built from ``trainer/config.py``
(``TrainConfig``'s fields, ``CHOICES``, ``POSITIVE``, ``NON_NEGATIVE``, ``UPPER``, ``BELOW``, ``DOCS``).

To add a setting: add a ``Setting`` to its section below (the default comes from the section's
dataclass in ``launcher/spec.py`` where it has one), read it in config.py's function for that
section, then regenerate the page (``python -m launcher.settings_doc > docs/reference/cluster-file.md``).
A training setting is a ``TrainConfig`` field plus its line in ``trainer/config.py``'s ``DOCS``.
"""
from __future__ import annotations

import dataclasses
import enum
import json
from dataclasses import dataclass
from typing import Any, Optional, Union, get_args, get_origin, get_type_hints

import yaml

from launcher.spec import (AscendInit, AscendSpec, Backend, ClusterSpec, RankTableVersion, SchedulerKind, SlurmSpec,
                           SSHSpec, StragglerAction, StragglerSpec, WatchdogSpec,
                           ElasticSpec, ExclusionSpec)
from trainer import config as train_config


class _Marker(enum.Enum):
    REQUIRED = "required"  # no default: the file must give it
    FROM_SPEC = "from the section's dataclass"  # the default is the spec dataclass field's


# not frozen, no __eq__/__repr__: each of those is a compiled function per class, together ~3 ms a class
# at every start of mscluster plan (measured on 2 busy cores); the table is built once here, never changed
_value = dataclass(eq=False, repr=False)
REQUIRED = _Marker.REQUIRED
FROM_SPEC = _Marker.FROM_SPEC
_NO_CONTROL = r"[^\x00-\x1f\x7f]"  # a path or name holds no control character


def yaml_text(value: Any) -> str:
    """A value as a cluster file writes it, on one line: ``null``, ``true``, ``10``, ``[0]``, ``"1.0"``."""
    value = yaml_value(value)
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, float):
        return _num(value)
    if isinstance(value, str):
        plain = value and value.strip() == value and yaml.safe_load(value) == value
        return value if plain else json.dumps(value)  # "1.0": a word YAML would read as a number
    if isinstance(value, list):
        return "[" + ", ".join(yaml_text(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{yaml_text(k)}: {yaml_text(v)}" for k, v in value.items()) + "}"
    return str(value)


def yaml_value(value: Any) -> Any:
    """A default as the cluster file writes it: an enum as its word, a tuple as a list."""
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, tuple):
        return [yaml_value(item) for item in value]
    return value


# ---------------------------------------------------------------- kinds of value

class Kind:
    """The values a setting takes, described for the reference page and as JSON Schema."""

    def text(self) -> str:
        raise NotImplementedError

    def schema(self) -> dict[str, Any]:
        raise NotImplementedError


def _num(value: float) -> str:
    """``600``, ``0.2``, ``100000000``: a bound as the page and the messages write it."""
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _range_text(low: Optional[float], high: Optional[float], low_open: bool, high_open: bool) -> str:
    if low is not None and high is not None and not low_open and not high_open:
        return f"{_num(low)}..{_num(high)}"
    parts = []
    if low is not None:
        parts.append(f"{'>' if low_open else '>='} {_num(low)}")
    if high is not None:
        parts.append(f"{'<' if high_open else 'at most'} {_num(high)}")
    return ", ".join(parts)


def _range_schema(schema: dict[str, Any], low, high, low_open: bool, high_open: bool) -> dict[str, Any]:
    if low is not None:
        schema["exclusiveMinimum" if low_open else "minimum"] = low
    if high is not None:
        schema["exclusiveMaximum" if high_open else "maximum"] = high
    return schema


@_value
class Integer(Kind):
    """An integer (not a bool), ``low..high`` where given."""

    low: Optional[int] = None
    high: Optional[int] = None
    low_open: bool = False  # > low rather than >= low

    def holds(self, value: int) -> bool:
        return ((self.low is None or (value > self.low if self.low_open else value >= self.low))
                and (self.high is None or value <= self.high))

    def text(self) -> str:
        bounds = _range_text(self.low, self.high, self.low_open, False)
        return f"int {bounds}" if bounds else "int"

    def schema(self) -> dict[str, Any]:
        return _range_schema({"type": "integer"}, self.low, self.high, self.low_open, False)


@_value
class Number(Kind):
    """A finite number (an integer or not), ``low..high`` where given; ``unit`` names it on the page."""

    low: Optional[float] = None
    high: Optional[float] = None
    low_open: bool = False
    high_open: bool = False
    unit: str = "number"

    def holds(self, value: float) -> bool:
        return ((self.low is None or (value > self.low if self.low_open else value >= self.low))
                and (self.high is None or (value < self.high if self.high_open else value <= self.high)))

    def text(self) -> str:
        bounds = _range_text(self.low, self.high, self.low_open, self.high_open)
        return f"{self.unit} {bounds}" if bounds else self.unit

    def schema(self) -> dict[str, Any]:
        return _range_schema({"type": "number"}, self.low, self.high, self.low_open, self.high_open)


@_value
class Bool(Kind):
    """``true`` or ``false``."""

    def text(self) -> str:
        return "bool"

    def schema(self) -> dict[str, Any]:
        return {"type": "boolean"}


@_value
class Text(Kind):
    """A non-empty string matching ``pattern`` in full (a Python and ECMA regex); ``what`` names it
    on the page; ``numbers``: a YAML number is taken as its text too (``time: 90``)."""

    pattern: Optional[str] = None
    what: str = "string"
    numbers: Optional[str] = None  # "integer" or "number": YAML numbers of that JSON type are read as text

    def text(self) -> str:
        return self.what

    def schema(self) -> dict[str, Any]:
        schema: dict[str, Any] = {"type": ["string", self.numbers] if self.numbers else "string"}
        if self.pattern is not None:
            schema["pattern"] = f"^(?:{self.pattern})$"
        else:
            schema["minLength"] = 1
        return schema


@_value
class Words(Kind):
    """One of a few words (an enum's values); ``aliases``: other YAML values read as them (``1.2``)."""

    words: tuple[str, ...]
    aliases: tuple[Any, ...] = ()

    @classmethod
    def of(cls, kind: type[enum.Enum], aliases: tuple[Any, ...] = ()) -> "Words":
        return cls(tuple(member.value for member in kind), aliases)

    def text(self) -> str:
        return " | ".join(_code(word) for word in self.words)

    def schema(self) -> dict[str, Any]:
        return {"enum": [*self.words, *self.aliases]}


@_value
class Const(Kind):
    """Exactly this value (``watchdog: false``)."""

    value: Any

    def text(self) -> str:
        return _code(self.value)

    def schema(self) -> dict[str, Any]:
        return {"const": self.value}


@_value
class ListOf(Kind):
    """A list of ``item``s, ``min_items..max_items`` long."""

    item: Kind
    what: str
    min_items: int = 0
    max_items: Optional[int] = None
    unique: bool = False

    def text(self) -> str:
        return self.what

    def schema(self) -> dict[str, Any]:
        schema: dict[str, Any] = {"type": "array", "items": self.item.schema()}
        if self.min_items:
            schema["minItems"] = self.min_items
        if self.max_items is not None:
            schema["maxItems"] = self.max_items
        if self.unique:
            schema["uniqueItems"] = True
        return schema


@_value
class MapOf(Kind):
    """A mapping whose keys match ``key_pattern`` and whose values are ``value``s."""

    key_pattern: str
    value: Kind
    what: str

    def text(self) -> str:
        return self.what

    def schema(self) -> dict[str, Any]:
        # a YAML key may be an integer (device ids): the pattern constrains string keys only, as JSON Schema does
        return {"type": "object", "propertyNames": {"pattern": f"^(?:{self.key_pattern})$"},
                "additionalProperties": self.value.schema()}


@_value
class AnyOf(Kind):
    """One of several kinds (``devices``: a count or a list of ids)."""

    kinds: tuple[Kind, ...]

    def text(self) -> str:
        return ", or ".join(kind.text() for kind in self.kinds)

    def schema(self) -> dict[str, Any]:
        schemas = [kind.schema() for kind in self.kinds]
        mappings = [schema for schema in schemas if schema.get("type") == "object"]
        if len(mappings) == 1:  # a mapping or a word (watchdog: false): an editor names the mistake inside it
            return {"if": {"type": "object"}, "then": mappings[0],
                    "else": {"anyOf": [schema for schema in schemas if schema is not mappings[0]]}}
        return {"anyOf": schemas}


@_value
class Setting:
    """One key of the cluster file.

    ``default``: the value when the key is absent (``REQUIRED``: none; ``FROM_SPEC``: the section's
    dataclass field's); ``null``: the key may be null, which means the default; ``default_text``:
    the page's default column where it says more than the value (``discovered``)."""

    key: str
    kind: Kind
    meaning: str
    default: Any = FROM_SPEC
    null: bool = False
    default_text: Optional[str] = None


@_value
class Section(Kind):
    """A mapping of settings: the top level, one host, ``ssh:``, ``train:`` ...; unknown keys are refused."""

    name: str  # the key it is under ("" for the top level); its heading and anchor on the page
    title: str
    note: str  # the paragraph under the heading on the page
    settings: tuple[Setting, ...]
    spec: Optional[type] = None  # the dataclass whose field defaults are the settings' FROM_SPEC defaults

    def __post_init__(self) -> None:
        defaults = {f.name: f.default for f in dataclasses.fields(self.spec)} if self.spec else {}
        resolved = []
        for setting in self.settings:
            if setting.default is FROM_SPEC:
                default = defaults.get(setting.key, dataclasses.MISSING)
                if default is dataclasses.MISSING:
                    raise TypeError(f"{self.name or 'top level'}.{setting.key}: no default in "
                                    f"{getattr(self.spec, '__name__', 'the section')}: give one")
                setting = dataclasses.replace(setting, default=yaml_value(default))
            resolved.append(setting)
        object.__setattr__(self, "settings", tuple(resolved))

    def keys(self) -> tuple[str, ...]:
        return tuple(setting.key for setting in self.settings)

    def __getitem__(self, key: str) -> Setting:
        for setting in self.settings:
            if setting.key == key:
                return setting
        raise KeyError(key)

    def default(self, key: str) -> Any:
        return self[key].default

    def text(self) -> str:
        return "mapping"

    def schema(self) -> dict[str, Any]:
        properties = {}
        for setting in self.settings:
            schema = setting.kind.schema()
            if setting.null:
                schema = _or_null(schema)
            schema = {"description": setting.meaning, **schema}
            if setting.default is not REQUIRED and (setting.default is not None or setting.null) \
                    and section_in(setting.kind) is None:
                schema["default"] = setting.default
            properties[setting.key] = schema
        schema = {"type": "object", "properties": properties, "additionalProperties": False}
        required = [s.key for s in self.settings if s.default is REQUIRED]
        if required:
            schema["required"] = required
        return schema


def _or_null(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` or null, said so that an editor's message still names the inner mistake."""
    kind = schema.get("type")
    if kind is not None:
        return {**schema, "type": [*(kind if isinstance(kind, list) else [kind]), "null"]}
    if "enum" in schema:
        return {**schema, "enum": [*schema["enum"], None]}
    if "else" in schema:
        return {**schema, "else": _or_null(schema["else"])}
    if "anyOf" in schema:
        return {**schema, "anyOf": [*schema["anyOf"], {"type": "null"}]}
    return {"anyOf": [schema, {"type": "null"}]}


def section_in(kind: Kind) -> Optional[Section]:
    """The section a setting's values are mappings of (``ssh``, a host), if any."""
    if isinstance(kind, Section):
        return kind
    inner = (kind.item,) if isinstance(kind, ListOf) else kind.kinds if isinstance(kind, AnyOf) else ()
    return next((found for k in inner if (found := section_in(k)) is not None), None)


def _code(value: Any) -> str:
    return f"`{yaml_text(value)}`"


# ---------------------------------------------------------------- the settings

PORT = Integer(1, 65535)
DEVICE_ID_KEY = r"[0-9]+"
MAX_DEVICE_ID = 65535
MAX_SDID = 2 ** 32 - 1  # a SuperPoD device id (SDID) is a 32-bit number
IPV4 = Text(r"(?:[0-9]{1,3}\.){3}[0-9]{1,3}", what="IPv4 address")
PATH = Text(f"{_NO_CONTROL}+", what="path")
SECONDS_POSITIVE = Number(0, None, low_open=True, unit="seconds")
ASCEND_MAX_DEVICES = 8  # NPUs per Ascend server; device ids 0..7
MAX_DEVICES_PER_HOST = 256  # one process per device: more on one host is a typo, not a machine

HOST = Section("hosts", "hosts", (
    "Each entry is a mapping. Hosts `localhost`/`127.0.0.1` run without SSH; a multi-host file must name every "
    "host by its network address (the scheduler or HCCL must reach it from the others), the first host of a "
    "multi-host cpu file by its IPv4 address, and every Ascend server by its IPv4 address (the rank table's "
    "`server_id`)."), (
    Setting("address", Text(r"[A-Za-z0-9][A-Za-z0-9._:%-]{0,252}", what="host name or IP"),
            "no `user@` (use `ssh.user`) and no `:port` (use `ssh.port`); no duplicates", REQUIRED),
    Setting("devices", AnyOf((Integer(1, MAX_DEVICES_PER_HOST),
                              ListOf(Integer(0, MAX_DEVICE_ID), f"list of device ids 0..{MAX_DEVICE_ID}", 1,
                                     MAX_DEVICES_PER_HOST, unique=True))),
            f"a count (ids `0..n-1`) or the device ids; ascend: at most {ASCEND_MAX_DEVICES}, ids "
            f"0..{ASCEND_MAX_DEVICES - 1}, the same count on every server", REQUIRED),
    Setting("device_ips", MapOf(DEVICE_ID_KEY, IPV4, "mapping id -> IPv4"),
            "ascend: each NPU's IP for the rank table; else `hccn_tool -i <id> -ip -g`, then `/etc/hccn.conf`",
            None, null=True, default_text="discovered"),
    Setting("host_ip", IPV4, "ascend, rank table 1.2: the server's `host_ip`", None, null=True,
            default_text="the address"),
    Setting("super_pod_id", Text(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", what="SuperPoD id", numbers="integer"),
            "ascend, rank table 1.2: the server's SuperPoD; servers of one SuperPoD listed together", None,
            null=True, default_text="required for 1.2"),
    Setting("super_device_ids", MapOf(DEVICE_ID_KEY, Integer(0, MAX_SDID), "mapping id -> int"),
            "ascend, rank table 1.2: each NPU's SDID (`npu-smi info -t spod-info`)", None, null=True,
            default_text="required for 1.2"),
))

SSH = Section("ssh", "ssh", "How remote hosts are reached. No `~/.ssh/config` is read.", (
    Setting("user", Text(r"[A-Za-z0-9._][A-Za-z0-9._@-]{0,255}", what="user name"),
            "the remote user; null: the current user", null=True),
    Setting("port", PORT, "the hosts' SSH port"),
    Setting("key_file", PATH, "the private key; null: ssh-agent and the default `~/.ssh` keys. No passphrase "
            "(use ssh-agent for one)", null=True),
    Setting("connect_timeout", Number(0, 600, low_open=True, unit="seconds"),
            "every host is checked within it before anything starts"),
    Setting("strict_host_keys", Bool(), "host keys must be in known_hosts already"),
    Setting("known_hosts", PATH, "null: `~/.ssh/known_hosts` and `/etc/ssh/ssh_known_hosts`, as OpenSSH",
            null=True),
    Setting("keepalive_interval", Number(0.2, 600, unit="seconds"),
            "launcher and agents beat to each other this often"),
    Setting("keepalive_count", Integer(1, 100), "beats missed before a host (or, on the host, the launcher) is lost"),
), spec=SSHSpec)

ASCEND = Section("ascend", "ascend", "Only with `backend: ascend`. See [Ascend specifics](../concepts/ascend.md).", (
    Setting("init", Words.of(AscendInit), "`dynamic`: as msrun, a scheduler and `MS_*` variables, no rank table; "
            "`ranktable`: `RANK_TABLE_FILE`, as the model zoo's `run_distribute_train.sh`", null=True),
    Setting("rank_table_version", Words.of(RankTableVersion, aliases=(1.0, 1.2)),
            "with `init: ranktable`: 1.2 for Atlas A3 SuperPoD (`host_ip`, `super_device_ids`, `super_pod_id` on "
            "the hosts)", null=True),
), spec=AscendSpec)

SLURM_WORD = r"[A-Za-z0-9][A-Za-z0-9._,:+-]{0,127}"  # a partition or account name
SLURM = Section("slurm", "slurm", "Only with `scheduler: slurm`. See [Under Slurm](../get-started/slurm.md).", (
    Setting("nodes", Integer(1, 4096), "`submit` asks for this many nodes (1 when null); `launch` refuses an "
            "allocation with fewer; null: every node of the allocation", null=True),
    Setting("devices_per_host", Integer(1, MAX_DEVICES_PER_HOST), "ranks per node; null: ascend 8, cpu 1", null=True),
    Setting("partition", Text(SLURM_WORD, what="Slurm partition name", numbers="integer"), "`sbatch --partition`",
            null=True),
    Setting("account", Text(SLURM_WORD, what="Slurm account name", numbers="integer"), "`sbatch --account`", null=True),
    Setting("time", Text(r"(\d+-)?\d+(:\d{1,2}){0,2}|UNLIMITED|INFINITE", what="time limit", numbers="integer"),
            "`sbatch --time`: minutes, `H:MM:SS` or `D-HH:MM:SS` (quote it in YAML)", null=True),
    Setting("requeue", Bool(), "preempted near the time limit: rank 0 saves, the job requeues and resumes"),
    Setting("warning_s", Integer(1, 65535), "USR1 this many seconds before the time limit "
            "(`--signal=B:USR1@<warning_s>`)"),
    Setting("exclusive", Bool(), "whole nodes: every core of a node for its ranks"),
    Setting("start_timeout", Number(1, 3600, unit="seconds"), "for every node's agent to connect back"),
    Setting("spares", Integer(0, 4096), "nodes asked for beyond `nodes` (`submit`, with `--no-kill`), or the allocation's "
            "next N nodes past `nodes` (`launch`; the last N without `nodes`): they pass the pre-flight and stand "
            "by to replace a failed node. See "
            "[Spares, exclusion and shrinking](../concepts/spares.md)"),
    Setting("sbatch_options", ListOf(Text(f"-{_NO_CONTROL}*", what="option"), "list of sbatch options"),
            "more `#SBATCH` lines, one option each, starting with `-` (e.g. `--qos=high`, `--gres=npu:8`)",
            null=True),
), spec=SlurmSpec)

WATCHDOG = Section("watchdog", "watchdog", ("`watchdog: false` turns it off. See "
                                            "[Stalls and the watchdog](../concepts/watchdog.md)."), (
    Setting("enabled", Bool(), "whether stalled ranks are detected"),
    Setting("stall_timeout", AnyOf((Const("auto"), Number(5, 86400, unit="seconds"))),
            "`auto`: each section's limit learned from the job (a step: 10 x the slowest step; a checkpoint save, an "
            "evaluation: 600 s the first time, then 3 x its slowest; within 30..1800 s); a number: no step (or "
            "section) for this long after a rank's first step: stalled", default="auto"),
    Setting("startup_timeout", Number(5, 86400, unit="seconds"), "no first step for this long after the attempt "
            "began: stalled"),
    Setting("beat_interval", Number(0.2, 600, unit="seconds"), "each rank's liveness beat; under a third of "
            "`stall_timeout` (of 30 s with `auto`); beats stopped for 3 x this while the kernel says the rank is "
            "stopped: `frozen`"),
    Setting("stacks", Words(("auto", "py-spy", "faulthandler")), "how stacks are taken (auto: py-spy, else "
            "faulthandler)"),
), spec=WatchdogSpec)

STRAGGLERS = Section("stragglers", "stragglers", (
    "A rank slower than the others is named (a warning line, `status.json`, `mscluster status`). See "
    "[Stragglers](../concepts/stragglers.md)."), (
    Setting("action", Words.of(StragglerAction, aliases=(False,)),
            "`warn`: name a straggler; `exclude`: name it, then rank 0 saves, the attempt stops and the straggler's "
            "host is excluded (a spare takes its place, or the job shrinks; needs `restarts`); `off` (YAML reads a "
            "bare `off` as `false`: taken as `off`): score nothing"),
    Setting("threshold", Number(0, 1, low_open=True, high_open=True, unit="number"),
            "a rank whose relative score (the fastest rank's median step time / its own) stays below this for "
            "`window_steps` steps is a straggler; 0.75 leaves a healthy rank with +-15% jitter well above it"),
    Setting("window_steps", Integer(3, 1000), "the steps each rank's median is taken over, and how many of its "
            "reports in a row below (or again above) the threshold name (or un-name) it"),
), spec=StragglerSpec)


EXCLUSION = Section("exclusion", "exclusion", (
    "When a host is taken out of the job and for how long. See "
    "[Spares, exclusion and shrinking](../concepts/spares.md)."), (
    Setting("after", Integer(1, 100), "a host that is the root cause of this many failed attempts is excluded (a "
            "lost host, a hardware-looking crash, a failed NPU pre-flight or a straggler with `action: exclude` "
            "is excluded at once)"),
    Setting("cooldown", Number(0, 604800, unit="seconds"), "an excluded host is not used again for this long; it "
            "doubles each time the same host is excluded again (at most 16 x); then it comes back as a spare once "
            "it passes the pre-flight"),
), spec=ExclusionSpec)

ELASTIC = Section("elastic", "elastic", (
    "Without it, a failed host with no spare left ends the job. With it, the job goes on with fewer hosts at the "
    "same global batch. See [Spares, exclusion and shrinking](../concepts/spares.md)."), (
    Setting("min_hosts", Integer(1, 4096), "the fewest hosts the job may shrink to", REQUIRED),
    Setting("allow_batch_change", Bool(), "built-in trainer: when `batch_size x ranks x grad_accumulation` cannot "
            "be kept exactly on fewer ranks, go on with the nearest global batch instead of ending the job"),
), spec=ElasticSpec)


def seconds_kind(kind: Kind) -> Number:
    """The number of seconds a watchdog setting takes (``stall_timeout`` also takes ``auto``)."""
    return next(k for k in getattr(kind, "kinds", (kind,)) if isinstance(k, Number))


def _train_setting(field: dataclasses.Field, hint: Any) -> Setting:
    """A ``TrainConfig`` field as a setting, with the bounds and choices trainer/config.py checks."""
    name = field.name
    optional = get_origin(hint) is Union and type(None) in get_args(hint)
    base = next(a for a in get_args(hint) if a is not type(None)) if optional else hint
    low = 0 if name in train_config.POSITIVE or name in train_config.NON_NEGATIVE else None
    high = train_config.UPPER[name][0] if name in train_config.UPPER else None
    kind: Kind
    if name == "snapshot_every_steps":  # trainer/config.py's _snapshot_every
        kind = AnyOf((Integer(0, train_config.MAX_SNAPSHOT_EVERY), Const(train_config.SNAPSHOT_AUTO)))
    elif name in train_config.CHOICES:
        kind = Words(train_config.CHOICES[name])
    elif base is bool:
        kind = Bool()
    elif base is int:
        kind = Integer(low, high, low_open=name in train_config.POSITIVE)
    elif base is float:
        kind = Number(low, train_config.BELOW.get(name, high), low_open=name in train_config.POSITIVE,
                      high_open=name in train_config.BELOW)
    else:
        kind = Text(f"{_NO_CONTROL}*", numbers="number")  # trainer/config.py takes a number's text
    # a setting without its line still validates; tests/test_settings_doc.py asks for the line
    return Setting(name, kind, train_config.DOCS.get(name, ""), yaml_value(field.default), null=optional)


_TRAIN_HINTS = get_type_hints(train_config.TrainConfig)
TRAIN = Section("train", "train", (
    "The built-in trainer's settings (also a settings file for `mscluster train --config`, with "
    "`--set key=value`); checked before anything starts. Not with `command:`. The gradient exchange, "
    "accumulation and the trainer itself: [Training settings](training-settings.md)."),
    tuple(_train_setting(f, _TRAIN_HINTS[f.name]) for f in dataclasses.fields(train_config.TrainConfig)),
    spec=train_config.TrainConfig)

TOP = Section("", "Top level", "", (
    Setting("name", Text(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}", what="string"),
            "names the job folders: letters, digits, `.`, `_`, `-`", REQUIRED),
    Setting("backend", Words.of(Backend), "`cpu`: MindSpore's dynamic cluster, a scheduler on the first host; "
            "`ascend`: HCCL on NPUs", Backend.CPU.value),
    Setting("workdir", PATH, "where job folders are created; relative: to the launch folder locally, to the SSH "
            "user's home remotely"),
    Setting("python", Text(r"[A-Za-z0-9._/+~-]{1,4096}", what="path"),
            "the interpreter on every host; null: the launcher's own for local hosts, `python3` remotely. "
            "Letters, digits and `. _ / + ~ -` only", null=True),
    Setting("ssh", SSH, "how hosts are reached", None, null=True),
    Setting("hosts", ListOf(HOST, "list of hosts", min_items=1), "the machines and their devices; not used with "
            "`scheduler: slurm`", None, default_text="required with `scheduler: ssh`; see [hosts](#hosts)"),
    Setting("scheduler_port", PORT, "the dynamic cluster's scheduler port on the first host; null: a free port at "
            "launch. Not used with `ascend.init: ranktable`", null=True),
    Setting("restarts", Integer(0, 100), "relaunch the whole job this many times after a failure, from the newest "
            "checkpoint"),
    Setting("bind_cores", Bool(), "pin each rank to its share of the host's cores (on Ascend: of its NPU's "
            "NUMA-local cores)"),
    Setting("env", MapOf(r"[A-Za-z_][A-Za-z0-9_]{0,255}", AnyOf((Text(r"[^\x00]*", what="string"),
                                                                  Number())), "mapping name -> string or number"),
            "extra environment variables for every process; the variables the launcher sets are refused",
            {}, null=True),
    Setting("console", AnyOf((Const("all"), ListOf(Integer(0), "list of ranks", min_items=1))),
            "ranks whose every line the terminal shows (warnings and errors of every rank always show)"),
    Setting("train", TRAIN, "the built-in trainer's settings", None, null=True),
    Setting("command", ListOf(AnyOf((Text(r"[^\x00]*", what="string"), Number())), "list of strings", min_items=1),
            "your own program: the argv every rank runs instead of the built-in trainer; not with `train:`; a "
            "first word `python` is the cluster's interpreter",
            None, null=True),
    Setting("cwd", PATH, "`command:`'s folder on every host; null: the folder `launch` runs in. Only with "
            "`command:`", null=True),
    Setting("watchdog", AnyOf((WATCHDOG, Const(False))), "stall detection; `false`: off", None, null=True),
    Setting("stragglers", STRAGGLERS, "slow ranks named", None, null=True),
    Setting("spares", ListOf(HOST, "list of hosts"), "hosts like `hosts:` that pass the pre-flight and stand by: "
            "one takes a failed host's place (its ranks and device ids) at the next restart; needs `restarts`. Not "
            "with `scheduler: slurm` (use `slurm.spares`)", None, null=True, default_text="none"),
    Setting("exclusion", EXCLUSION, "when a host is excluded, and its cooldown", None, null=True),
    Setting("elastic", ELASTIC, "go on with fewer hosts when no spare is left", None, null=True,
            default_text="off"),
    Setting("scheduler", Words.of(SchedulerKind), "`ssh`: the `hosts:` list over SSH; `slurm`: the allocation's "
            "nodes through srun (no `hosts:`)"),
    Setting("slurm", SLURM, "only with `scheduler: slurm`", None, null=True),
    Setting("ascend", ASCEND, "only with `backend: ascend`", None, null=True),
), spec=ClusterSpec)

SECTIONS = (TOP, HOST, SSH, ASCEND, SLURM, WATCHDOG, STRAGGLERS, EXCLUSION, ELASTIC, TRAIN)  # in the page's order
