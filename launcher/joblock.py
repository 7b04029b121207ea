"""One launcher per job folder: an exclusive lock held for the launcher's whole life.

``<job>/launcher.lock`` is locked with ``flock`` (released by the kernel when the launcher exits,
however it exits, so a stale file never blocks anyone) and names the holder's host and pid, so a
second launcher on the same folder is refused with one line saying who runs it.
"""
from __future__ import annotations

import fcntl
import json
import os
import socket
import time

from launcher.errors import JobDirError

LOCK_FILE = "launcher.lock"


class JobLock:
    """Held from ``acquire`` until ``release`` (or the process's end)."""

    def __init__(self, job_dir: str):
        self.path = os.path.join(job_dir, LOCK_FILE)
        self.fd: int = -1

    def acquire(self) -> "JobLock":
        """Raises: JobDirError naming the running launcher's host and pid."""
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise JobDirError(f"{self.path}: cannot open the job's lock file ({exc.strerror})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = _read_holder(fd)
            os.close(fd)
            raise JobDirError(f"{os.path.dirname(self.path)}: another launcher runs this job ({holder}); "
                              "stop it first, or choose another --job-dir") from None
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "since": time.time()}).encode())
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # the kernel drops the lock with the last descriptor
            self.fd = -1


def _read_holder(fd: int) -> str:
    try:
        data = json.loads(os.pread(fd, 4096, 0) or b"{}")
        return f"pid {int(data['pid'])} on {str(data['host'])[:100]}"
    except (OSError, ValueError, KeyError, TypeError):
        return "its pid is not recorded yet"
