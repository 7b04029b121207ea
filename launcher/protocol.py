"""What the launcher and a host's agent say to each other: one JSON object per line, typed both ways.

Launcher -> agent (stdin): the first line is an ``AgentSpec``; then only control lines, one
``ControlMessage`` word a line (``encode_control``/``decode_control``; the agent buffers partial
reads with ``ControlReader`` and acts on each whole line):

    beat      every ``keepalive_interval``: the launcher and the network to it are up
    stacks    dump every process's Python stack (the stall watchdog)
    preempt   SIGUSR1 to every rank (Slurm's warning before the time limit): save and leave
    stop      stop every process of this host now (TERM, the grace period, KILL) and end with Done;
              sent when every rank has ended and only the scheduler is left waiting

A line that is no control word is reported on the agent's stderr, never acted on. EOF on the
agent's stdin (the launcher closed it, died, or the SSH connection dropped) means: stop every
process now, as ``stop`` does.

Agent -> launcher (stdout): one message a line, each a frozen dataclass here:

    Started  {"ev": "started", "name", "pid", "cpus"}      a process started (its own process group)
    Output   {"ev": "out", "name", "line", "stream"}       one line it printed (stream: stdout | stderr)
    Relayed  {"ev": "event", "name", "event": {...}}       one event it sent on its event channel
                                                           (``mscluster.events``; never its output)
    Exited   {"ev": "exit", "name", "rank", "code", "signal", "time", "error"}
                                                           it ended; error = its error file, if any
    Stacks   {"ev": "stacks", "name", "text", "method"}    its Python stack, asked for by a "stacks" line
    Alive    {"ev": "alive", "time", "states"}             the agent's beat, every keepalive_interval, with
                                                           each live rank's kernel state ({name: "S"})
    Done     {"ev": "done", "ok"}                          every process of this host has ended

``decode_message`` checks every field's type and that a process name is one the launcher gave
(``rank<N>`` or ``scheduler``): the launcher trusts no message blindly. Pure data: no I/O here.
"""
from __future__ import annotations

import enum
import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Optional, Union

from mscluster import events
from mscluster.jobfiles import SCHEDULER, is_process_name



class ControlMessage(str, enum.Enum):
    """A control line from the launcher to an agent (after the spec line)."""

    BEAT = "beat"  # the launcher is alive
    STACKS = "stacks"  # dump every process's Python stack
    PREEMPT = "preempt"  # forward SIGUSR1 to every rank: save a checkpoint, the job is about to end
    STOP = "stop"  # stop every process of this host now (TERM, grace, KILL), as EOF does


MAX_CONTROL_LINE = 4096  # a control line is one short word: a longer one is garbage, dropped unread

__all__ = ["SCHEDULER", "ControlMessage", "ControlReader", "encode_control", "decode_control", "ProcessSpec", "AgentSpec", "Started", "Output", "Relayed", "Exited", "Stacks", "Alive", "Done",
           "AgentMessage", "ProtocolError", "encode_message", "decode_message", "split_cpus"]

MAX_MESSAGE_BYTES = 1 << 20  # an Output line is capped by the agent at 64 KiB; an error file at 256 KiB


@dataclass(frozen=True)
class ProcessSpec:
    """One process an agent starts: a rank (``rank`` >= 0) or the scheduler (``rank`` None).

    ``env`` is what the launcher adds on top of the host's own environment, exactly (the job
    plan); the agent fills in only ``MSCLUSTER_EVENT_FD``, the number of the pipe it opens.
    """

    name: str  # "rank<N>" or "scheduler"
    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    rank: Optional[int] = None
    device_id: Optional[int] = None
    cpus: Optional[tuple[int, ...]] = None  # None = the agent splits the host's cores (if bind_cores); () = left to the OS
    local_rank: int = 0
    local_size: int = 1
    cwd: Optional[str] = None  # None = the agent's own folder (the launch folder locally, the login folder remotely)
    error_file: Optional[str] = None  # where mscluster.rank.record writes an uncaught exception


@dataclass(frozen=True)
class AgentSpec:
    """Everything one host's agent needs: where the job lives and which processes to run."""

    host: str
    job_dir: str
    processes: tuple[ProcessSpec, ...]
    files: tuple[tuple[str, str], ...] = ()  # (path relative to job_dir, content) to write first
    grace_period: float = 5.0  # seconds between TERM and KILL
    attempt: int = 0
    bind_cores: bool = True
    keepalive_interval: float = 0.0  # > 0: beat to the launcher this often, and expect its beats
    keepalive_count: int = 3  # its beats missed before the agent stops its processes on its own
    stack_tool: str = "auto"  # py-spy | faulthandler | auto (py-spy, else faulthandler)
    snapshot_dir: str = ""  # the host's in-memory snapshot folder: removed if the launcher dies ("" = none)

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @staticmethod
    def from_json(text: str) -> "AgentSpec":
        raw = json.loads(text)
        procs = tuple(ProcessSpec(**{**p, "argv": tuple(p["argv"]),
                                     "env": tuple(tuple(kv) for kv in p["env"]),
                                     "cpus": None if p.get("cpus") is None else tuple(p["cpus"])})
                      for p in raw.pop("processes"))
        files = tuple(tuple(kv) for kv in raw.pop("files", ()))
        return AgentSpec(processes=procs, files=files, **raw)


# -- agent -> launcher ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Started:
    name: str
    pid: int
    cpus: Optional[tuple[int, ...]] = None
    ev = "started"


@dataclass(frozen=True)
class Output:
    name: str
    line: str
    stream: str = "stdout"  # stdout | stderr
    ev = "out"


@dataclass(frozen=True)
class Relayed:
    name: str
    event: events.RankEvent
    ev = "event"


@dataclass(frozen=True)
class Exited:
    name: str
    rank: Optional[int]
    code: Optional[int]  # None when a signal ended it
    signal: Optional[str]
    time: float
    error: Optional[Mapping[str, Any]] = field(default=None, compare=False)  # the error file's record
    ev = "exit"


@dataclass(frozen=True)
class Stacks:
    """A process's Python stack, captured on the launcher's request (the watchdog)."""

    name: str
    text: str
    method: str  # py-spy | faulthandler | none
    state: str = "?"  # the kernel's process state when the stack was taken (/proc/<pid>/stat): T stopped, D ...
    ev = "stacks"


@dataclass(frozen=True)
class Alive:
    """The agent's beat: its host and the network to it are up; with the kernel's state of each
    live rank (/proc/<pid>/stat: R, S, D, T, ...), for the watchdog to tell frozen from busy."""

    time: float
    states: Mapping[str, str] = field(default_factory=dict)
    ev = "alive"


@dataclass(frozen=True)
class Done:
    ok: bool
    ev = "done"


AgentMessage = Union[Started, Output, Relayed, Exited, Stacks, Alive, Done]


class ProtocolError(ValueError):
    """An agent's line that is not a valid message (the message says what is wrong)."""


def encode_message(msg: AgentMessage) -> str:
    """One message as a JSON line, without the newline."""
    if isinstance(msg, Relayed):
        body: dict[str, Any] = {"name": msg.name, "event": events.to_dict(msg.event)}
    else:
        body = asdict(msg)
    return json.dumps({"ev": msg.ev, **body}, separators=(",", ":"), allow_nan=True)


def decode_message(line: str) -> AgentMessage:
    """The message of one line from an agent.

    Raises:
        ProtocolError: not JSON, an unknown kind, a field of the wrong type, or a process name
            the launcher never gave.
    """
    if len(line) > MAX_MESSAGE_BYTES:
        raise ProtocolError(f"a message longer than {MAX_MESSAGE_BYTES} bytes")
    try:
        raw = json.loads(line)
    except ValueError:
        raise ProtocolError(f"not a message: {line[:120]!r}") from None
    if not isinstance(raw, dict):
        raise ProtocolError(f"not a message: {line[:120]!r}")
    kind = raw.get("ev")
    if kind not in ("done", "started", "out", "event", "exit", "stacks", "alive"):
        raise ProtocolError(f"unknown message kind {str(kind)[:40]!r}")
    if kind == "done":
        return Done(ok=_typed(raw, "ok", bool))
    if kind == "alive":
        when = raw.get("time")
        if isinstance(when, bool) or not isinstance(when, (int, float)) or not math.isfinite(when):
            raise ProtocolError("alive: time must be a finite number")
        states = raw.get("states", {})
        if not isinstance(states, dict) or len(states) > 4096 or not all(
                isinstance(k, str) and is_process_name(k) and isinstance(v, str) and len(v) == 1
                for k, v in states.items()):
            raise ProtocolError("alive: states must map process names to one-letter kernel states")
        return Alive(time=float(when), states=dict(states))
    name = _typed(raw, "name", str)
    if not is_process_name(name):
        raise ProtocolError(f"{kind}: unknown process name {name[:40]!r}")
    if kind == "started":
        cpus = raw.get("cpus")
        if cpus is not None and not (isinstance(cpus, list) and all(_is_int(c) for c in cpus)):
            raise ProtocolError("started: cpus must be a list of integers")
        return Started(name=name, pid=_typed(raw, "pid", int), cpus=None if cpus is None else tuple(cpus))
    if kind == "out":
        stream = raw.get("stream", "stdout")
        if stream not in ("stdout", "stderr"):
            raise ProtocolError(f"out: stream must be stdout or stderr, got {stream!r}")
        return Output(name=name, line=_typed(raw, "line", str), stream=stream)
    if kind == "event":
        try:
            return Relayed(name=name, event=events.from_dict(raw.get("event")))
        except events.EventError as exc:
            raise ProtocolError(f"event: {exc}") from None
    if kind == "stacks":
        method = raw.get("method")
        if method not in ("py-spy", "faulthandler", "none"):
            raise ProtocolError(f"stacks: unknown method {method!r}")
        state = raw.get("state", "?")
        if not isinstance(state, str) or len(state) != 1:
            raise ProtocolError("stacks: state must be one letter")
        return Stacks(name=name, text=_typed(raw, "text", str), method=method, state=state)
    if kind == "exit":
        when = raw.get("time")
        if isinstance(when, bool) or not isinstance(when, (int, float)) or not math.isfinite(when):
            raise ProtocolError("exit: time must be a finite number")
        error = raw.get("error")
        if error is not None and not (isinstance(error, dict) and isinstance(error.get("message", ""), str)
                                      and isinstance(error.get("traceback", ""), str)):
            raise ProtocolError("exit: error must be an error-file record (message, traceback)")
        return Exited(name=name, rank=_typed(raw, "rank", int, optional=True),
                      code=_typed(raw, "code", int, optional=True), signal=_typed(raw, "signal", str, optional=True),
                      time=float(when), error=error)
    raise ProtocolError(f"unknown message kind {kind!r}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _typed(raw: Mapping[str, Any], key: str, kind: type, optional: bool = False) -> Any:
    value = raw.get(key)
    if value is None and optional:
        return None
    ok = _is_int(value) if kind is int else isinstance(value, kind)
    if not ok:
        raise ProtocolError(f"{raw.get('ev')}: {key} must be {'an integer' if kind is int else kind.__name__}, "
                            f"got {value!r:.60}")
    return value


def split_cpus(available: list[int], local_rank: int, local_size: int) -> tuple[int, ...]:
    """This rank's even share of the host's cores (round-robin when ranks outnumber cores)."""
    cores = sorted(available)
    if not cores:
        return ()
    if local_size >= len(cores):
        return (cores[local_rank % len(cores)],)
    per = len(cores) // local_size
    return tuple(cores[local_rank * per:(local_rank + 1) * per])


def encode_control(msg: ControlMessage) -> str:
    """One control line, with its newline."""
    return msg.value + "\n"


def decode_control(line: str) -> ControlMessage:
    """The control message of one line (without its newline; surrounding blanks are ignored).

    Raises:
        ProtocolError: the line is no control word.
    """
    word = line.strip()
    try:
        return ControlMessage(word)
    except ValueError:
        raise ProtocolError(f"not a control line: {word[:80]!r}") from None


class ControlReader:
    """Turns the bytes of the agent's stdin, as reads deliver them, into whole control lines.

    A line split across reads waits for its end; ``feed`` returns each complete line's message,
    or a ``ProtocolError`` for a line that is none (the caller reports it and goes on).
    """

    def __init__(self) -> None:
        self._partial = b""

    def feed(self, data: bytes) -> list[Union[ControlMessage, ProtocolError]]:
        *lines, self._partial = (self._partial + data).split(b"\n")
        if len(self._partial) > MAX_CONTROL_LINE:
            lines.append(self._partial[:MAX_CONTROL_LINE])
            self._partial = b""
        out: list[Union[ControlMessage, ProtocolError]] = []
        for raw in lines:
            if not raw.strip():
                continue
            try:
                out.append(decode_control(raw.decode("utf-8", "replace")))
            except ProtocolError as exc:
                out.append(exc)
        return out
