"""The launcher's side of in-memory snapshots: find them, copy the newest to hosts that lost theirs, remove them.

Each host's folder is ``mscluster.jobfiles.snapshot_dir(job folder, host)`` on tmpfs; the ranks
write it (``trainer.snapshotting``). Before a restart the launcher asks every host for its newest
complete snapshot (``launcher.snapshottool`` through the host's executor), picks the newest
(``trainer.snapshot.newest_common``: the same step and digest for every host), and copies it to
the hosts without it, so every rank resumes from the same state read from its own host's memory.
At the job's end, whatever the end, the launcher removes every host's folder; an agent whose
launcher died removes its host's (``launcher.agent``).
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Callable, Mapping, Optional

from launcher.errors import HostUnreachable
from launcher.executor import Executor
from launcher.jobplan import own_argv
from mscluster.jobfiles import snapshot_dir
from trainer.snapshot import Choice, Found, newest_common

logger = logging.getLogger(__name__)

TOOL = "launcher.snapshottool"
TIMEOUT_S = 300.0  # a copy of a few hundred MB through an SSH channel


def enabled(train_config) -> bool:
    """Whether the job keeps snapshots (``snapshot_every_steps`` not 0)."""
    return train_config is not None and train_config.snapshot_every_steps not in (0, None)


def folders(job_dir: str, hosts: list[str]) -> dict[str, str]:
    """Each host's snapshot folder."""
    return {h: snapshot_dir(job_dir, h) for h in hosts}


@dataclass
class HostTool:
    """Runs ``launcher.snapshottool`` on the hosts through their executors."""

    executors: Mapping[str, Executor]
    python: Callable[[str], str]  # host -> its interpreter

    def call(self, host: str, request: dict) -> object:
        res = self.executors[host].run(own_argv(self.python(host), TOOL), input=json.dumps(request),
                                       timeout=TIMEOUT_S)
        if res.exit_code != 0:
            raise RuntimeError((res.stderr.strip().splitlines() or [f"exit {res.exit_code}"])[-1])
        return json.loads(res.stdout)


def survey(tool: HostTool, dirs: Mapping[str, str]) -> dict[str, Optional[Found]]:
    """Every host's newest complete snapshot (None: none, or the host could not say)."""
    held: dict[str, Optional[Found]] = {}
    for host, folder in dirs.items():
        try:
            raw = tool.call(host, {"op": "list", "dir": folder})
        except (HostUnreachable, RuntimeError, ValueError) as exc:
            logger.warning("%s: no snapshot read (%s)", host, exc)
            raw = None
        held[host] = Found(**raw) if isinstance(raw, dict) else None
    return held


def restore(tool: HostTool, dirs: Mapping[str, str]) -> Optional[Choice]:
    """Make every host hold the newest snapshot any host kept; None when none kept one.

    A copy that fails removes every host's snapshot (the ranks must all start at one step: they
    then all resume from the disk checkpoint) and returns None.
    """
    choice = newest_common(survey(tool, dirs))
    if choice is None or not choice.missing:
        return choice
    try:
        data = tool.call(choice.source, {"op": "read", "dir": dirs[choice.source], "name": choice.found.name})
        for host in choice.missing:
            tool.call(host, {"op": "write", "dir": dirs[host], "name": choice.found.name, **data})  # type: ignore[dict-item]
            logger.info("%s: snapshot of step %d copied from %s", host, choice.found.global_step, choice.source)
    except (HostUnreachable, RuntimeError, ValueError) as exc:
        logger.warning("could not copy the snapshot of step %d to every host (%s): every rank resumes from disk",
                       choice.found.global_step, exc)
        remove_all(tool, dirs)
        return None
    return choice


def remove_all(tool: HostTool, dirs: Mapping[str, str]) -> list[str]:
    """Remove every host's snapshot folder; the hosts where that failed."""
    failed = []
    for host, folder in dirs.items():
        try:
            tool.call(host, {"op": "remove", "dir": folder})
        except (HostUnreachable, RuntimeError, ValueError) as exc:
            logger.warning("%s: could not remove %s (%s)", host, folder, exc)
            failed.append(host)
    return failed


@dataclass(frozen=True)
class Restored:
    """Where the next attempt's state comes from: ``memory`` or ``disk`` (or ``none``), and its step."""

    state_from: str
    step: Optional[int]
    host: Optional[str] = None  # memory: the host whose snapshot every host now holds


@dataclass
class Keeper:
    """One job's snapshot folders on its hosts: made whole before a restart, removed at the end."""

    tool: HostTool
    dirs: dict[str, str]
    checkpoints: str  # the disk checkpoints folder as the launcher sees it (the fallback)

    def prepare_restart(self) -> Restored:
        """Copy the newest snapshot to every host; say whether the ranks will resume from it or from disk.

        The rule is the trainer's own (``trainer.snapshot.pick_source``): memory when at least as new
        as the newest good disk checkpoint.
        """
        from trainer.checkpoint import latest_good
        from trainer.snapshot import pick_source

        choice = restore(self.tool, self.dirs)
        _, meta, _ = latest_good(self.checkpoints)
        disk = meta.global_step if meta is not None else None
        memory = choice.found.global_step if choice is not None else None
        source = pick_source(memory, disk)
        if source == "memory":
            return Restored("memory", memory, choice.source if choice else None)
        return Restored(source, disk)

    def remove(self) -> list[str]:
        return remove_all(self.tool, self.dirs)


def keeper_for(train_config, job_dir: str, hosts: list[str], executors: Mapping[str, Executor],
               python: Callable[[str], str], checkpoints: str) -> Optional[Keeper]:
    """The job's Keeper, or None when it keeps no snapshots."""
    if not enabled(train_config):
        return None
    return Keeper(HostTool(executors, python), folders(job_dir, hosts), checkpoints)
