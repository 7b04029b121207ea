"""Training settings: one frozen dataclass with the tutorial's defaults, loaded from YAML and ``--set``.

Imports no MindSpore: the launcher validates a cluster file's ``train:`` section with it before
anything starts. Every error names the key (and the file, where there is one).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from dataclasses import dataclass, fields
from typing import Any, Mapping, Optional, Union, get_args, get_origin, get_type_hints

import yaml

from mscluster import safeyaml

from trainer.errors import ConfigError
from trainer.overrides import OverrideError, merge, parse_pairs

ARCHS = ("resnet18", "resnet34", "resnet50", "resnet101")
RESUME_NONE = "none"  # resume: start from fresh weights
RESUME_AUTO = "auto"  # resume: from the newest good checkpoint of output_dir, if there is one


@dataclass(frozen=True)
class TrainConfig:
    """Every training setting, with the tutorial's defaults (ResNet-50, CIFAR-10, Momentum 0.01/0.9)."""

    # data
    data_dir: str = "data/cifar-10-batches-bin"  # folder of the .bin files, or its parent
    image_size: int = 224  # pixels per side after Resize (the tutorial: 224; 32 allowed)
    num_classes: int = 10
    num_parallel_workers: int = 1  # dataset map workers per rank
    # network
    arch: str = "resnet50"
    width: int = 64  # channels of the first stage (64 = the standard ResNet)
    stem: str = "imagenet"  # imagenet: 7x7/2 conv + max-pool; cifar: 3x3/1 conv, no pool
    # optimisation
    epochs: int = 1
    batch_size: int = 32  # images per device per micro-batch (the step's batch when grad_accumulation is 1)
    grad_accumulation: int = 1  # micro-batches per optimizer step: global batch = batch_size x ranks x this
    grad_allreduce_dtype: str = "float32"  # float16: the gradients cross the ranks in half precision
    grad_buckets: int = 0  # > 0: the gradients cross the ranks in this many flat buffers, not one per parameter
    # how the ranks average gradients: collective = MindSpore's AllReduce; shared_memory (cpu only) = through
    # the host's memory between the ranks of a host, AllReduce across hosts; auto = shared_memory on cpu
    # when a host runs several ranks (and grad_buckets is 0), else collective
    grad_exchange: str = "auto"
    resume_other_accumulation: bool = False  # resume a checkpoint taken with another grad_accumulation
    # resume a checkpoint taken with another number of ranks at the same global batch (the launcher sets
    # it when the job shrinks, launcher.elastic); with resume_other_accumulation too, at another global batch
    resume_other_world: bool = False
    steps_per_epoch: Optional[int] = None  # cap for short runs; None = the whole shard
    lr: float = 0.01  # peak learning rate (per step, not scaled by world size)
    lr_schedule: str = "constant"
    warmup_epochs: float = 0.0
    lr_init: Optional[float] = None  # the warm-up's first value (the zoo's lr_init); None: lr / warm-up steps
    momentum: float = 0.9
    weight_decay: float = 0.0
    loss_scale: float = 1.0  # static loss scale (Ascend mixed precision); 1 = none
    amp_level: str = "O0"
    seed: int = 1  # the same on every rank: weights are not broadcast, shards need one shuffle order
    mode: str = "graph"
    # dataset sink: the step loop runs on the device, sink_size steps per call (the zoo's way on Ascend);
    # None = on for Ascend (unless a step of the trainer's own runs), off for CPU
    sink_mode: Optional[bool] = None
    sink_size: Optional[int] = None  # steps per sink; None = a whole epoch; else its largest divisor <= this
    # output
    output_dir: str = "output"  # checkpoints/, logs and tensorboard/ go under it
    save_every_epochs: int = 1
    save_every_steps: int = 0  # 0 = only at epoch ends
    keep_max: int = 5
    # in-memory snapshots (trainer.snapshot): every this many steps each host keeps the newest state in
    # tmpfs, which outlives a rank; 0 = off; auto = the most frequent that stalls training <= 1%
    snapshot_every_steps: Union[int, str] = 0
    async_save: bool = True  # write checkpoints in a background thread from a copy of the parameters
    eval_every_epochs: int = 1  # 0 = never evaluate during training
    eval_images: int = 0  # evaluate on the test split's first this many images; 0 = all of it
    log_every_steps: int = 10
    tensorboard: bool = True
    resume: str = RESUME_NONE  # none | auto | <path of a checkpoint>
    # test-only fault injection: exit with debug_fail_exit_code on this rank at this global step
    debug_fail_rank: Optional[int] = None
    debug_fail_step: Optional[int] = None
    debug_fail_exit_code: int = 3
    debug_fail_signal: int = 0  # > 0: die by this signal instead (9 = SIGKILL, as the OOM killer does)
    debug_fail_attempt: Optional[int] = None  # fire the debug_* hooks only on this attempt (MSCLUSTER_RESTART_COUNT)
    debug_pause_in_save: float = 0.0  # seconds to keep a checkpoint half-written before finishing it
    debug_hang_step: Optional[int] = None  # test-only: sleep (in Python, inside the step) at this global step
    debug_hang_rank: Optional[int] = None  # ... on this rank (None: every rank)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def resumes(self) -> bool:
        """Whether the run starts from a checkpoint (``resume`` is auto or a path)."""
        return self.resume != RESUME_NONE

    def cpu_only(self) -> Optional[tuple[str, str]]:
        """A setting that runs only on CPU: (its key, why), or None (the launcher refuses it on Ascend)."""
        if self.grad_exchange == "shared_memory":
            return "grad_exchange", ("shared_memory is for backend cpu (on Ascend, HCCL averages the gradients on "
                                     "the devices); use auto or collective")
        return None

    def global_batch_size(self, world_size: int) -> int:
        """Images per optimizer step, over every rank."""
        return self.batch_size * world_size * self.grad_accumulation

    def fingerprint(self, world_size: int) -> dict[str, Any]:
        """The settings a checkpoint must agree on to be resumed (model shape and data order).

        ``grad_accumulation`` is in it only when it is not 1, so checkpoints of earlier versions
        (which had none) still resume."""
        extra = {"grad_accumulation": self.grad_accumulation} if self.grad_accumulation != 1 else {}
        return {**extra,
            "arch": self.arch,
            "width": self.width,
            "stem": self.stem,
            "num_classes": self.num_classes,
            "image_size": self.image_size,
            "global_batch_size": self.global_batch_size(world_size),
            "world_size": world_size,
            "seed": self.seed,
        }

    @staticmethod
    def fingerprint_hash(fingerprint: Mapping[str, Any]) -> str:
        return hashlib.sha256(json.dumps(dict(fingerprint), sort_keys=True).encode()).hexdigest()[:16]


CHOICES: dict[str, tuple[str, ...]] = {
    "arch": ARCHS,
    "stem": ("imagenet", "cifar"),
    "lr_schedule": ("constant", "warmup_poly", "cosine"),
    "mode": ("graph", "pynative"),
    "amp_level": ("O0", "O1", "O2", "O3"),
    "grad_allreduce_dtype": ("float32", "float16"),
    "grad_exchange": ("auto", "collective", "shared_memory"),
}
POSITIVE = {"image_size", "num_classes", "num_parallel_workers", "width", "epochs", "batch_size",
            "steps_per_epoch", "lr", "keep_max", "log_every_steps", "loss_scale", "grad_accumulation", "sink_size"}
NON_NEGATIVE = {"lr_init", "warmup_epochs", "momentum", "weight_decay", "seed", "save_every_epochs", "grad_buckets",
                "save_every_steps", "eval_every_epochs", "eval_images", "debug_fail_rank", "debug_fail_step",
                "debug_fail_signal", "debug_fail_attempt", "debug_pause_in_save", "debug_hang_step",
                "debug_hang_rank"}


# upper bounds of counts, with why: a typo here would otherwise run for days or exhaust memory
UPPER = {
    "image_size": (1024, "a ResNet batch at 1024x1024 already needs tens of GB"),
    "batch_size": (65536, "per device"),
    "epochs": (100000, "CIFAR-10 recipes use 90 to 200"),
    "steps_per_epoch": (10 ** 8, "steps of one epoch"),
    "width": (1024, "the first stage's channels; the zoo's ResNet-50 uses 64"),
    "num_parallel_workers": (64, "dataset worker threads per rank"),
    "num_classes": (100000, "classes of the head"),
    "keep_max": (100000, "checkpoints kept"),
    "log_every_steps": (10 ** 8, "steps"),
    "debug_pause_in_save": (3600, "seconds"),
    "grad_accumulation": (1024, "micro-batches per optimizer step (each is traced into the step's graph)"),
    "grad_buckets": (1024, "flat gradient buffers"),
}


BELOW = {"momentum": 1.0}  # strictly below this

# one line per setting: the reference page (docs/reference/cluster-file.md, generated by
# python -m launcher.settings_doc) and the JSON Schema (mscluster schema) take the meanings from here
DOCS: dict[str, str] = {
    "data_dir": "folder of the CIFAR-10 `.bin` files, or its parent (on every host)",
    "image_size": "pixels per side after Resize (the tutorial's 224; 32 = CIFAR-10's own size, no resize)",
    "num_classes": "classes of the head",
    "num_parallel_workers": "dataset map workers per rank",
    "arch": "the ResNet's depth",
    "width": "channels of the first stage (64 = the standard ResNet)",
    "stem": "`imagenet`: 7x7/2 conv and max-pool; `cifar`: 3x3/1 conv, no pool (for 32x32 images)",
    "epochs": "passes over the training data",
    "batch_size": "images per device per micro-batch (the step's batch when `grad_accumulation` is 1)",
    "grad_accumulation": "micro-batches per optimizer step; the global batch is `batch_size` x ranks x this",
    "grad_allreduce_dtype": "`float16`: the gradients cross the ranks in half precision",
    "grad_buckets": "> 0: the collective's gradients travel in this many flat buffers, not one per parameter",
    "grad_exchange": "how the ranks average gradients: `collective` (MindSpore's AllReduce), `shared_memory` "
                     "(cpu: through the host's memory, AllReduce across hosts); `auto`: shared memory where a cpu "
                     "host runs several ranks, unless `grad_buckets`, a float16 exchange or `sink_mode` is set",
    "resume_other_accumulation": "resume a checkpoint taken with another `grad_accumulation` or global batch "
                                 "(its position carried over in images)",
    "resume_other_world": "resume a checkpoint taken with another number of ranks at the same global batch (the "
                          "launcher sets it when the job shrinks); with `resume_other_accumulation` also at another",
    "steps_per_epoch": "cap on the steps of an epoch, for short runs; null: the whole shard",
    "lr": "peak learning rate (per step, not scaled by the number of ranks)",
    "lr_schedule": "`constant`, `warmup_poly` (the model zoo's: warm-up, then (1-p)^2 decay) or `cosine`",
    "warmup_epochs": "epochs of linear warm-up to `lr`",
    "lr_init": "the warm-up's first value (the zoo's `lr_init`); null: `lr` / warm-up steps",
    "momentum": "Momentum's momentum",
    "weight_decay": "L2 weight decay (BatchNorm and biases excluded)",
    "loss_scale": "static loss scale (Ascend mixed precision); 1: none",
    "amp_level": "MindSpore's mixed-precision level (the letter O, not zero)",
    "seed": "the same on every rank: weights are not broadcast, and the shards need one shuffle order",
    "mode": "MindSpore's `graph` or `pynative` mode",
    "sink_mode": "dataset sink (the step loop on the device, `sink_size` steps a call); null: on for Ascend "
                 "with MindSpore's own step, off for cpu",
    "sink_size": "steps per sink: the largest divisor of the epoch's steps not above it; null: a whole epoch",
    "output_dir": "checkpoints/, logs and tensorboard/ go under it (the launcher sets it to the job folder)",
    "save_every_epochs": "a checkpoint every this many epochs",
    "save_every_steps": "also a checkpoint every this many steps; 0: only at epoch ends",
    "keep_max": "checkpoints kept (the oldest go first)",
    "async_save": "write checkpoints in a background thread from a copy of the parameters (as atomic)",
    "eval_every_epochs": "evaluate on the test split every this many epochs; 0: never during training",
    "eval_images": "evaluate on the test split's first this many images (a quicker look during a long run); "
                   "0: all of it",
    "log_every_steps": "a progress line every this many steps",
    "tensorboard": "write TensorBoard scalars under `output_dir`/tensorboard",
    "resume": "`none`, `auto` (the newest good checkpoint of the job) or a checkpoint's path",
    "snapshot_every_steps": "in-memory snapshots: every N steps each host keeps the newest whole training state "
                            "in tmpfs (`/dev/shm`), which outlives a rank; a restart resumes from it when it is at "
                            "least as new as the disk checkpoint; `auto`: the most frequent interval whose stall "
                            "stays at or below 1% of step time; 0: off",
    "debug_fail_rank": "test-only fault injection: this rank exits with `debug_fail_exit_code` at `debug_fail_step`",
    "debug_fail_step": "test-only: the global step at which `debug_fail_rank` fails",
    "debug_fail_exit_code": "test-only: the exit code of that failure",
    "debug_fail_signal": "test-only: > 0: die by this signal instead (9 = SIGKILL, as the OOM killer does)",
    "debug_fail_attempt": "test-only: the debug hooks fire only on this attempt (null: on every attempt)",
    "debug_pause_in_save": "test-only: seconds a checkpoint stays half-written before it is finished",
    "debug_hang_step": "test-only: sleep in Python, inside the step, at this global step",
    "debug_hang_rank": "test-only: the rank that sleeps at `debug_hang_step` (null: every rank)",
}


def _check_type(name: str, hint: Any, value: Any) -> Any:
    """Return ``value`` converted to ``hint``'s type, or raise ConfigError naming ``name``."""
    optional = get_origin(hint) is Union and type(None) in get_args(hint)
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{name}: must not be null")
    base = next(a for a in get_args(hint) if a is not type(None)) if optional else hint
    if base is bool:
        if isinstance(value, bool):
            return value
    elif base is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif base is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise ConfigError(f"{name}: expected a finite number, got {value!r}")
            return float(value)
    elif base is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            text = str(value)
            bad = next((ch for ch in text if ord(ch) < 32 or ord(ch) == 127), None)
            if bad is not None:
                raise ConfigError(f"{name}: holds a control character ({bad!r})")
            return text
    expected = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}[base]
    raise ConfigError(f"{name}: expected {expected}, got {value!r}")


def from_dict(values: Mapping[str, Any], source: str = "settings") -> TrainConfig:
    """Build a validated TrainConfig from a mapping of trainer keys.

    Raises:
        ConfigError: an unknown key, a wrong type or a value out of range; the message names
            ``source`` and the key.
    """
    if not isinstance(values, Mapping):
        raise ConfigError(f"{source}: expected a mapping of training settings, got {type(values).__name__}")
    hints = get_type_hints(TrainConfig)
    known = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"{source}: unknown training setting(s) {', '.join(map(str, unknown))}")
    checked: dict[str, Any] = {}
    for key, value in values.items():
        try:
            if key == "snapshot_every_steps":
                checked[key] = _snapshot_every(value)
                continue
            value = _check_type(key, hints[key], value)
            if value is not None:
                if key in CHOICES and value not in CHOICES[key]:
                    raise ConfigError(f"{key}: expected one of {', '.join(CHOICES[key])}, got {value!r}"
                                      + _choice_hint(value, CHOICES[key]))
                if key in POSITIVE and value <= 0:
                    raise ConfigError(f"{key}: must be > 0, got {value!r}")
                if key in NON_NEGATIVE and value < 0:
                    raise ConfigError(f"{key}: must be >= 0, got {value!r}")
                if key in UPPER and value > UPPER[key][0]:
                    raise ConfigError(f"{key}: at most {UPPER[key][0]} ({UPPER[key][1]}), got {value!r}")
                if key in BELOW and value >= BELOW[key]:
                    raise ConfigError(f"{key}: must be < {BELOW[key]:g}, got {value!r}")
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}") from None
        checked[key] = value
    config = TrainConfig(**checked)
    if config.sink_mode and (config.grad_accumulation > 1 or config.grad_exchange == "shared_memory"
                             or config.grad_allreduce_dtype != "float32" or config.grad_buckets):
        raise ConfigError("sink_mode: sinks MindSpore's own step; grad_accumulation > 1, grad_exchange "
                          "shared_memory, a float16 exchange and grad_buckets run the trainer's own step loop: "
                          "set sink_mode: false (or leave it unset)")
    if config.grad_exchange == "shared_memory" and config.grad_buckets:
        raise ConfigError("grad_buckets: applies to grad_exchange collective (shared_memory sums one flat "
                          "buffer per host); set one of them")
    return config


SNAPSHOT_AUTO = "auto"  # snapshot_every_steps: the most frequent interval whose stall stays <= 1% of a step
MAX_SNAPSHOT_EVERY = 10 ** 8


def _snapshot_every(value: Any) -> Union[int, str]:
    """``snapshot_every_steps``: an integer >= 0 or ``auto``."""
    if value == SNAPSHOT_AUTO:
        return SNAPSHOT_AUTO
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        if value > MAX_SNAPSHOT_EVERY:
            raise ConfigError(f"snapshot_every_steps: at most {MAX_SNAPSHOT_EVERY} (steps), got {value!r}")
        return value
    raise ConfigError(f"snapshot_every_steps: expected an integer >= 0 (0 = off) or auto, got {value!r}")


def load(path: Optional[str] = None, set_pairs: tuple[str, ...] | list[str] = ()) -> TrainConfig:
    """Load settings from an optional YAML file, then apply ``--set`` pairs.

    Raises:
        ConfigError: the file is missing or not YAML, or a setting is bad.
    """
    values: dict[str, Any] = {}
    source = "--set"
    if path is not None:
        source = path
        if not os.path.isfile(path):
            raise ConfigError(f"{path}: no such file")
        try:
            with open(path, encoding="utf-8") as handle:
                loaded = safeyaml.safe_load(handle.read(safeyaml.MAX_BYTES + 1))
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML ({_yaml_where(exc)})") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: cannot read it ({exc})") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping of training settings")
        if isinstance(loaded.get("train"), dict) and ("hosts" in loaded or "scheduler" in loaded):
            loaded = loaded["train"]  # a cluster file: take its train: section
        values = loaded
    try:
        overrides = parse_pairs(set_pairs)
    except OverrideError as exc:
        raise ConfigError(str(exc)) from None
    nested = [k for k, v in overrides.items() if isinstance(v, dict)]
    if nested:
        raise ConfigError(f"--set: unknown training setting(s) {', '.join(nested)} (trainer keys have no dots)")
    if overrides and path is not None:
        source = f"{path} with --set"
    return from_dict(merge(values, overrides), source)


def _choice_hint(value: str, choices: tuple[str, ...]) -> str:
    """A hint for the levels O0..O3 typed with a zero (``03``, which YAML reads as 3) or a small o."""
    for choice in choices:
        if choice[:1] == "O" and value.upper().lstrip("0O") == choice[1:].lstrip("0") and value != choice:
            return f" (did you mean {choice!r}, with the letter O?)"
    return ""


def _yaml_where(exc: yaml.YAMLError) -> str:
    line, problem = safeyaml.describe_error(exc)
    return f"line {line}: {problem}" if line is not None else problem
