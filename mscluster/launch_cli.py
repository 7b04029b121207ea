"""The launcher's subcommands: ``plan``, ``ranktable``, ``launch``. Parsing and printing only."""
from __future__ import annotations

import argparse
import os
import signal
import sys
from typing import Callable

from launcher.errors import ConfigError
from trainer.overrides import flatten


def _load(args: argparse.Namespace):
    from launcher.config import load_cluster
    from launcher.launch import console_pairs

    pairs = tuple(flatten(args.set)) + console_pairs(getattr(args, "console", None))
    return load_cluster(args.cluster, pairs, args.program)


def cmd_plan(args: argparse.Namespace) -> int:
    from launcher.jobplan import build_job_plan, format_job_plan

    print(format_job_plan(build_job_plan(_load(args), grace_period=5.0)))
    return 0


def cmd_ranktable(args: argparse.Namespace) -> int:
    from launcher.executor import check_ssh_files, executor_for
    from launcher.launch import make_rank_table
    from launcher.plan import plan_ranks

    cluster = _load(args)
    if cluster.backend != "ascend":
        raise ConfigError(f"{args.cluster}: backend: the rank table is for backend ascend (this file says {cluster.backend})")
    if not all(h.is_local for h in cluster.hosts):
        check_ssh_files(cluster.ssh, cluster.source)
    executors = {h.address: executor_for(h, cluster.ssh) for h in cluster.hosts}
    try:
        text = make_rank_table(plan_ranks(cluster), executors)
    finally:
        for ex in executors.values():
            ex.close()
    text = text if text.endswith("\n") else text + "\n"
    if args.output:
        from mscluster.fsutil import write_atomic

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
    from launcher.report import format_failures

    def on_term(signum, frame):  # TERM, or HUP (its terminal closed), stops the job like Ctrl-C does
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGHUP, on_term)
    request = LaunchRequest(args.cluster, tuple(flatten(args.set)), args.job_dir, args.grace_period,
                            command=args.program, console=args.console)
    result = launch(request, console=None if args.quiet else sys.stdout)
    where = result.job_dir
    if result.status == "succeeded":
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
    return result.exit_code



CONSOLE_HELP = ("whose lines the terminal shows: all, or ranks such as 0,3 (default: the file's console:, "
                "else rank 0); warnings and errors of every rank always show")


def add_commands(sub, add_set: Callable[[argparse.ArgumentParser, str], None]) -> None:
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
    from mscluster.cli import seconds

    p.add_argument("--grace-period", type=seconds, default=5.0, help="seconds between TERM and KILL (default 5)")
    p.add_argument("-q", "--quiet", action="store_true", help="do not stream the ranks' output")
    p.set_defaults(func=cmd_launch, program=None)

    from mscluster import monitor_cli  # status, logs, tensorboard
    monitor_cli.add_commands(sub, add_set)
