"""The launcher's subcommands: ``plan``, ``ranktable``, ``launch``. Parsing and printing only."""
from __future__ import annotations

import argparse
import os
import signal
import sys
from typing import Callable

from launcher.errors import ConfigError
from trainer.overrides import flatten


def cmd_plan(args: argparse.Namespace) -> int:
    from launcher.config import load_cluster
    from launcher.plan import format_plan, plan_ranks, rank_env, scheduler_env

    cluster = load_cluster(args.cluster, flatten(args.set))
    plan = plan_ranks(cluster)
    job_dir = "<job dir>"
    table = "<job dir>/rank_table.json" if cluster.backend == "ascend" else None
    envs = {r.rank: rank_env(plan, r, job_dir=job_dir, rank_table_path=table, preview=True) for r in plan.ranks}
    sched = scheduler_env(plan, job_dir=job_dir, preview=True) if plan.scheduler is not None else None
    print(format_plan(plan, envs, sched))
    return 0


def cmd_ranktable(args: argparse.Namespace) -> int:
    from launcher.config import load_cluster
    from launcher.executor import executor_for
    from launcher.launch import make_rank_table
    from launcher.plan import plan_ranks

    cluster = load_cluster(args.cluster, flatten(args.set))
    if cluster.backend != "ascend":
        raise ConfigError(f"{args.cluster}: backend: the rank table is for backend ascend (this file says {cluster.backend})")
    executors = {h.address: executor_for(h, cluster.ssh) for h in cluster.hosts}
    try:
        text = make_rank_table(plan_ranks(cluster), executors)
    finally:
        for ex in executors.values():
            ex.close()
    text = text if text.endswith("\n") else text + "\n"
    if args.output:
        tmp = args.output + ".tmp"
        try:
            with open(tmp, "w", encoding="utf-8") as handle:
                handle.write(text)
            os.replace(tmp, args.output)
        except OSError as exc:
            if os.path.exists(tmp):
                os.remove(tmp)
            raise ConfigError(f"{args.output}: cannot write the rank table ({exc.strerror})") from None
        print(f"wrote {args.output}")
    else:
        sys.stdout.write(text)
    return 0


def cmd_launch(args: argparse.Namespace) -> int:
    from launcher.launch import LaunchRequest, launch
    from launcher.report import format_failures

    def on_term(signum, frame):  # a TERM to the launcher stops the job like Ctrl-C does
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    request = LaunchRequest(args.cluster, tuple(flatten(args.set)), args.job_dir, args.grace_period)
    result = launch(request, console=None if args.quiet else sys.stdout)
    where = result.job_dir
    if result.status == "succeeded":
        top1 = result.eval.get("top1")
        print("mscluster: job succeeded" + (f", top1={top1:.4f}" if top1 is not None else "")
              + (f" after {result.restarts} restart(s)" if result.restarts else ""))
    else:
        last = result.attempts[-1]["attempt"] if result.attempts else 0
        failures = [f for f in result.failures if f.attempt == last] or result.failures
        print(format_failures(failures, f"mscluster: job {result.status}"
                              + (f" after {result.restarts} restart(s)" if result.restarts else "")), file=sys.stderr)
    print(f"  checkpoints: {os.path.join(where, 'checkpoints')}\n"
          f"  logs:        {os.path.join(where, 'logs')}\n"
          f"  tensorboard: {os.path.join(where, 'tensorboard')}\n"
          f"  result:      {os.path.join(where, 'result.json')}")
    return result.exit_code



def add_commands(sub, add_set: Callable[[argparse.ArgumentParser, str], None]) -> None:
    p = sub.add_parser("plan", help="print the rank plan and each process's environment; starts nothing")
    p.add_argument("cluster", metavar="CLUSTER.yaml")
    add_set(p, "cluster-file fields with dotted keys, e.g. --set train.epochs=3 restarts=1")
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("ranktable", help="write the Ascend HCCL rank table (v1.0 JSON)")
    p.add_argument("cluster", metavar="CLUSTER.yaml")
    p.add_argument("-o", "--output", help="file to write (default: print)")
    add_set(p, "cluster-file fields")
    p.set_defaults(func=cmd_ranktable)

    p = sub.add_parser("launch", help="run the job on every host and supervise it")
    p.add_argument("cluster", metavar="CLUSTER.yaml")
    add_set(p, "cluster-file fields with dotted keys, e.g. --set train.epochs=3 restarts=1")
    p.add_argument("--job-dir", help="job folder (default: <workdir>/<name>-<time>); an existing one is "
                                      "refused unless train.resume is set")
    p.add_argument("--grace-period", type=float, default=5.0, help="seconds between TERM and KILL (default 5)")
    p.add_argument("-q", "--quiet", action="store_true", help="do not stream the ranks' output")
    p.set_defaults(func=cmd_launch)

    from mscluster import monitor_cli  # status, logs, tensorboard
    monitor_cli.add_commands(sub, add_set)
