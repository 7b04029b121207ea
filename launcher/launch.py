"""``mscluster launch``: cluster file -> pre-flight -> plan -> rank table -> job folder -> attempts.

Each attempt is one Supervisor run over every host. On a failure, with ``restarts: N`` in the
cluster file, the whole job is started again in the same folder with ``resume: auto`` (the newest
good checkpoint), up to N times, after a short back-off. ``result.json`` records every attempt.
"""
from __future__ import annotations

import json
import logging
import os
import re
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional, Sequence, TextIO

import yaml

from launcher.config import load_cluster, resolved_yaml
from launcher.errors import HostUnreachable, JobDirError
from launcher.executor import Executor, check_host, executor_for
from launcher.plan import plan_ranks, rank_env, scheduler_env, with_scheduler_port
from launcher.protocol import SCHEDULER, AgentSpec, ProcessSpec
from launcher.ranktable import build_rank_table, discover_device_ips, dump_rank_table
from launcher.report import RankFailure, format_failures, order_failures
from launcher.spec import ClusterSpec, HostSpec, Plan
from launcher.status import write_json_atomic
from launcher.supervisor import AttemptResult, LogSink, Supervisor
from trainer.errors import TrainerError

logger = logging.getLogger(__name__)

RESULT_FILE = "result.json"
ATTEMPT_FILE = re.compile(r"^train\.attempt(\d+)\.yaml$")
BACKOFF_S = (2.0, 5.0, 10.0)


@dataclass(frozen=True)
class LaunchRequest:
    """What the user asked for on the command line."""

    cluster_path: str
    set_pairs: tuple[str, ...] = ()
    job_dir: Optional[str] = None
    grace_period: float = 5.0


@dataclass
class JobResult:
    """How the whole job ended (what ``result.json`` holds)."""

    status: str  # succeeded | failed | interrupted
    exit_code: int
    job_dir: str
    restarts: int = 0
    eval: dict[str, float] = field(default_factory=dict)
    failures: list[RankFailure] = field(default_factory=list)
    attempts: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"status": self.status, "exit_code": self.exit_code, "job_dir": self.job_dir,
                "restarts": self.restarts, "eval": self.eval,
                "failures": [f.to_dict() for f in order_failures(self.failures)], "attempts": self.attempts}


# -- pure helpers ----------------------------------------------------------------------------------

def default_job_dir(cluster: ClusterSpec, now: float) -> str:
    return os.path.join(cluster.workdir, f"{cluster.name}-{time.strftime('%Y%m%d-%H%M%S', time.localtime(now))}")


def host_job_dir(host: HostSpec, job_dir: str) -> str:
    """The job folder as seen on ``host``: absolute for local hosts, as given (home-relative) on remote ones."""
    return os.path.abspath(job_dir) if host.is_local else job_dir


def host_python(cluster: ClusterSpec, host: HostSpec) -> str:
    return cluster.python or (sys.executable if host.is_local else "python3")


def wants_resume(cluster: ClusterSpec) -> bool:
    return str(cluster.train_dict().get("resume", "none")) != "none"


def restart_can_help(failures: Sequence[RankFailure]) -> bool:
    """False when the root cause is a rank that refused bad input (a setting, the data, a checkpoint).

    The trainer exits with ``TrainerError.exit_code`` (2) only for such errors, which a restart
    from the same settings and files would meet again.
    """
    ordered = order_failures(failures)
    return not (ordered and ordered[0].rank is not None and ordered[0].exit_code == TrainerError.exit_code)


def train_settings(cluster: ClusterSpec, job_dir_on_host: str, attempt: int) -> dict[str, Any]:
    settings = cluster.train_dict()
    settings["output_dir"] = job_dir_on_host
    if attempt > 0:
        settings["resume"] = "auto"  # a restart continues from the newest good checkpoint
    return settings


def agent_specs(plan: Plan, job_dir: str, attempt: int, rank_table: Optional[str],
                grace_period: float) -> dict[str, AgentSpec]:
    """One AgentSpec per host: its ranks (and the scheduler on cpu), with their environments."""
    cluster = plan.cluster
    specs = {}
    for host in cluster.hosts:
        jd = host_job_dir(host, job_dir)
        python = host_python(cluster, host)
        config_path = os.path.join(jd, f"train.attempt{attempt}.yaml")
        argv = (python, "-m", "mscluster.cli", "train", "--config", config_path)
        table_path = os.path.join(jd, "rank_table.json") if rank_table is not None else None
        extra = {**cluster.env_dict(), "MSCLUSTER_RESTART_COUNT": str(attempt)}
        procs = []
        if plan.scheduler is not None and plan.scheduler.host == host.address:
            env = {**extra, **scheduler_env(plan, job_dir=jd)}
            procs.append(ProcessSpec(SCHEDULER, argv, tuple(sorted(env.items())), cpus=()))
        for r in plan.ranks_on(host.address):
            env = {**extra, **rank_env(plan, r, job_dir=jd, rank_table_path=table_path)}
            procs.append(ProcessSpec(f"rank{r.rank}", argv, tuple(sorted(env.items())), rank=r.rank,
                                     device_id=r.device_id, cpus=None if cluster.bind_cores else (),
                                     local_rank=r.local_rank, local_size=r.local_size))
        files = [(os.path.basename(config_path), yaml.safe_dump(train_settings(cluster, jd, attempt), sort_keys=True))]
        if rank_table is not None:
            files.append(("rank_table.json", rank_table))
        specs[host.address] = AgentSpec(host=host.address, job_dir=jd, processes=tuple(procs), files=tuple(files),
                                        grace_period=grace_period, attempt=attempt, bind_cores=cluster.bind_cores)
    return specs


# -- steps with I/O --------------------------------------------------------------------------------

def _in_parallel(fn: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
    """Run ``fn`` on every item in threads; re-raise the first error (in item order)."""
    results: list[Any] = [None] * len(items)
    errors: list[Optional[BaseException]] = [None] * len(items)

    def one(i: int) -> None:
        try:
            results[i] = fn(items[i])
        except BaseException as exc:  # noqa: BLE001 - re-raised below in the caller's thread
            errors[i] = exc

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(len(items))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for exc in errors:
        if exc is not None:
            raise exc
    return results


def preflight(cluster: ClusterSpec, executors: Mapping[str, Executor]) -> None:
    """Every host answers and its interpreter imports mscluster, before anything starts anywhere."""
    timeout = cluster.ssh.connect_timeout + 20.0

    def check(host: HostSpec) -> None:
        check_host(executors[host.address], host_python(cluster, host), timeout,
                   cwd=os.getcwd() if host.is_local else None)

    _in_parallel(check, list(cluster.hosts))


def pick_scheduler_port(cluster: ClusterSpec, executor: Executor) -> int:
    """A free TCP port on the first host (asked of that host, which may be remote)."""
    host = cluster.hosts[0]
    code = "import socket; s = socket.socket(); s.bind(('', 0)); print(s.getsockname()[1])"
    result = executor.run([host_python(cluster, host), "-c", code], timeout=cluster.ssh.connect_timeout + 20.0)
    try:
        return int(result.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise HostUnreachable(f"host {host.address}: could not pick a free port for the scheduler "
                              f"({result.stderr.strip()[-200:] or result.exit_code})") from None


def make_rank_table(plan: Plan, executors: Mapping[str, Executor]) -> str:
    def run(host: str, argv: list[str]) -> tuple[int, str]:
        res = executors[host].run(argv, timeout=plan.cluster.ssh.connect_timeout + 20.0)
        return res.exit_code, res.stdout + res.stderr

    return dump_rank_table(build_rank_table(plan, discover_device_ips(plan, run)))


def create_job_dir(path: str, resume: bool) -> None:
    """Create the job folder; an existing one is refused (untouched) unless resuming."""
    if os.path.exists(path):
        if not resume:
            raise JobDirError(f"{path}: the job folder exists; choose another --job-dir, or continue that job "
                              f"with --set train.resume=auto")
        if not os.path.isdir(path):
            raise JobDirError(f"{path}: exists and is not a folder")
        if not any(os.path.exists(os.path.join(path, marker)) for marker in ("cluster.yaml", "status.json")):
            raise JobDirError(f"{path}: not an mscluster job folder (no cluster.yaml); refusing to write into it")
    try:
        os.makedirs(os.path.join(path, "logs"), exist_ok=True)
        os.makedirs(os.path.join(path, "checkpoints"), exist_ok=True)
    except OSError as exc:
        raise JobDirError(f"{path}: cannot create the job folder ({exc.strerror})") from None


def _say(console: Optional[TextIO], text: str) -> None:
    if console is not None:
        console.write(text + "\n")
        console.flush()


def launch(request: LaunchRequest, console: Optional[TextIO] = sys.stdout,
           make_executor: Callable[[HostSpec, Any], Executor] = executor_for,
           sleep: Callable[[float], None] = time.sleep) -> JobResult:
    """Run the job described by ``request`` to its end and return how it ended.

    Raises:
        LauncherError (ConfigError, HostUnreachable, DiscoveryError, JobDirError): before any rank
            started; nothing of an existing job folder is changed.
    """
    cluster = load_cluster(request.cluster_path, request.set_pairs)
    job_dir = request.job_dir or default_job_dir(cluster, time.time())
    resume = wants_resume(cluster)
    if request.job_dir is None and os.path.exists(job_dir):
        job_dir = f"{job_dir}-{os.getpid()}"
    if os.path.exists(job_dir):
        create_job_dir(job_dir, resume)  # an existing folder is checked before connecting anywhere
    executors = {h.address: make_executor(h, cluster.ssh) for h in cluster.hosts}
    try:
        preflight(cluster, executors)
        port = cluster.scheduler_port
        if cluster.backend == "cpu" and port is None:
            port = pick_scheduler_port(cluster, executors[cluster.hosts[0].address])
        plan = plan_ranks(cluster, port)
        if plan.scheduler is not None and plan.scheduler.port is None:
            plan = with_scheduler_port(plan, port)
        rank_table = make_rank_table(plan, executors) if cluster.backend == "ascend" else None
        create_job_dir(job_dir, resume)
        with open(os.path.join(job_dir, "cluster.yaml"), "w", encoding="utf-8") as handle:
            handle.write(resolved_yaml(cluster))
        if rank_table is not None:
            with open(os.path.join(job_dir, "rank_table.json"), "w", encoding="utf-8") as handle:
                handle.write(rank_table)
        _say(console, f"mscluster: job {os.path.abspath(job_dir)}: {len(plan.ranks)} rank(s) on "
                      f"{len(cluster.hosts)} host(s), backend {cluster.backend}")
        return _run_attempts(cluster, plan, job_dir, rank_table, executors, request, console, sleep)
    finally:
        for ex in executors.values():
            ex.close()


def previous_attempts(job_dir: str) -> list[dict[str, Any]]:
    """The attempts an earlier launch of this job folder recorded (a job continued by hand)."""
    try:
        with open(os.path.join(job_dir, RESULT_FILE), encoding="utf-8") as handle:
            attempts = json.load(handle).get("attempts", [])
    except (OSError, ValueError, AttributeError):
        attempts = []
    numbers = [int(m.group(1)) for m in (ATTEMPT_FILE.match(n) for n in _listdir(job_dir)) if m]
    if numbers and (not attempts or max(numbers) >= len(attempts)):
        # the launcher died before result.json: count the attempts by their settings files
        known = {a.get("attempt") for a in attempts}
        attempts = attempts + [{"attempt": n, "ok": False, "lost": True} for n in sorted(numbers) if n not in known]
    return attempts


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except OSError:
        return []


def _run_attempts(cluster: ClusterSpec, plan: Plan, job_dir: str, rank_table: Optional[str],
                  executors: Mapping[str, Executor], request: LaunchRequest, console: Optional[TextIO],
                  sleep: Callable[[float], None]) -> JobResult:
    by_host = {h.address: h for h in cluster.hosts}
    result = JobResult(status="failed", exit_code=1, job_dir=os.path.abspath(job_dir))
    # a job continued by hand goes on numbering its attempts: logs get a separator, nothing is overwritten
    result.attempts = previous_attempts(job_dir)
    first = max((int(a.get("attempt", -1)) for a in result.attempts), default=-1) + 1
    attempt_result: Optional[AttemptResult] = None
    for attempt in range(first, first + cluster.restarts + 1):
        if attempt > first:
            restart = attempt - first
            delay = BACKOFF_S[min(restart - 1, len(BACKOFF_S) - 1)]
            _say(console, f"mscluster: restart {restart} of {cluster.restarts} in {delay:.0f} s, "
                          f"from the newest good checkpoint")
            try:
                sleep(delay)
            except KeyboardInterrupt:
                result.status, result.exit_code = "interrupted", 130
                break
        specs = agent_specs(plan, job_dir, attempt, rank_table, request.grace_period)
        sink = LogSink(os.path.join(job_dir, "logs"), console, attempt)
        supervisor = Supervisor(specs, executors,
                                agent_argv=lambda h: [host_python(cluster, by_host[h]), "-m", "launcher.agent"],
                                agent_cwd=lambda h: os.getcwd() if by_host[h].is_local else None,
                                sink=sink, attempt=attempt)
        attempt_result = supervisor.run()
        result.failures.extend(attempt_result.failures)
        result.attempts.append({"attempt": attempt, "ok": attempt_result.ok, "started_at": attempt_result.started_at,
                                "ended_at": attempt_result.ended_at, "interrupted": attempt_result.interrupted,
                                "root_cause": (order_failures(attempt_result.failures)[0].to_dict()
                                               if attempt_result.failures else None)})
        result.restarts = attempt - first
        if attempt_result.eval:
            result.eval = attempt_result.eval
        if attempt_result.ok:
            result.status, result.exit_code = "succeeded", 0
            break
        if attempt_result.interrupted:
            result.status, result.exit_code = "interrupted", 130
            break
        if attempt < first + cluster.restarts:
            _say(console, format_failures(attempt_result.failures, f"attempt {attempt} failed"))
            if not restart_can_help(attempt_result.failures):
                _say(console, "mscluster: not restarting: a rank refused its settings, data or checkpoint "
                              f"(exit {TrainerError.exit_code}); a restart would meet the same error")
                break
    if result.status == "failed" and attempt_result is not None and not restart_can_help(attempt_result.failures):
        result.exit_code = TrainerError.exit_code  # bad input (settings, data, checkpoint): exit 2, as documented
    write_json_atomic(os.path.join(job_dir, RESULT_FILE), result.to_dict())
    return result
