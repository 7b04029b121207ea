"""What the launcher and a host's agent say to each other: one JSON object per line.

Launcher -> agent (stdin): the first line is an AgentSpec; then nothing. EOF on the agent's stdin
(the launcher closed it, died, or the SSH connection dropped) means: stop every process now.
Agent -> launcher (stdout): events, one JSON object a line:
  {"ev": "started", "name", "pid"}         a process started (its own process group: pgid == pid)
  {"ev": "out", "name", "line"}            one line of its output (stdout and stderr merged)
  {"ev": "exit", "name", "code", "signal", "time", "error"}  it ended; error = its error file, if any
  {"ev": "done", "ok"}                     every process of this host has ended; the agent exits
Pure data and (de)serialisation: no I/O here.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any, Optional

SCHEDULER = "scheduler"


@dataclass(frozen=True)
class ProcessSpec:
    """One process an agent starts: a rank (``rank`` >= 0) or the scheduler (``rank`` None)."""

    name: str  # "rank<N>" or "scheduler"
    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    rank: Optional[int] = None
    device_id: Optional[int] = None
    cpus: Optional[tuple[int, ...]] = None  # None = the agent splits the host's cores (if bind_cores); () = left to the OS
    local_rank: int = 0
    local_size: int = 1


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


def event(kind: str, **fields: Any) -> str:
    """One event line (without the newline)."""
    return json.dumps({"ev": kind, **fields}, separators=(",", ":"))


def parse_event(line: str) -> Optional[dict[str, Any]]:
    """The event in ``line``, or None when the line is not one (e.g. the agent's own stderr)."""
    if not line.startswith("{"):
        return None
    try:
        obj = json.loads(line)
    except ValueError:
        return None
    return obj if isinstance(obj, dict) and "ev" in obj else None


def split_cpus(available: list[int], local_rank: int, local_size: int) -> tuple[int, ...]:
    """This rank's even share of the host's cores (round-robin when ranks outnumber cores)."""
    cores = sorted(available)
    if not cores:
        return ()
    if local_size >= len(cores):
        return (cores[local_rank % len(cores)],)
    per = len(cores) // local_size
    return tuple(cores[local_rank * per:(local_rank + 1) * per])
