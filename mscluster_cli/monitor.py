"""The monitoring subcommands: ``status``, ``jobs``, ``logs``, ``tensorboard``. Parsing and printing only.

None of them imports MindSpore: they answer in a fraction of a second on a login node. The launcher's
modules are imported by the command that uses them, for the same reason.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys

from launcher.errors import JobDirError

DEFAULT_WORKDIR = "runs"  # the cluster file's workdir: when it names none (launcher.config)
DEFAULT_TB_HOST = "127.0.0.1"
DEFAULT_TB_PORT = 6006


def cmd_status(args: argparse.Namespace) -> int:
    from launcher.status import format_status, read_status
    from launcher.submit import slurm_lines

    slurm = slurm_lines(args.job_dir) if os.path.isdir(args.job_dir) else None
    try:
        status = read_status(args.job_dir)
    except JobDirError:
        if slurm is None:
            raise
        status = None  # submitted, not started yet: Slurm's word is all there is
    if args.json:
        data = status.to_dict() if status is not None else {"job_dir": args.job_dir, "state": "submitted"}
        if slurm is not None:
            data["slurm"] = slurm
        print(json.dumps(data, indent=1))
        return 0
    lines = format_status(status).splitlines() if status is not None else [f"job {args.job_dir}",
                                                                            "  state:     submitted, not started"]
    if slurm is not None:
        lines.insert(2, f"  slurm:     job {slurm['job_id']} {slurm['state']}"
                        + (f" ({slurm['reason']})" if slurm["reason"] else ""))
    print("\n".join(lines))
    return 0


def cmd_jobs(args: argparse.Namespace) -> int:
    from launcher.jobcontrol import format_jobs, list_jobs

    print(format_jobs(list_jobs(args.workdir)))
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    from launcher.joblogs import follow, log_path, missing_log_message, read_lines

    path = log_path(args.job_dir, args.rank)
    try:
        if args.follow:
            from launcher.status import read_status

            lines = follow(path, done=lambda: read_status(args.job_dir).state != "running")
        else:
            if not os.path.isfile(path):
                raise JobDirError(missing_log_message(args.job_dir, path))
            lines = read_lines(path)
        for line in lines:
            sys.stdout.write(line + "\n")
            if args.follow:
                sys.stdout.flush()
    except BrokenPipeError:  # `mscluster logs JOB | head`: the reader left; so do we, quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    return 0


def tensorboard_argv(python: str, logdir: str, host: str, port: int) -> list[str]:
    return [python, "-m", "tensorboard.main", "--logdir", logdir, "--host", host, "--port", str(port)]


def _tensorboard_installed() -> bool:
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        return False
    return True


def cmd_tensorboard(args: argparse.Namespace) -> int:
    logdir = os.path.join(os.path.abspath(args.job_dir), "tensorboard")
    if not os.path.isdir(args.job_dir):
        raise JobDirError(f"{args.job_dir}: no such job folder")
    if not os.path.isdir(logdir):
        raise JobDirError(f"{logdir}: no such folder (the job ran with train.tensorboard=false, or has not started)")
    if not _tensorboard_installed():
        command = ["tensorboard", "--logdir", logdir, "--host", args.host, "--port", str(args.port)]
        print("TensorBoard is not installed here (pip install 'mscluster[tensorboard]' or pip install tensorboard); "
              "then run:")
        print("  " + " ".join(shlex.quote(a) for a in command))
        return 0
    print(f"TensorBoard for {logdir} on http://{args.host}:{args.port}/ (Ctrl-C stops it)", flush=True)
    return subprocess.run(tensorboard_argv(sys.executable, logdir, args.host, args.port)).returncode


def add_commands(sub) -> None:
    p = sub.add_parser("status", help="where a job stands: state, attempt, progress, last eval, each rank")
    p.add_argument("job_dir", metavar="JOB_DIR")
    p.add_argument("--json", action="store_true", help="print the status as JSON")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("jobs", help="the jobs under a workdir: state, ranks, step, started, their launcher")
    p.add_argument("workdir", metavar="WORKDIR", nargs="?", default=DEFAULT_WORKDIR,
                   help=f"the cluster file's workdir: (default {DEFAULT_WORKDIR})")
    p.set_defaults(func=cmd_jobs)

    p = sub.add_parser("logs", help="a job's log: every process merged by time, or one rank's")
    p.add_argument("job_dir", metavar="JOB_DIR")
    p.add_argument("--rank", type=int, help="only this rank's lines")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing new lines until the job ends")
    p.set_defaults(func=cmd_logs)

    p = sub.add_parser("tensorboard", help="start TensorBoard on a job's tensorboard/ folder")
    p.add_argument("job_dir", metavar="JOB_DIR")
    p.add_argument("--host", default=DEFAULT_TB_HOST, help=f"address to bind (default {DEFAULT_TB_HOST})")
    p.add_argument("--port", type=int, default=DEFAULT_TB_PORT, help=f"port (default {DEFAULT_TB_PORT})")
    p.set_defaults(func=cmd_tensorboard)
