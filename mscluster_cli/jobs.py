"""The launcher's subcommands: ``plan``, ``ranktable``, ``launch``, ``submit``, ``cancel``, ``stop``, ``schema``.
Parsing and printing only.

Each command imports the launcher's modules it uses when it runs, not here: ``mscluster train`` (every
rank) and ``mscluster status`` build this parser too, and would pay a second of imports for nothing.
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

from launcher.errors import ConfigError
from launcher.spec import Backend
from mscluster_cli.args import add_set, seconds
from trainer.overrides import flatten


def _load(args: argparse.Namespace):
    from launcher.config import load_cluster
    from launcher.launch import console_pairs

    pairs = tuple(flatten(args.set)) + console_pairs(getattr(args, "console", None))
    return load_cluster(args.cluster, pairs, args.program)


def cmd_plan(args: argparse.Namespace) -> int:
    from launcher.hosts import preview_hosts
    from launcher.jobplan import PLAN_WIDTH, build_job_plan, format_job_plan
    from launcher.spec import AtLaunch

    cluster, note = preview_hosts(_load(args), os.environ)
    if note:
        print(textwrap.fill(note, PLAN_WIDTH, break_long_words=False, break_on_hyphens=False))
    print(format_job_plan(build_job_plan(cluster, grace_period=5.0, job_dir=args.job_dir or AtLaunch.JOB_DIR)))
    return 0


def cmd_ranktable(args: argparse.Namespace) -> int:
    from launcher.hosts import open_hosts
    from launcher.launch import make_rank_table
    from launcher.plan import plan_ranks
    from mscluster.fsutil import write_atomic

    cluster = _load(args)
    if cluster.backend is not Backend.ASCEND:
        raise ConfigError(f"{args.cluster}: backend: the rank table is for backend ascend (this file says {cluster.backend})")
    hosts = open_hosts(cluster, os.environ)  # under Slurm the allocation's nodes, asked through srun
    try:
        text = make_rank_table(plan_ranks(hosts.cluster), hosts.executors)
    finally:
        hosts.close()
    text = text if text.endswith("\n") else text + "\n"
    if args.output:
        try:
            write_atomic(args.output, text)
        except OSError as exc:
            raise ConfigError(f"{args.output}: cannot write the rank table ({exc.strerror})") from None
        print(f"wrote {args.output}")
    else:
        sys.stdout.write(text)
    return 0


def _launch_detached(args: argparse.Namespace) -> int:
    """``launch --detach``: the launcher in its own session; back once every rank started (or it ended)."""
    from launcher.jobcontrol import LAUNCHER_LOG, wait_started
    from launcher.jobplan import CLI_MODULE, own_argv
    from launcher.launch import default_job_dir

    job_dir = args.job_dir
    if job_dir is None:  # chosen here, so this terminal knows where to look; the launcher checks it as always
        job_dir = default_job_dir(_load(args), time.time())
        job_dir = f"{job_dir}-{os.getpid()}" if os.path.exists(job_dir) else job_dir
    argv = [*own_argv(sys.executable, CLI_MODULE, "launch", args.cluster),
            *(word for pair in flatten(args.set) for word in ("--set", pair)),
            "--job-dir", job_dir, "--grace-period", str(args.grace_period), "--detached-launcher",
            *(["--console", args.console] if args.console else []), *(["-q"] if args.quiet else []),
            *(["--skip-preflight"] if args.skip_preflight else []),
            *(["--", *args.program] if args.program is not None else [])]
    # its own session: the terminal's SIGHUP and Ctrl-C never reach it; its errors before the job folder
    # exists (the pre-flight's) still come to this terminal, the rest goes to <job>/launcher.log
    child = subprocess.Popen(argv, stdin=subprocess.DEVNULL, start_new_session=True, close_fds=True)
    try:
        outcome = wait_started(job_dir, child.pid, child.poll)
    except KeyboardInterrupt:  # Ctrl-C reaches this terminal's command only: the launcher goes on
        print(f"mscluster launch: interrupted while waiting; the launcher (pid {child.pid}) goes on: "
              f"mscluster stop {job_dir} stops it", file=sys.stderr)
        return 130
    log = os.path.join(job_dir, LAUNCHER_LOG)
    if not outcome.started:
        if os.path.isfile(log):
            with open(log, encoding="utf-8", errors="replace") as handle:
                tail = handle.read().splitlines()[-20:]
            print("\n".join(tail), file=sys.stderr)
            print(f"mscluster: the launcher ended before every rank started (exit {outcome.exit_code}); "
                  f"its output: {log}", file=sys.stderr)
        return outcome.exit_code if outcome.exit_code is not None else 1
    where = os.path.abspath(job_dir)
    print(f"mscluster: job {where}: every rank started; the launcher (pid {child.pid}) runs detached"
          + (f" (it already ended, exit {outcome.exit_code})" if outcome.exit_code is not None else "") + "\n"
          f"  follow it:  mscluster status {where}   |   mscluster logs -f {where}\n"
          f"  picture:    {os.path.join(where, 'status.html')}\n"
          f"  launcher:   {os.path.abspath(log)}\n"
          f"  stop it:    mscluster stop {where}")
    return outcome.exit_code or 0


def _output_to_job_dir(job_dir: str) -> None:
    """A detached launcher's stdout and stderr from now on: ``<job>/launcher.log`` (no terminal to write to)."""
    from launcher.jobcontrol import LAUNCHER_LOG

    sys.stdout.flush()
    sys.stderr.flush()
    fd = os.open(os.path.join(job_dir, LAUNCHER_LOG), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(fd, sys.stdout.fileno())
    os.dup2(fd, sys.stderr.fileno())
    os.close(fd)


def cmd_launch(args: argparse.Namespace) -> int:
    from launcher.launch import LaunchRequest, launch, recovery_lines
    from launcher.lifecycle import Interrupted
    from launcher.report import format_failures

    if args.detach:
        return _launch_detached(args)

    def on_term(signum, frame):  # TERM, or HUP (its terminal closed), stops the job like Ctrl-C does
        raise Interrupted(signum)  # a KeyboardInterrupt that names its signal

    preempt = threading.Event()
    signal.signal(signal.SIGTERM, on_term)
    # a detached launcher has no terminal: a stray HUP (its starter's session ending) is not a stop
    signal.signal(signal.SIGHUP, signal.SIG_IGN if args.detached_launcher else on_term)
    # Slurm's warning before the time limit (sbatch --signal=B:USR1@s, or scancel --signal=USR1 --batch)
    signal.signal(signal.SIGUSR1, lambda signum, frame: preempt.set())
    request = LaunchRequest(args.cluster, tuple(flatten(args.set)), args.job_dir, args.grace_period,
                            command=args.program, console=args.console, preempt=preempt,
                            from_sbatch=args.from_sbatch, skip_preflight=args.skip_preflight,
                            on_job_dir=_output_to_job_dir if args.detached_launcher else None)
    result = launch(request, console=None if args.quiet else sys.stdout)
    where = result.job_dir
    if result.status == "preempted":
        print(f"mscluster: job preempted: rank 0 saved a checkpoint and the job stopped (exit {result.exit_code}); "
              "it continues from there with train.resume=auto")
    elif result.status == "succeeded":
        top1 = result.eval.get("top1")
        print("mscluster: job succeeded" + (f", top1={top1:.4f}" if top1 is not None else "")
              + (f" after {result.restarts} restart(s)" if result.restarts else ""))
    else:
        last = result.attempts[-1].attempt if result.attempts else 0
        failures = [f for f in result.failures if f.attempt == last] or result.failures
        print(format_failures(failures, f"mscluster: job {result.status}"
                              + (f" after {result.restarts} restart(s)" if result.restarts else "")), file=sys.stderr)
    for line in recovery_lines(result.attempts):  # where each failure's time went
        print(line, file=sys.stderr)
    print(f"  checkpoints: {os.path.join(where, 'checkpoints')}\n"
          f"  logs:        {os.path.join(where, 'logs')}\n"
          f"  tensorboard: {os.path.join(where, 'tensorboard')}\n"
          f"  result:      {os.path.join(where, 'result.json')}")
    if result.status == "preempted" and args.from_sbatch:
        _requeue_if_asked(where)
    return result.exit_code


def _requeue_if_asked(job_dir: str) -> None:
    """slurm.requeue: put this batch job back in the queue (last thing: Slurm then ends this run)."""
    from launcher.config import load_cluster
    from launcher.slurm.batch import SBATCH_SCRIPT
    from launcher.submit import requeue
    from mscluster.jobfiles import CLUSTER_FILE

    cluster = load_cluster(os.path.join(job_dir, CLUSTER_FILE))
    job_id = os.environ.get("SLURM_JOB_ID")
    if not cluster.slurm.requeue or not job_id:
        print("mscluster: not requeued (slurm.requeue is false): submit it again, or run sbatch "
              f"{os.path.join(job_dir, SBATCH_SCRIPT)}")
        return
    print(f"mscluster: requeueing Slurm job {job_id} (slurm.requeue): the next run resumes", flush=True)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # Slurm ends this run of the script now
    failed = requeue(job_id)
    if failed:
        print(f"mscluster: could not requeue Slurm job {job_id}: {failed}", file=sys.stderr)


def cmd_submit(args: argparse.Namespace) -> int:
    from launcher.submit import SubmitRequest, submit

    done = submit(SubmitRequest(args.cluster, tuple(flatten(args.set)), args.job_dir, tuple(args.program or ())))
    print(f"mscluster: submitted Slurm job {done.job_id}\n"
          f"  job folder: {done.job_dir}\n"
          f"  script:     {done.script}\n"
          f"  follow it:  mscluster status {done.job_dir}   |   mscluster logs -f {done.job_dir}\n"
          f"  stop it:    mscluster cancel {done.job_dir}")
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    from launcher.jobcontrol import stop_job
    from launcher.slurm.batch import SLURM_JOB_FILE
    from launcher.submit import cancel

    if os.path.isfile(os.path.join(args.job_dir, SLURM_JOB_FILE)):  # Slurm runs the launcher: scancel stops it
        job_id = cancel(args.job_dir)
        print(f"mscluster: cancelled Slurm job {job_id} ({args.job_dir})")
        return 0
    how = stop_job(args.job_dir, args.grace_period, say=lambda line: print(line, flush=True))
    print(f"mscluster: job {args.job_dir} {how}; mscluster status {args.job_dir} shows its end")
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    from launcher.submit import cancel

    job_id = cancel(args.job_dir)
    print(f"mscluster: cancelled Slurm job {job_id} ({args.job_dir})")
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    import json

    from launcher.schema import cluster_schema

    print(json.dumps(cluster_schema(), indent=2))
    return 0


CONSOLE_HELP = ("whose lines the terminal shows: all, or ranks such as 0,3 (default: the file's console:, "
                "else rank 0); warnings and errors of every rank always show")


def add_commands(sub) -> None:
    p = sub.add_parser("plan", help="print every process a launch would start (argv, folder, environment); "
                                    "starts nothing", usage="mscluster plan CLUSTER.yaml [--set KEY=VALUE ...] [--job-dir DIR] [-- PROGRAM ARGS...]")
    p.add_argument("cluster", metavar="CLUSTER.yaml")
    p.add_argument("--console", help=CONSOLE_HELP)
    add_set(p, "cluster-file fields with dotted keys, e.g. --set train.epochs=3 --set restarts=1")
    p.add_argument("--job-dir", help="the job folder launch --job-dir would get (default: <workdir>/<name>-<time>)")
    p.set_defaults(func=cmd_plan, program=None)

    p = sub.add_parser("ranktable", help="write the Ascend HCCL rank table (v1.0 JSON)")
    p.add_argument("cluster", metavar="CLUSTER.yaml")
    p.add_argument("-o", "--output", help="file to write (default: print)")
    add_set(p, "cluster-file fields")
    p.set_defaults(func=cmd_ranktable, program=None)

    p = sub.add_parser("launch", help="run the job on every host and supervise it",
                       usage="mscluster launch CLUSTER.yaml [options] [-- PROGRAM ARGS...]",
                       description="Run the cluster file's job: the built-in trainer (train:), the file's "
                                   "command:, or the PROGRAM given after --, on every rank.")
    p.add_argument("cluster", metavar="CLUSTER.yaml")
    p.add_argument("--console", help=CONSOLE_HELP)
    add_set(p, "cluster-file fields with dotted keys, e.g. --set train.epochs=3 --set restarts=1")
    p.add_argument("--job-dir", help="job folder (default: <workdir>/<name>-<time>); an existing one is "
                                      "refused unless train.resume is set")
    p.add_argument("--grace-period", type=seconds, default=5.0, help="seconds between TERM and KILL (default 5)")
    p.add_argument("-q", "--quiet", action="store_true", help="do not stream the ranks' output")
    p.add_argument("--skip-preflight", action="store_true",
                   help="ascend: start without the NPU pre-flight (npu-smi health and processes, hccn_tool link, "
                        "network health, IPs and pings, CANN/MindSpore versions, data_dir, free disk)")
    p.add_argument("--from-sbatch", action="store_true",
                   help="what the sbatch.sh of mscluster submit passes: the job folder is the one submit made, and "
                        "a requeued run resumes from its newest checkpoint")
    p.add_argument("--detach", action="store_true",
                   help="return once every rank started; the launcher goes on in the background (its output in "
                        "<job>/launcher.log); stop it with mscluster stop JOB_DIR")
    p.add_argument("--detached-launcher", action="store_true", help=argparse.SUPPRESS)  # what --detach starts
    p.set_defaults(func=cmd_launch, program=None)

    p = sub.add_parser("submit", help="hand the job to Slurm: write <job>/sbatch.sh and sbatch it (scheduler: slurm)",
                       usage="mscluster submit CLUSTER.yaml [--set ...] [--job-dir DIR] [-- SBATCH_OPTIONS...]")
    p.add_argument("cluster", metavar="CLUSTER.yaml")
    add_set(p, "cluster-file fields with dotted keys, e.g. --set slurm.nodes=4 --set train.epochs=3")
    p.add_argument("--job-dir", help="job folder (default: <workdir>/<name>-<time>); must not exist")
    p.set_defaults(func=cmd_submit, program=None)

    p = sub.add_parser("stop", help="stop a running job: TERM to its launcher, KILL after the grace period "
                                    "(a Slurm job: scancel)")
    p.add_argument("job_dir", metavar="JOB_DIR")
    p.add_argument("--grace-period", type=seconds, default=5.0,
                   help="the launch's grace period (default 5): the launcher is KILLed if it is still there 10 s after it")
    p.set_defaults(func=cmd_stop)

    p = sub.add_parser("cancel", help="cancel the Slurm job of a submitted job folder (scancel)")
    p.add_argument("job_dir", metavar="JOB_DIR")
    p.set_defaults(func=cmd_cancel)

    p = sub.add_parser("schema", help="print the cluster file's JSON Schema (draft 2020-12), for editors",
                       description="Print the cluster file's JSON Schema (draft 2020-12): every key, its type, "
                                   "bounds and choices, unknown keys refused. Save it and put "
                                   "'# yaml-language-server: $schema=<file>' on a cluster file's first line.")
    p.set_defaults(func=cmd_schema)
