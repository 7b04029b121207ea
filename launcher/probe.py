"""What the launcher asks of a host before a job: mscluster's ``launcher.probe`` with a JSON request on stdin.

Runs on every host in the pre-flight (and on the first host for a free port), started as one of
mscluster's own modules (``launcher.jobplan.own_argv``: never a same-named file of the folder it
runs in). The request travels on stdin, never on the command line, so the remote shell sees only
``exec <python> -c '<boot>' launcher.probe``. Requests:

    {"check": {"mindspore": bool, "builtin": bool, "program": null | {"folder", "argv", "python_first"}}}
        exit 0 printing ``{"mindspore": version | null}`` (the version when asked to check it), or
        exit 3 with one line ``MSCLUSTER-MISSING <what>`` on stderr, or exit 1 with the reason
        (mindspore missing, an import error)
    {"free_port": true}   prints a TCP port free on this host right now
    {"npu": {"devices": [ids], "ping": {id: ip}, "data_dir": path | null, "space_dir": path}}
        prints one JSON object: the outputs of npu-smi and hccn_tool for those devices (run in
        parallel here), CANN's and MindSpore's versions, data_dir's .bin files and sizes, the free
        bytes under space_dir, the CPUs this process may use (launcher.npu checks it all)

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


# the names MindSpore's wheels have been published under (Huawei's Ascend builds included)
MINDSPORE_DISTRIBUTIONS = ("mindspore", "mindspore-ascend", "mindspore-gpu", "mindspore-cpu")


def mindspore_version() -> str | None:
    """The installed MindSpore's version, found without importing it (None: not installed)."""
    import importlib.metadata

    for name in MINDSPORE_DISTRIBUTIONS:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    if importlib.util.find_spec("mindspore") is None:
        return None
    return "unknown"  # importable, but installed without package metadata (a copied tree)


def check(spec: Mapping[str, Any]) -> int:
    import launcher.agent  # noqa: F401  (the agent must import here)
    import mscluster.rank  # noqa: F401

    version = None
    if spec.get("mindspore"):
        version = mindspore_version()
        if version is None:
            sys.stderr.write("mindspore is not installed for this interpreter\n")
            return 1
    if spec.get("builtin"):
        importlib.import_module("mscluster_cli.main")  # what the ranks run, by name: the launcher never imports the CLI
        import trainer.config  # noqa: F401
    code = _find_program(spec.get("program"))
    if code == 0:
        print(json.dumps({"mindspore": version}))
    return code


def _find_program(prog: Mapping[str, Any] | None) -> int:
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


def _command(argv: list[str], timeout: float = 30.0) -> tuple[int, str]:
    import subprocess

    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        return 127, f"{argv[0]}: command not found"
    except subprocess.TimeoutExpired:
        return 124, f"{' '.join(argv)}: no answer in {timeout:g} s"
    except OSError as exc:
        return 126, f"{argv[0]}: {exc.strerror}"
    return done.returncode, done.stdout + done.stderr


def npu_report(spec: Mapping[str, Any]) -> int:
    import platform
    from concurrent.futures import ThreadPoolExecutor

    from launcher.npu import TOOLKIT_HOME, TOOLKIT_INFO, parse_toolkit_version

    devices = [int(d) for d in spec.get("devices", [])]
    commands: dict[str, list[str]] = {} if spec.get("ping_only") else {"npu-smi info": ["npu-smi", "info"]}
    if spec.get("topo"):
        commands["topo"] = ["npu-smi", "info", "-t", "topo"]
    for d in devices:
        commands[f"link {d}"] = ["hccn_tool", "-i", str(d), "-link", "-g"]
        commands[f"health {d}"] = ["hccn_tool", "-i", str(d), "-net_health", "-g"]
        commands[f"ip {d}"] = ["hccn_tool", "-i", str(d), "-ip", "-g"]
    for d, address in (spec.get("ping") or {}).items():
        commands[f"ping {d}"] = ["hccn_tool", "-i", str(d), "-ping", "-g", "address", str(address)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        outputs = dict(zip(commands, pool.map(_command, commands.values())))
    if spec.get("ping_only"):
        print(json.dumps({"outputs": outputs}))
        return 0
    toolkit = None
    try:
        home = os.environ.get("ASCEND_TOOLKIT_HOME") or TOOLKIT_HOME
        with open(TOOLKIT_INFO.format(home=home, machine=platform.machine()), encoding="utf-8",
                  errors="replace") as handle:
            toolkit = parse_toolkit_version(handle.read(1 << 16))
    except OSError:
        pass
    mindspore = mindspore_version()
    data_files = None
    data_dir = spec.get("data_dir")
    if data_dir and os.path.isdir(data_dir):
        data_files = {name: os.path.getsize(os.path.join(data_dir, name)) for name in sorted(os.listdir(data_dir))
                      if name.endswith(".bin") and os.path.isfile(os.path.join(data_dir, name))}
    free = None
    space = os.path.abspath(spec.get("space_dir") or ".")  # the job folder's disk: its nearest existing folder
    while not os.path.isdir(space):
        space = os.path.dirname(space.rstrip("/")) or "/"
    try:
        free = shutil.disk_usage(space).free
    except OSError:
        pass
    print(json.dumps({"outputs": outputs, "toolkit": toolkit, "mindspore": mindspore, "data_files": data_files,
                      "free_bytes": free, "allowed_cpus": sorted(os.sched_getaffinity(0))}))
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
    if "npu" in request:
        return npu_report(request["npu"])
    sys.stderr.write("launcher.probe: unknown request\n")
    return 2


if __name__ == "__main__":
    sys.exit(main())
