"""The launcher's subcommands: ``plan``, ``ranktable``, ``launch``, ``submit``, ``cancel``, ``schema``. Parsing and
printing only.

Each command imports the launcher's modules it uses when it runs, not here: ``mscluster train`` (every
rank) and ``mscluster status`` build this parser too, and would pay a second of imports for nothing.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import threading

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
    from launcher.jobplan import build_job_plan, format_job_plan

    cluster, note = preview_hosts(_load(args), os.environ)
    if note:
        print(note)
    print(format_job_plan(build_job_plan(cluster, grace_period=5.0)))
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


def cmd_launch(args: argparse.Namespace) -> int:
    from launcher.launch import LaunchRequest, launch
    from launcher.lifecycle import Interrupted
    from launcher.report import format_failures

    def on_term(signum, frame):  # TERM, or HUP (its terminal closed), stops the job like Ctrl-C does
        raise Interrupted(signum)  # a KeyboardInterrupt that names its signal

    preempt = threading.Event()
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGHUP, on_term)
    # Slurm's warning before the time limit (sbatch --signal=B:USR1@s, or scancel --signal=USR1 --batch)
    signal.signal(signal.SIGUSR1, lambda signum, frame: preempt.set())
    request = LaunchRequest(args.cluster, tuple(flatten(args.set)), args.job_dir, args.grace_period,
                            command=args.program, console=args.console, preempt=preempt,
                            from_sbatch=args.from_sbatch, skip_preflight=args.skip_preflight)
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
                                    "starts nothing", usage="mscluster plan CLUSTER.yaml [--set ...] [-- PROGRAM ARGS...]")
    p.add_argument("cluster", metavar="CLUSTER.yaml")
    p.add_argument("--console", help=CONSOLE_HELP)
    add_set(p, "cluster-file fields with dotted keys, e.g. --set train.epochs=3 restarts=1")
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
    add_set(p, "cluster-file fields with dotted keys, e.g. --set train.epochs=3 restarts=1")
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
    p.set_defaults(func=cmd_launch, program=None)

    p = sub.add_parser("submit", help="hand the job to Slurm: write <job>/sbatch.sh and sbatch it (scheduler: slurm)",
                       usage="mscluster submit CLUSTER.yaml [--set ...] [--job-dir DIR] [-- SBATCH_OPTIONS...]")
    p.add_argument("cluster", metavar="CLUSTER.yaml")
    add_set(p, "cluster-file fields with dotted keys, e.g. --set slurm.nodes=4 train.epochs=3")
    p.add_argument("--job-dir", help="job folder (default: <workdir>/<name>-<time>); must not exist")
    p.set_defaults(func=cmd_submit, program=None)

    p = sub.add_parser("cancel", help="cancel the Slurm job of a submitted job folder (scancel)")
    p.add_argument("job_dir", metavar="JOB_DIR")
    p.set_defaults(func=cmd_cancel)

    p = sub.add_parser("schema", help="print the cluster file's JSON Schema (draft 2020-12), for editors",
                       description="Print the cluster file's JSON Schema (draft 2020-12): every key, its type, "
                                   "bounds and choices, unknown keys refused. Save it and put "
                                   "'# yaml-language-server: $schema=<file>' on a cluster file's first line.")
    p.set_defaults(func=cmd_schema)
