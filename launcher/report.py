"""The failure table: every rank that failed, the root cause (the first failure, by time) first.

Pure formatting of RankFailure records (torchelastic's ChildFailedError table is the model).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Optional, Sequence

from launcher.table import format_table

TRACEBACK_LINES = 8


@dataclass(frozen=True)
class RankFailure:
    """One process that did not end well."""

    host: str
    name: str  # rank<N>, scheduler, or agent (the host's agent or its SSH session)
    rank: Optional[int]
    device_id: Optional[int]
    exit_code: Optional[int]
    signal: Optional[str]
    time: float
    log_path: Optional[str]
    message: str = ""  # the exception line from the rank's error file, or what went wrong
    traceback_tail: tuple[str, ...] = ()
    during_teardown: bool = False  # stopped by us after the root cause, not a cause itself
    attempt: int = 0
    reason: Optional[str] = None  # what happened when it is not an exit: "stalled"

    def outcome(self) -> str:
        if self.reason:
            return self.reason
        if self.signal:
            return self.signal
        return f"exit {self.exit_code}" if self.exit_code is not None else "lost"

    def to_dict(self) -> dict[str, Any]:
        return {"host": self.host, "name": self.name, "rank": self.rank, "device_id": self.device_id,
                "exit_code": self.exit_code, "signal": self.signal, "time": self.time,
                "log": self.log_path, "message": self.message, "traceback_tail": list(self.traceback_tail),
                "during_teardown": self.during_teardown, "attempt": self.attempt, "reason": self.reason}


def order_failures(failures: Sequence[RankFailure]) -> list[RankFailure]:
    """Root cause first: failures before the teardown by time, then those the teardown caused."""
    return sorted(failures, key=lambda f: (f.during_teardown, f.time))


def format_failures(failures: Sequence[RankFailure], title: str = "job failed") -> str:
    """The table a user reads first when a job fails."""
    ordered = order_failures(failures)
    if not ordered:
        return f"{title}: no rank failed"
    rows = [("", "time", "host", "rank", "device", "result", "log")]
    for i, f in enumerate(ordered):
        mark = "root cause" if i == 0 else ("stopped" if f.during_teardown else "failed")
        rows.append((mark, time.strftime("%H:%M:%S", time.localtime(f.time)), f.host,
                     f.name if f.rank is None else str(f.rank),
                     "-" if f.device_id is None else str(f.device_id), f.outcome(), f.log_path or "-"))
    lines = [f"{title}; root cause first:", *format_table(rows)]
    root = ordered[0]
    if root.message or root.traceback_tail:
        lines.append(f"root cause ({root.host}, {root.name}):")
        if root.message:
            lines.append(f"  {root.message}")
        for line in root.traceback_tail:
            lines.append(f"  | {line}")
    return "\n".join(lines)


def traceback_tail(error: Optional[dict[str, Any]], output_tail: Sequence[str]) -> tuple[str, tuple[str, ...]]:
    """(message, last traceback lines) from a rank's error file, else from its last output lines."""
    if error:
        tb = [l for l in str(error.get("traceback", "")).splitlines() if l.strip()]
        return str(error.get("message", "")), tuple(tb[-TRACEBACK_LINES:])
    tail = [l for l in output_tail if l.strip()]
    return "", tuple(tail[-TRACEBACK_LINES:])
