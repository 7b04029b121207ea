"""torchelastic-style error file: a rank that dies of an exception leaves its traceback for the launcher.

The agent gives each rank ``MSCLUSTER_ERROR_FILE``; the launcher's failure table shows the tail.
"""
from __future__ import annotations

import json
import os
import time
import traceback
from typing import Mapping, Optional

ERROR_FILE_ENV = "MSCLUSTER_ERROR_FILE"


def write_error_file(exc: BaseException, environ: Mapping[str, str], exit_code: int) -> Optional[str]:
    """Write ``exc`` and its traceback as JSON to the file named by the environment, if any."""
    path = environ.get(ERROR_FILE_ENV)
    if not path:
        return None
    record = {
        "message": f"{type(exc).__name__}: {exc}",
        "traceback": "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)),
        "timestamp": time.time(),
        "pid": os.getpid(),
        "exit_code": exit_code,
    }
    tmp = f"{path}.tmp"
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(tmp, "w", encoding="utf-8") as handle:
            json.dump(record, handle)
        os.replace(tmp, path)
    except OSError:
        return None
    return path
