"""The log and console sink of an attempt: each process's lines to its log file, ``all.log`` and the console.

``LogSink`` is written by the supervisor's loop (and, for a process that just started, by its
agents' reader threads: hence its lock); a log that cannot be written (a full disk) sets
``disk_error``, which the supervisor turns into the job's stop. Imports no MindSpore.
"""
from __future__ import annotations

import os
import threading
from typing import Mapping, Optional, TextIO

from launcher.protocol import AgentSpec
from mscluster import jobfiles

NOTABLE = ("WARNING", "ERROR", "CRITICAL", "FATAL", "Traceback (most recent call last)", "Error:", "Exception:")


MINDSPORE_LEVELS = ("[DEBUG]", "[INFO]", "[WARNING]", "[ERROR]", "[CRITICAL]")  # GLOG_v 0..4
MINDSPORE_DEFAULT_LEVEL = 2  # what MindSpore logs when GLOG_v is not set: WARNING and worse


def is_notable(line: str) -> bool:
    """A line worth the terminal whatever the console setting: a warning, an error, a traceback."""
    return any(word in line for word in NOTABLE)


def mindspore_log_level(line: str) -> Optional[int]:
    """The GLOG_v level of a line of MindSpore's own log (``[INFO] DISTRIBUTED(...) ...``), else None."""
    if line.startswith("["):
        for level, tag in enumerate(MINDSPORE_LEVELS):
            if line.startswith(tag):
                return level
    return None


def console_levels(specs: Mapping[str, AgentSpec]) -> dict[str, int]:
    """Each process's GLOG_v (its environment in the plan), for keeping MindSpore's chatter off the console.

    MindSpore prints some INFO lines at exit whatever GLOG_v says; the files keep them.
    """
    levels = {}
    for spec in specs.values():
        for p in spec.processes:
            raw = dict(p.env).get("GLOG_v", "")
            levels[p.name] = int(raw) if raw.isdigit() else MINDSPORE_DEFAULT_LEVEL
    return levels


class LogSink:
    """Each process's lines to its log file and to ``all.log``; the console gets a chosen part.

    ``all.log`` holds every process's lines as ``[host:rank] line`` in the order the launcher
    received them: the job's log merged by time (one clock, the launcher's), what ``mscluster
    logs JOB`` shows. The console shows every line of the ranks in ``console_ranks`` (None: all
    processes), and from every other process the lines ``is_notable`` picks out; MindSpore's own log lines below
    the process's ``GLOG_v`` never reach it.
    """

    def __init__(self, logs_dir: str, console: Optional[TextIO], attempt: int,
                 console_ranks: Optional[frozenset[int]] = frozenset({0}), levels: Mapping[str, int] = {}):
        self.logs_dir, self.console, self.attempt = logs_dir, console, attempt
        self.console_ranks = console_ranks
        self.levels = dict(levels)  # process name -> its GLOG_v: MindSpore's lines below it stay off the console
        self.disk_error: Optional[str] = None  # set when a log could not be written (a full disk)
        self._files: dict[str, TextIO] = {}
        self._unflushed: set[str] = set()  # processes whose log has lines not yet flushed
        self._lock = threading.Lock()
        os.makedirs(logs_dir, exist_ok=True)
        self._all: Optional[TextIO] = None

    def path(self, name: str) -> str:
        return os.path.join(self.logs_dir, jobfiles.log_name(name))

    def _separator(self) -> str:
        return f"===== mscluster: attempt {self.attempt} (restart {self.attempt}) =====\n"

    def _handle(self, name: str) -> TextIO:
        handle = self._files.get(name)
        if handle is None:
            handle = self._files[name] = _open_log(self.path(name))
            if self.attempt:
                handle.write(self._separator())
                handle.flush()
        return handle

    def open(self, name: str) -> None:
        """Create the log of a process that just started (even one that never prints)."""
        with self._lock:
            self._handle(name)

    def chatter(self, name: str, line: str) -> bool:
        """Whether the line is MindSpore's own log below the process's GLOG_v (files only)."""
        level = mindspore_log_level(line)
        return level is not None and level < self.levels.get(name, MINDSPORE_DEFAULT_LEVEL)

    def shows(self, name: str, line: str) -> bool:
        """Whether the console shows this line of process ``name``."""
        if self.chatter(name, line):
            return False
        if self.console_ranks is None:
            return True
        rank = jobfiles.rank_of(name)
        return (rank is not None and rank in self.console_ranks) or is_notable(line)

    def write(self, host: str, name: str, line: str) -> None:
        rank = jobfiles.rank_of(name)
        label = str(rank) if rank is not None else ("sched" if name == jobfiles.SCHEDULER else name)
        with self._lock:
            if self.disk_error is None:
                try:
                    handle = self._handle(name)
                    handle.write(line + "\n")
                    self._unflushed.add(name)
                    if self._all is None:
                        self._all = _open_log(os.path.join(self.logs_dir, jobfiles.ALL_LOG))
                        if self.attempt:
                            self._all.write(self._separator())
                    self._all.write(f"[{host}:{label}] {line}\n")
                except OSError as exc:  # a full disk (or quota) under the job folder: the job must stop
                    self.disk_error = f"cannot write the logs in {self.logs_dir}: {exc.strerror or exc}"
            if self.console is not None and self.shows(name, line):
                try:
                    self.console.write(f"[{host}:{label}] {line}\n")
                except (OSError, ValueError):  # a closed terminal or pipe: the files keep everything
                    self.console = None

    def flush(self) -> None:
        """Hand what was written since the last flush to the files and the console (once per batch)."""
        with self._lock:
            if self.disk_error is None:
                try:
                    for name in self._unflushed:
                        handle = self._files.get(name)
                        if handle is not None:
                            handle.flush()
                    if self._all is not None:
                        self._all.flush()
                except OSError as exc:
                    self.disk_error = f"cannot write the logs in {self.logs_dir}: {exc.strerror or exc}"
            self._unflushed.clear()
            if self.console is not None:
                try:
                    self.console.flush()
                except (OSError, ValueError):
                    self.console = None

    def close(self) -> None:
        with self._lock:
            handles = [*self._files.values(), *([self._all] if self._all is not None else [])]
            self._files.clear()
            self._all = None
            for handle in handles:
                try:
                    handle.close()
                except OSError as exc:  # the last buffered line did not fit on a full disk
                    self.disk_error = self.disk_error or f"cannot write the logs in {self.logs_dir}: {exc.strerror}"


def _open_log(path: str) -> TextIO:
    """A log to append to, created 0600, never through a symlink (one planted there is removed)."""
    if os.path.islink(path):
        os.unlink(path)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    return open(fd, "a", encoding="utf-8")
