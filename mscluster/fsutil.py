"""Writing files so that a reader sees the old content or the new one, never a torn one.

The one atomic-write helper of the project: a temporary file created exclusively beside the
target (unique name, ``O_EXCL``, so a planted symlink is never followed), written, flushed to
disk, then renamed over the target. Imports nothing of the project.
"""
from __future__ import annotations

import json
import os
import tempfile
from typing import Any, Mapping, Optional, Union


def write_atomic(path: str, content: Union[str, bytes], mode: int = 0o644, fsync: bool = False) -> None:
    """Replace ``path`` with ``content`` in one rename.

    Args:
        mode: the file's permission bits.
        fsync: flush the data to disk before the rename (checkpoint sidecars, results).

    Raises:
        OSError: the folder is missing or not writable; nothing is left behind.
    """
    data = content.encode("utf-8") if isinstance(content, str) else content
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            if fsync:
                os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def write_json_atomic(path: str, payload: Mapping[str, Any], mode: int = 0o644, fsync: bool = False) -> None:
    """``write_atomic`` of ``payload`` as indented JSON with a final newline."""
    write_atomic(path, json.dumps(payload, indent=1) + "\n", mode=mode, fsync=fsync)


def read_json_object(path: str) -> Optional[dict[str, Any]]:
    """The JSON object in ``path``; None when the file is missing, unreadable, not JSON or not an object
    (a job folder's files are read while the launcher may be rewriting them, or after it died)."""
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
