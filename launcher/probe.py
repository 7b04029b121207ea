"""What the launcher asks of a host before a job: ``python -m launcher.probe`` with a JSON request on stdin.

Runs on every host in the pre-flight (and on the first host for a free port). The request travels
on stdin, never on the command line, so the remote shell sees only ``exec <python> -m
launcher.probe``. Requests:

    {"check": {"mindspore": bool, "builtin": bool, "program": null | {"folder", "argv", "python_first"}}}
        exit 0, or exit 3 with one line ``MSCLUSTER-MISSING <what>`` on stderr, or exit 1 with the
        reason (mindspore missing, an import error)
    {"free_port": true}   prints a TCP port free on this host right now

Imports no MindSpore (it is found, not imported: a second saved per host).
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import socket
import sys
from typing import Any, Mapping

MISSING = "MSCLUSTER-MISSING"
MISSING_EXIT = 3


def _missing(what: str) -> int:
    sys.stderr.write(f"{MISSING} {what}\n")
    return MISSING_EXIT


def check(spec: Mapping[str, Any]) -> int:
    import launcher.agent  # noqa: F401  (the agent must import here)
    import mscluster.rank  # noqa: F401

    if spec.get("mindspore") and not importlib.util.find_spec("mindspore"):
        sys.stderr.write("mindspore is not installed for this interpreter\n")
        return 1
    if spec.get("builtin"):
        import mscluster.cli  # noqa: F401
        import trainer.config  # noqa: F401
    prog = spec.get("program")
    if not prog:
        return 0
    folder = prog["folder"] or os.path.expanduser("~")
    if not os.path.isdir(folder):
        return _missing(f"folder {folder} (cwd)")
    argv = prog["argv"]
    if prog["python_first"]:
        if len(argv) > 2 and argv[1] == "-m":
            sys.path.insert(0, folder)
            if importlib.util.find_spec(argv[2]) is None:
                return _missing(f"module {argv[2]} (python -m, from {folder})")
        elif len(argv) > 1 and not argv[1].startswith("-") and not os.path.isfile(os.path.join(folder, argv[1])):
            return _missing(f"script {os.path.join(folder, argv[1])}")
        return 0
    first = argv[0]
    if "/" in first:
        path = os.path.join(folder, first)
        if not (os.path.isfile(path) and os.access(path, os.X_OK)):
            return _missing(f"program {path} (not an executable file)")
    elif shutil.which(first) is None:
        return _missing(f"program {first} (not on PATH)")
    return 0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("", 0))
        print(sock.getsockname()[1])
    return 0


def main() -> int:
    try:
        request = json.loads(sys.stdin.read(1 << 20) or "{}")
    except ValueError:
        sys.stderr.write("launcher.probe: the request on stdin is not JSON\n")
        return 2
    if "check" in request:
        return check(request["check"])
    if request.get("free_port"):
        return free_port()
    sys.stderr.write("launcher.probe: unknown request\n")
    return 2


if __name__ == "__main__":
    sys.exit(main())
