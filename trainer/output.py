"""The trainer's machine-readable lines (eval, checkpoint, resume, final digest) on stdout.

One ``write`` per line under a lock: ``print`` writes the text and the newline separately, so a
checkpoint thread or MindSpore's own log threads could land between them and break a line the
launcher and its users parse.
"""
from __future__ import annotations

import sys
import threading

_lock = threading.Lock()


def emit(line: str) -> None:
    """Write ``line`` and its newline to stdout in one call, and flush."""
    with _lock:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()
