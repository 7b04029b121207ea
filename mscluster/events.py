"""The events a rank sends its launcher: the one schema both sides import.

A rank writes one JSON object per line on its event channel (``mscluster.rank`` does it; the
channel is a pipe of its own, never its stdout, so nothing a program prints is ever taken for an
event). The host's agent decodes each line with ``decode`` and relays it; the launcher decodes it
again, since it trusts no message blindly. Kinds:

    progress    {"v": 1, "kind": "progress", "time", "step", "epoch"?, "loss"?, "scalars": {name: number}}
    eval        {"v": 1, "kind": "eval", "time", "epoch", "metrics": {name: number}}
    checkpoint  {"v": 1, "kind": "checkpoint", "time", "path", "step"}
    beat        {"v": 1, "kind": "beat", "time"}     every few seconds from a thread: alive, not frozen
    finished    {"v": 1, "kind": "finished", "time"} the rank's entry point returned: its work is done
    section     {"v": 1, "kind": "section", "time", "name", "end": bool}   the rank enters (end false) or
                leaves (end true) a named part of its work: the watchdog times each section on its own

A progress event's scalar ``compute_s`` (``COMPUTE_S``) is the seconds per step the rank spent
outside the gradient exchange: the launcher's straggler scores prefer it to the wall step time.

``step`` counts the program's own steps (the built-in trainer: optimizer steps); numbers may be
NaN or infinite (a diverged loss is worth seeing). Pure data: no I/O, no MindSpore, no launcher.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Union

VERSION = 1
MAX_LINE_BYTES = 16384  # an event is a few hundred bytes; a longer line is refused, not parsed
MAX_SCALARS = 64
NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_./-]{0,63}")  # a scalar, metric or section name
_NAME = NAME
COMPUTE_S = "compute_s"  # a progress scalar: seconds per step outside the gradient exchange (launcher.stragglers)


class EventError(ValueError):
    """A line that is not a valid event (the message says what is wrong)."""


@dataclass(frozen=True)
class Progress:
    """A step is done."""

    step: int
    time: float
    epoch: Optional[int] = None
    loss: Optional[float] = None
    scalars: Mapping[str, float] = field(default_factory=dict)
    kind = "progress"


@dataclass(frozen=True)
class Eval:
    """An evaluation is done; ``metrics`` are the program's (the built-in trainer: top1, loss)."""

    epoch: int
    time: float
    metrics: Mapping[str, float] = field(default_factory=dict)
    kind = "eval"


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint is complete on disk at ``path`` (as the rank sees it), taken after ``step``."""

    path: str
    step: int
    time: float
    kind = "checkpoint"


@dataclass(frozen=True)
class Beat:
    """The process is alive: sent every few seconds by a background thread, whatever training does."""

    time: float
    kind = "beat"


@dataclass(frozen=True)
class Finished:
    """The rank's entry point returned normally (``mscluster.rank.record``): all that is left is the
    interpreter's and the framework's teardown."""

    time: float
    kind = "finished"


# the sections the built-in trainer marks, and the watchdog's names for the time outside any section
CHECKPOINT_SECTION = "checkpoint"
EVAL_SECTION = "eval"
STEP_SECTION = "step"  # between steps: not a section a rank enters
STARTUP_SECTION = "startup"  # from the start to the first step: not a section a rank enters
RESERVED_SECTIONS = (STEP_SECTION, STARTUP_SECTION)


@dataclass(frozen=True)
class Section:
    """The rank enters (``end`` false) or leaves (``end`` true) the section ``name`` (a checkpoint
    save, an evaluation, any part of a program's own): the watchdog gives each its own timeout."""

    name: str
    time: float
    end: bool = False
    kind = "section"


RankEvent = Union[Progress, Eval, Checkpoint, Beat, Finished, Section]


def encode(event: RankEvent) -> str:
    """The event as one JSON line, without the newline."""
    body: dict[str, Any] = {"v": VERSION, "kind": event.kind, "time": event.time}
    if isinstance(event, Progress):
        body["step"] = event.step
        if event.epoch is not None:
            body["epoch"] = event.epoch
        if event.loss is not None:
            body["loss"] = event.loss
        body["scalars"] = dict(event.scalars)
    elif isinstance(event, Eval):
        body.update(epoch=event.epoch, metrics=dict(event.metrics))
    elif isinstance(event, (Beat, Finished)):
        pass
    elif isinstance(event, Section):
        body.update(name=event.name, end=event.end)
    else:
        body.update(path=event.path, step=event.step)
    return json.dumps(body, separators=(",", ":"), allow_nan=True)


def to_dict(event: RankEvent) -> dict[str, Any]:
    """The event as the JSON object ``encode`` writes."""
    return json.loads(encode(event))


def decode(line: Union[str, bytes]) -> RankEvent:
    """The event a line holds.

    Raises:
        EventError: not JSON, not an object, an unknown kind or version, or a field of the wrong type.
    """
    if len(line) > MAX_LINE_BYTES:
        raise EventError(f"longer than {MAX_LINE_BYTES} bytes")
    try:
        raw = json.loads(line)
    except (ValueError, UnicodeDecodeError) as exc:
        raise EventError(f"not JSON ({exc})") from None
    return from_dict(raw)


def from_dict(raw: Any) -> RankEvent:
    """The event of a decoded JSON object (see ``decode``)."""
    if not isinstance(raw, dict):
        raise EventError("not a JSON object")
    if raw.get("v") != VERSION:
        raise EventError(f"unknown event version {raw.get('v')!r} (this launcher reads {VERSION})")
    kind = raw.get("kind")
    when = _number(raw, "time", finite=True)
    if kind == "progress":
        _only(raw, {"v", "kind", "time", "step", "epoch", "loss", "scalars"})
        return Progress(step=_count(raw, "step"), time=when, epoch=_count(raw, "epoch", optional=True),
                        loss=_number(raw, "loss", optional=True), scalars=_numbers(raw, "scalars"))
    if kind == "eval":
        _only(raw, {"v", "kind", "time", "epoch", "metrics"})
        return Eval(epoch=_count(raw, "epoch"), time=when, metrics=_numbers(raw, "metrics"))
    if kind == "beat":
        _only(raw, {"v", "kind", "time"})
        return Beat(time=when)
    if kind == "finished":
        _only(raw, {"v", "kind", "time"})
        return Finished(time=when)
    if kind == "section":
        _only(raw, {"v", "kind", "time", "name", "end"})
        name, end = raw.get("name"), raw.get("end", False)
        if not isinstance(name, str) or not _NAME.fullmatch(name) or name in RESERVED_SECTIONS:
            raise EventError(f"section: name must be a valid name other than {' or '.join(RESERVED_SECTIONS)}, "
                             f"got {name!r}")
        if not isinstance(end, bool):
            raise EventError(f"section: end must be true or false, got {end!r}")
        return Section(name=name, time=when, end=end)
    if kind == "checkpoint":
        _only(raw, {"v", "kind", "time", "path", "step"})
        path = raw.get("path")
        if not isinstance(path, str) or not path or "\x00" in path:
            raise EventError("checkpoint: path must be a non-empty string")
        return Checkpoint(path=path, step=_count(raw, "step"), time=when)
    raise EventError(f"unknown event kind {kind!r}")


def _only(raw: Mapping[str, Any], allowed: set) -> None:
    extra = sorted(set(raw) - allowed)
    if extra:
        raise EventError(f"{raw.get('kind')}: unknown field {extra[0]!r}")


def _count(raw: Mapping[str, Any], key: str, optional: bool = False) -> Optional[int]:
    value = raw.get(key)
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise EventError(f"{raw.get('kind')}: {key} must be an integer >= 0, got {value!r}")
    return value


def _number(raw: Mapping[str, Any], key: str, optional: bool = False, finite: bool = False) -> Optional[float]:
    value = raw.get(key)
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (finite and not math.isfinite(value)):
        raise EventError(f"{raw.get('kind')}: {key} must be a {'finite ' if finite else ''}number, got {value!r}")
    return float(value)


def _numbers(raw: Mapping[str, Any], key: str) -> dict[str, float]:
    value = raw.get(key, {})
    if not isinstance(value, dict) or len(value) > MAX_SCALARS:
        raise EventError(f"{raw.get('kind')}: {key} must be a mapping of at most {MAX_SCALARS} names to numbers")
    out = {}
    for name, number in value.items():
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise EventError(f"{raw.get('kind')}: {key}: {name!r} is not a valid name")
        if isinstance(number, bool) or not isinstance(number, (int, float)):
            raise EventError(f"{raw.get('kind')}: {key}.{name} must be a number, got {number!r}")
        out[name] = float(number)
    return out
