"""``mscluster launch``: cluster file -> pre-flight -> plan -> rank table -> job folder -> attempts.

Each attempt is one Supervisor run over every host. On a failure, with ``restarts: N`` in the
cluster file, the whole job is started again in the same folder with ``resume: auto`` (the newest
good checkpoint), up to N times, after a short back-off. ``result.json`` records every attempt.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Mapping, Optional, Sequence, TextIO

from launcher.config import load_cluster, resolved_yaml
from launcher.errors import HostUnreachable, JobDirError, LauncherError, MindSporeMismatch
from launcher.executor import Executor, ProgramCheck, check_host, executor_for
from launcher.elastic import Shrink, keep_global_batch
from launcher.hostpool import Change, HostPool, Move, Why
from launcher.hosts import MakeExecutor, open_hosts
from launcher.joblock import JobLock
from launcher.lifecycle import JobState, interrupt_signal
from launcher.jobplan import (PYTHON_WORD, JobPlan, build_job_plan, host_python, launch_folder, own_argv,
                              program_argv)
from launcher.plan import plan_ranks
from launcher.npucheck import npu_preflight
from launcher.status import write_status_html
from launcher.ranktable import build_rank_table, discover_device_ips, dump_rank_table
from launcher.report import RankFailure, format_failures, order_failures
from launcher.slurm.allocation import SlurmError
from launcher.slurm.batch import SBATCH_SCRIPT
from launcher import snapshots
from launcher.spec import Backend, ClusterSpec, HostSpec, Plan
from launcher.supervisor import AttemptResult, LogSink, Supervisor, console_levels
from mscluster import jobfiles
from mscluster.fsutil import write_atomic, write_json_atomic
from mscluster.rank import PREEMPT_EXIT
from trainer import config as train_config
from trainer.errors import TrainerError

logger = logging.getLogger(__name__)

RESULT_FILE = jobfiles.RESULT_FILE
BACKOFF_S = (2.0, 5.0, 10.0)


@dataclass(frozen=True)
class LaunchRequest:
    """What the user asked for on the command line."""

    cluster_path: str
    set_pairs: tuple[str, ...] = ()
    job_dir: Optional[str] = None
    grace_period: float = 5.0
    command: Optional[tuple[str, ...]] = None  # the program after ``--``: replaces the file's command:
    console: Optional[str] = None  # ``--console``: all, or ranks "0,3"
    # set by a SIGUSR1 handler (Slurm's warning before the time limit): rank 0 saves and the job ends "preempted"
    preempt: Optional[threading.Event] = field(default=None, compare=False)
    from_sbatch: bool = False  # run by the sbatch.sh of `mscluster submit`: its job folder exists; resume: auto
    skip_preflight: bool = False  # ascend: start without the NPU pre-flight (launcher.npucheck)
    # `launch --detach`: called with the job folder once it exists and is locked (the output moves there)
    on_job_dir: Optional[Callable[[str], None]] = field(default=None, compare=False)


@dataclass(frozen=True)
class AttemptRecord:
    """One attempt of a job as ``result.json`` lists it."""

    attempt: int
    ok: bool
    started_at: Optional[float] = None
    ended_at: Optional[float] = None
    interrupted: bool = False
    interrupted_by: Optional[str] = None  # the signal that interrupted it: SIGINT (Ctrl-C), SIGTERM, SIGHUP
    root_cause: Optional[dict[str, Any]] = None  # the first failure's RankFailure.to_dict()
    lost: bool = False  # the launcher died during it: known only from its settings file
    # goodput: seconds from the root cause to the teardown, and to the next attempt's first step;
    # steps done after the last checkpoint (redone by the next attempt); rank 0's seconds in steps
    detect_s: Optional[float] = None
    recover_s: Optional[float] = None
    steps_lost: Optional[int] = None
    first_step_at: Optional[float] = None
    step_seconds: float = 0.0
    # where a start's time goes: seconds from the attempt's start until every process had started,
    # and until every rank had reported its first step
    started_s: Optional[float] = None
    first_progress_s: Optional[float] = None
    # where a failure's time went (launcher.launch.with_recovery, on the failed attempt's record): the
    # teardown (its start to every agent gone), the restart (this attempt's end to the next one's start:
    # back-off, planning), the next attempt's start to its first step
    teardown_s: Optional[float] = None
    restart_s: Optional[float] = None
    resume_first_step_s: Optional[float] = None
    # where this attempt's training state came from (memory: a host's in-memory snapshot; disk: the
    # newest good checkpoint; none or None: a fresh start), and its step
    state_from: Optional[str] = None
    resumed_step: Optional[int] = None
    stragglers: list[dict[str, Any]] = field(default_factory=list)  # ranks named stragglers (launcher.stragglers)
    # after this attempt failed: the hosts excluded and what took their places (launcher.hostpool.Change), and
    # when the job shrank, by how much (launcher.elastic.Shrink)
    hosts_changed: list[dict[str, Any]] = field(default_factory=list)
    shrink: Optional[dict[str, Any]] = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_dict(raw: Any) -> Optional["AttemptRecord"]:
        """A record from an earlier ``result.json``; None for an entry that is not one."""
        if not isinstance(raw, dict) or isinstance(raw.get("attempt"), bool) or not isinstance(raw.get("attempt"), int):
            return None
        number = lambda key: raw.get(key) if isinstance(raw.get(key), (int, float)) else None  # noqa: E731
        return AttemptRecord(attempt=raw["attempt"], ok=raw.get("ok") is True, started_at=number("started_at"),
                             ended_at=number("ended_at"), interrupted=raw.get("interrupted") is True,
                             interrupted_by=raw.get("interrupted_by") if isinstance(raw.get("interrupted_by"), str)
                             else None,
                             root_cause=raw.get("root_cause") if isinstance(raw.get("root_cause"), dict) else None,
                             lost=raw.get("lost") is True, detect_s=number("detect_s"), recover_s=number("recover_s"),
                             steps_lost=raw.get("steps_lost") if isinstance(raw.get("steps_lost"), int) else None,
                             first_step_at=number("first_step_at"), step_seconds=number("step_seconds") or 0.0,
                             started_s=number("started_s"), first_progress_s=number("first_progress_s"),
                             teardown_s=number("teardown_s"), restart_s=number("restart_s"),
                             resume_first_step_s=number("resume_first_step_s"),
                             state_from=raw.get("state_from") if isinstance(raw.get("state_from"), str) else None,
                             resumed_step=raw.get("resumed_step") if isinstance(raw.get("resumed_step"), int) else None,
                             stragglers=[s for s in raw.get("stragglers") or [] if isinstance(s, dict)]
                             if isinstance(raw.get("stragglers"), list) else [],
                             hosts_changed=[c for c in raw.get("hosts_changed") or [] if isinstance(c, dict)]
                             if isinstance(raw.get("hosts_changed"), list) else [],
                             shrink=raw.get("shrink") if isinstance(raw.get("shrink"), dict) else None)


STATE_FROM_DISK = "disk"  # a restart resumed from the newest good checkpoint on disk
STATE_FROM_MEMORY = "memory"  # from a host's in-memory snapshot (trainer.snapshot.pick_source's words)


def with_recovery(failed: AttemptRecord, started_at: float, first_step_at: Optional[float]) -> AttemptRecord:
    """The failed attempt's record once the next attempt has started (and reached its first step)."""
    failed_at = float((failed.root_cause or {}).get("time") or 0.0)
    return dataclasses.replace(
        failed,
        restart_s=round(started_at - failed.ended_at, 3) if failed.ended_at is not None else None,
        resume_first_step_s=round(first_step_at - started_at, 3) if first_step_at is not None else None,
        recover_s=round(first_step_at - failed_at, 3) if first_step_at is not None and failed_at else failed.recover_s)


def format_recovery(a: AttemptRecord, recovery: Optional[AttemptRecord] = None) -> Optional[str]:
    """One line of where a failure's time went (None for an attempt that did not fail); ``recovery``:
    the attempt that followed it, which says where its state came from."""
    if a.root_cause is None:
        return None
    parts = [f"{label} {value:.1f} s" for label, value in (
        ("detected in", a.detect_s), ("teardown", a.teardown_s), ("restart", a.restart_s),
        ("first step", a.resume_first_step_s), ("back in", a.recover_s)) if value is not None]
    if a.steps_lost is not None:
        parts.append(f"{a.steps_lost} step(s) lost")
    if recovery is not None and recovery.state_from:
        parts.append(f"state from {recovery.state_from}"
                     + (f" (step {recovery.resumed_step})" if recovery.resumed_step is not None else ""))
    return f"mscluster: attempt {a.attempt}'s failure ({a.root_cause.get('name')} on {a.root_cause.get('host')}): " \
           + (", ".join(parts) if parts else "no timings")


def recovery_lines(attempts: Sequence[AttemptRecord]) -> list[str]:
    """``format_recovery`` of every failed attempt, each with the attempt that followed it."""
    return [line for i, a in enumerate(attempts)
            if (line := format_recovery(a, attempts[i + 1] if i + 1 < len(attempts) else None)) is not None]


@dataclass
class JobResult:
    """How the whole job ended (what ``result.json`` holds)."""

    status: JobState  # succeeded | failed | interrupted | preempted (launcher.lifecycle)
    exit_code: int
    job_dir: str
    restarts: int = 0
    eval: dict[str, float] = field(default_factory=dict)
    failures: list[RankFailure] = field(default_factory=list)
    attempts: list[AttemptRecord] = field(default_factory=list)
    preflight_s: Optional[float] = None  # seconds the pre-flight of every host took (in parallel)
    interrupted_by: Optional[str] = None  # status interrupted: the signal (SIGINT for Ctrl-C, SIGTERM, SIGHUP)
    hosts: Optional[dict[str, Any]] = None  # active, spares, excluded, changes (launcher.hostpool.HostPool.to_dict)

    def to_dict(self) -> dict[str, Any]:
        return {"status": JobState(self.status).value, "exit_code": self.exit_code, "job_dir": self.job_dir,
                **({"hosts": self.hosts} if self.hosts is not None else {}),
                **({"interrupted_by": self.interrupted_by} if self.interrupted_by else {}),
                "restarts": self.restarts, "eval": self.eval, "preflight_s": self.preflight_s,
                "failures": [f.to_dict() for f in order_failures(self.failures)],
                "attempts": [a.to_dict() for a in self.attempts], "goodput": goodput(self.attempts)}


def write_goodput_scalars(job_dir: str, attempts: Sequence[AttemptRecord]) -> None:
    """The goodput figures as TensorBoard scalars in ``<job>/tensorboard/launcher/``, one step per attempt."""
    try:
        from trainer.monitor import EventWriter  # tensorboardX's record format; no MindSpore

        writer = EventWriter(os.path.join(job_dir, jobfiles.TENSORBOARD_DIR, "launcher"))
        for a in attempts:
            values = {"goodput/detect_s": a.detect_s, "goodput/recover_s": a.recover_s,
                      "goodput/steps_lost": a.steps_lost, "goodput/teardown_s": a.teardown_s,
                      "goodput/restart_s": a.restart_s, "goodput/resume_first_step_s": a.resume_first_step_s,
                      "goodput/state_from_memory": None if a.state_from is None
                      else float(a.state_from == STATE_FROM_MEMORY),
                      "goodput/first_step_s": (a.first_step_at - a.started_at)
                      if a.first_step_at is not None and a.started_at is not None else None,
                      # the ranks named stragglers (launcher.stragglers) and each one's score when named
                      "stragglers/named": len(a.stragglers),
                      **{f"stragglers/rank{n['rank']}_relative": n.get("relative") for n in a.stragglers
                         if isinstance(n.get("rank"), int) and isinstance(n.get("relative"), (int, float))}}
            writer.add_scalars({k: float(v) for k, v in values.items() if v is not None}, a.attempt)
        ratio = goodput(attempts).get("effective_training_ratio")
        if ratio is not None and attempts:
            writer.add_scalars({"goodput/effective_training_ratio": float(ratio)}, attempts[-1].attempt)
        writer.close()
    except Exception as exc:  # noqa: BLE001 - figures for TensorBoard never fail a job
        logger.warning("%s: could not write the goodput scalars (%s)", job_dir, exc)


def goodput(attempts: Sequence[AttemptRecord]) -> dict[str, Any]:
    """The job's effective-training-time ratio: seconds in steps that count over wall time.

    Steps lost (done after the last checkpoint of a failed attempt) do not count; their time is
    estimated from that attempt's mean step time.
    """
    timed = [a for a in attempts if a.started_at is not None and a.ended_at is not None]
    if not timed:
        return {"effective_training_ratio": None}
    wall = max(a.ended_at for a in timed) - min(a.started_at for a in timed)  # type: ignore[type-var]
    counted = 0.0
    for a in timed:
        seconds = a.step_seconds
        if a.steps_lost and a.root_cause is not None:
            steps = max((a.root_cause.get("last_step") or 0), 1)
            seconds = max(seconds - seconds * a.steps_lost / steps, 0.0)
        counted += seconds
    return {"effective_training_ratio": round(counted / wall, 4) if wall > 0 else None,
            "wall_s": round(wall, 2), "training_s": round(counted, 2)}


# -- pure helpers ----------------------------------------------------------------------------------

def default_job_dir(cluster: ClusterSpec, now: float) -> str:
    return os.path.join(cluster.workdir, f"{cluster.name}-{time.strftime('%Y%m%d-%H%M%S', time.localtime(now))}")


def wants_resume(cluster: ClusterSpec) -> bool:
    return cluster.train_config.resumes


def restart_can_help(failures: Sequence[RankFailure]) -> bool:
    """False when the root cause is a rank that refused bad input (a setting, the data, a checkpoint).

    The trainer exits with ``TrainerError.exit_code`` (2) only for such errors, which a restart
    from the same settings and files would meet again.
    """
    ordered = order_failures(failures)
    return not (ordered and ordered[0].rank is not None and ordered[0].exit_code == TrainerError.exit_code)


def console_pairs(console: Optional[str]) -> tuple[str, ...]:
    """``--console all`` / ``--console 0,3`` as the ``--set`` pair of the cluster file's ``console:``."""
    if console is None:
        return ()
    text = console.strip()
    return ("console=all",) if text == "all" else (f"console=[{text}]",)


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


def preflight(cluster: ClusterSpec, executors: Mapping[str, Executor], launch_dir: str) -> dict[str, str]:
    """Every host answers, its interpreter imports mscluster (and MindSpore where it is needed), and
    a ``command:``'s folder and program are there, before anything starts anywhere.

    Returns the MindSpore version of every host that needs it (host label -> version).

    Raises:
        MindSporeMismatch: those hosts have different versions (one line: which host has which).
    """
    found = _in_parallel(lambda host: check_one(cluster, host, executors, launch_dir), list(cluster.hosts))
    versions = {h.label: v for h, v in zip(cluster.hosts, found) if v is not None}
    hosts_of: dict[str, list[str]] = {}
    for label, version in versions.items():
        hosts_of.setdefault(version, []).append(label)
    if len(hosts_of) > 1:
        # one job, one MindSpore: versions differ in their collectives and checkpoints (and on Ascend
        # each host's build must match its CANN), so a mixed job hangs or diverges instead of failing
        raise MindSporeMismatch("the hosts have different MindSpore versions: " + "; ".join(
            f"{version} on {', '.join(labels)}" for version, labels in hosts_of.items())
            + ": install one version on every host (on Ascend, the build matched to each host's CANN); "
              "nothing was started")
    if hosts_of:
        logger.info("pre-flight: MindSpore %s on %s", next(iter(hosts_of)), ", ".join(versions))
    return versions


def check_one(cluster: ClusterSpec, host: HostSpec, executors: Mapping[str, Executor], launch_dir: str,
              spare: bool = False) -> Optional[str]:
    """One host's pre-flight (``preflight``); its MindSpore version where it needs MindSpore.

    A spare needs what any host of the job needs, the first one's MindSpore included (it may take its place).
    """
    needs_mindspore = cluster.builtin_trainer or cluster.uses_scheduler and (spare or host == cluster.hosts[0])
    program = None
    if cluster.command:
        folder = launch_folder(cluster, host, launch_dir)
        program = ProgramCheck(folder=folder or "", argv=program_argv(cluster, host, "", 0),
                               python_first=cluster.command[0] == PYTHON_WORD)
    return check_host(executors[host.address], host_python(cluster, host), cluster.ssh.connect_timeout + 20.0,
                      cwd=launch_dir if host.sees_launch_folder else None,
                      needs_mindspore=needs_mindspore, program=program)


def preflight_spares(cluster: ClusterSpec, spares: Sequence[HostSpec], executors: Mapping[str, Executor],
                     launch_dir: str, versions: Mapping[str, str]) -> dict[str, str]:
    """The same pre-flight on every spare, in parallel: the spares that fail it, address -> why (one line).

    A spare is never the reason a job does not start: one that fails is excluded (``launcher.hostpool``).
    """
    wanted = set(versions.values())

    def check(host: HostSpec) -> Optional[str]:
        try:
            version = check_one(cluster, host, executors, launch_dir, spare=True)
        except LauncherError as exc:
            return str(exc)
        if version is not None and wanted and version not in wanted:
            return f"MindSpore {version}, the job's hosts have {', '.join(sorted(wanted))}"
        return None

    found = _in_parallel(check, list(spares))
    return {h.address: why for h, why in zip(spares, found) if why is not None}


def pick_scheduler_port(cluster: ClusterSpec, executor: Executor) -> int:
    """A free TCP port on the first host (asked of that host, which may be remote)."""
    host = cluster.hosts[0]
    result = executor.run(own_argv(host_python(cluster, host), "launcher.probe"), input='{"free_port": true}',
                          timeout=cluster.ssh.connect_timeout + 20.0, cwd=os.getcwd() if host.is_local else None)
    try:
        return int(result.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise HostUnreachable(f"host {host.address}: could not pick a free port for the scheduler "
                              f"({result.stderr.strip()[-200:] or result.exit_code})") from None


def discover_ips(plan: Plan, executors: Mapping[str, Executor]) -> dict[tuple[str, int], str]:
    """Every rank's NPU IP (the cluster file, else hccn_tool, else /etc/hccn.conf) through the hosts' executors."""
    def run(host: str, argv: list[str]) -> tuple[int, str]:
        res = executors[host].run(argv, timeout=plan.cluster.ssh.connect_timeout + 20.0)
        return res.exit_code, res.stdout + res.stderr

    return discover_device_ips(plan, run)


def make_rank_table(plan: Plan, executors: Mapping[str, Executor]) -> str:
    return dump_rank_table(build_rank_table(plan, discover_ips(plan, executors)))


def create_job_dir(path: str, resume: bool) -> None:
    """Create the job folder; an existing one is refused (untouched) unless resuming."""
    if os.path.exists(path):
        if not resume:
            raise JobDirError(f"{path}: the job folder exists; choose another --job-dir, or continue that job "
                              f"with --set train.resume=auto")
        if not os.path.isdir(path):
            raise JobDirError(f"{path}: exists and is not a folder")
        if not any(os.path.exists(os.path.join(path, marker)) for marker in (jobfiles.CLUSTER_FILE, jobfiles.STATUS_FILE)):
            raise JobDirError(f"{path}: not an mscluster job folder (no cluster.yaml); refusing to write into it")
    try:
        for folder in (path, *(os.path.join(path, sub) for sub in JOB_SUBDIRS)):
            make_private_dir(folder)
    except OSError as exc:
        raise JobDirError(f"{path}: cannot create the job folder ({exc.strerror})") from None


JOB_SUBDIRS = (jobfiles.LOGS_DIR, jobfiles.CHECKPOINTS_DIR, jobfiles.ERRORS_DIR)


def make_private_dir(path: str) -> None:
    """A folder only its owner can enter (0700): logs and error files can hold secrets from env:."""
    os.makedirs(path, mode=0o700, exist_ok=True)
    os.chmod(path, 0o700)


def _say(console: Optional[TextIO], text: str) -> None:
    if console is not None:
        console.write(text + "\n")
        console.flush()


def launch(request: LaunchRequest, console: Optional[TextIO] = sys.stdout,
           make_executor: MakeExecutor = executor_for,
           sleep: Callable[[float], None] = time.sleep) -> JobResult:
    """Run the job described by ``request`` to its end and return how it ended.

    Raises:
        LauncherError (ConfigError, HostUnreachable, DiscoveryError, JobDirError): before any rank
            started; nothing of an existing job folder is changed.
    """
    cluster = load_cluster(request.cluster_path, request.set_pairs + console_pairs(request.console), request.command)
    launch_dir = os.getcwd()
    if request.from_sbatch:
        check_sbatch_folder(request.job_dir, cluster)
        if cluster.builtin_trainer and not wants_resume(cluster):  # a requeued run goes on from its checkpoint
            cluster = cluster.with_train(resume=train_config.RESUME_AUTO)
    hosts = open_hosts(cluster, os.environ, make_executor)  # the scheduler's hosts (Slurm: the allocation's)
    cluster, executors = hosts.cluster, hosts.executors
    job_dir = request.job_dir or default_job_dir(cluster, time.time())
    resume = wants_resume(cluster) or request.from_sbatch
    if request.job_dir is None and os.path.exists(job_dir):
        job_dir = f"{job_dir}-{os.getpid()}"
    lock = None
    if os.path.exists(job_dir):
        create_job_dir(job_dir, resume)  # an existing folder is checked before connecting anywhere
        lock = JobLock(job_dir).acquire()  # ... and refused while another launcher runs it
    try:
        began = time.monotonic()
        versions = preflight(cluster, executors, launch_dir)
        pool = HostPool(cluster.hosts, cluster.spares, cluster.exclusion, cluster.elastic)
        if cluster.spares:  # the spares pass the same pre-flight; one that does not stands down, the job starts
            for address, why in preflight_spares(cluster, cluster.spares, executors, launch_dir, versions).items():
                stood_down(console, pool, address, Why.PREFLIGHT, why)
        preflight_s = round(time.monotonic() - began, 3)
        rank_table, device_ips, cpus = None, None, None
        if cluster.uses_rank_table:
            placement = plan_ranks(cluster)
            device_ips = discover_ips(placement, executors)
            rank_table = dump_rank_table(build_rank_table(placement, device_ips))
        if cluster.backend is Backend.ASCEND and not request.skip_preflight:
            cpus = dict(npu_preflight(cluster, executors, _in_parallel, device_ips))
            for address, why in npu_failures(cluster, pool.spares, executors, cpus).items():
                stood_down(console, pool, address, Why.NPU_PREFLIGHT, why)
            preflight_s = round(time.monotonic() - began, 3)
        create_job_dir(job_dir, resume)
        if lock is None:
            lock = JobLock(job_dir).acquire()
        if request.on_job_dir is not None:
            request.on_job_dir(job_dir)
        write_atomic(os.path.join(job_dir, jobfiles.CLUSTER_FILE), resolved_yaml(cluster), mode=0o600)
        if rank_table is not None:
            write_atomic(os.path.join(job_dir, jobfiles.RANK_TABLE_FILE), rank_table, mode=0o600)

        def plan_attempt(attempt: int, current: ClusterSpec) -> JobPlan:
            hosts.use(current.hosts)  # Slurm: the attempt's one step of agents starts on these nodes
            table = rank_table
            if current.uses_rank_table and current.hosts != cluster.hosts:  # a spare took a place: a new table
                placed = plan_ranks(current)
                table = dump_rank_table(build_rank_table(placed, discover_ips(placed, executors)))
                write_atomic(os.path.join(job_dir, jobfiles.RANK_TABLE_FILE), table, mode=0o600)
            # cpu: a free port chosen afresh for every attempt, just before it starts, so a port
            # taken since the last attempt (or in the moment before MindSpore binds it) costs one
            # restart, not the job
            port = current.scheduler_port
            if current.uses_scheduler and port is None:
                port = pick_scheduler_port(current, executors[current.hosts[0].address])
            return build_job_plan(current, job_dir=job_dir, scheduler_port=port, attempt=attempt,
                                  rank_table=table, grace_period=request.grace_period, launch_dir=launch_dir,
                                  cpus=cpus)

        def check_npus(current: ClusterSpec) -> dict[str, str]:
            """Ascend, at a restart: the NPU pre-flight of each host of the next attempt (address -> why)."""
            if current.backend is not Backend.ASCEND or request.skip_preflight:
                return {}
            return npu_failures(current, current.hosts, executors, cpus)

        _say(console, f"mscluster: job {os.path.abspath(job_dir)}: {cluster.world_size} rank(s) on "
                      f"{len(cluster.hosts)} host(s), backend {cluster.backend}"
                      + (f"; {hosts.where}: " + ", ".join(h.label for h in cluster.hosts) if hosts.where else "")
                      + (f"; spare(s) standing by: {', '.join(h.label for h in pool.spares)}" if pool.spares else ""))
        keeper = snapshots.keeper_for(cluster.train_config if cluster.builtin_trainer else None, job_dir,
                                      [h.address for h in cluster.hosts], executors,
                                      lambda h: host_python(cluster, next(x for x in (*cluster.hosts, *cluster.spares)
                                                                          if x.address == h)),
                                      jobfiles.checkpoints_dir(job_dir))
        try:
            return _run_attempts(cluster, plan_attempt, job_dir, executors, launch_dir, console, sleep,
                                 preflight_s=preflight_s, preempt=request.preempt, keeper=keeper, pool=pool,
                                 check_npus=check_npus)
        finally:  # the job's end, however it ended: no snapshot memory is left on any host
            if keeper is not None:
                keeper.remove()
    finally:
        hosts.close()
        if lock is not None:
            lock.release()


def npu_failures(cluster: ClusterSpec, hosts: Sequence[HostSpec], executors: Mapping[str, Executor],
                 cpus: dict) -> dict[str, str]:
    """The NPU pre-flight of each of ``hosts`` on its own, every host at once: address -> why, for those that
    fail (a spare stands down, a host of a restart is replaced); the cores of those that pass go into ``cpus``."""
    def one(host: HostSpec) -> Optional[str]:
        try:
            cpus.update(npu_preflight(dataclasses.replace(cluster, hosts=(host,), spares=()), executors,
                                      _in_parallel))
        except LauncherError as exc:
            return str(exc)
        return None

    return {h.address: why for h, why in zip(hosts, _in_parallel(one, list(hosts))) if why}


def stood_down(console: Optional[TextIO], pool: HostPool, address: str, why: Why, detail: str,
               attempt: Optional[int] = None) -> None:
    """A spare that failed its pre-flight: excluded for its cooldown, said in one line."""
    e = pool.exclude(address, why, detail, attempt)
    _say(console, f"mscluster: spare {e.label} stands down ({why}: {e.detail}); excluded for {e.until - e.at:.0f} s")


def check_sbatch_folder(job_dir: Optional[str], cluster: ClusterSpec) -> None:
    """``--from-sbatch``: the job folder ``mscluster submit`` made (its sbatch.sh in it), inside Slurm.

    Raises:
        JobDirError: no --job-dir, or a folder submit did not write.
        SlurmError: the cluster file does not say scheduler: slurm.
    """
    if not cluster.on_slurm:
        raise SlurmError(f"{cluster.source}: --from-sbatch is for a scheduler: slurm job (this file says "
                         f"scheduler: {cluster.scheduler})")
    if job_dir is None or not os.path.isfile(os.path.join(job_dir, SBATCH_SCRIPT)):
        raise JobDirError(f"{job_dir}: not a job folder of mscluster submit (no {SBATCH_SCRIPT}); "
                          "--from-sbatch is what that script passes")


def previous_attempts(job_dir: str) -> list[AttemptRecord]:
    """The attempts an earlier launch of this job folder recorded (a job continued by hand)."""
    try:
        with open(os.path.join(job_dir, RESULT_FILE), encoding="utf-8") as handle:
            raw = json.load(handle).get("attempts", [])
    except (OSError, ValueError, AttributeError):
        raw = []
    attempts = [a for a in map(AttemptRecord.from_dict, raw if isinstance(raw, list) else []) if a is not None]
    numbers = [n for n in (jobfiles.settings_attempt(name) for name in _listdir(job_dir)) if n is not None]
    if numbers and (not attempts or max(numbers) >= len(attempts)):
        # the launcher died before result.json: count the attempts by their settings files
        known = {a.attempt for a in attempts}
        attempts += [AttemptRecord(attempt=n, ok=False, lost=True) for n in sorted(numbers) if n not in known]
    return attempts


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except OSError:
        return []


def _since(start: Optional[float], end: Optional[float]) -> Optional[float]:
    return None if start is None or end is None else round(end - start, 3)


def _npu_changes(pool: HostPool, check_npus: Callable[[ClusterSpec], Mapping[str, str]], cluster: ClusterSpec,
                 attempt: int, changes: Sequence[Change]) -> list[Change]:
    """Ascend, at a restart: the next attempt's hosts whose NPU pre-flight fails are excluded and replaced,
    until every host of the next attempt passes (or no spare is left)."""
    found: list[Change] = []
    while not any(c.move is Move.NO_SPARE for c in (*changes, *found)):
        failed = check_npus(dataclasses.replace(cluster, hosts=tuple(pool.hosts), spares=()))
        if not failed:
            break
        for address, why in failed.items():
            found.append(pool.replace(pool.exclude(address, Why.NPU_PREFLIGHT, why, attempt)))
    return found


def _readmit(pool: HostPool, cluster: ClusterSpec, executors: Mapping[str, Executor], launch_dir: str,
             console: Optional[TextIO]) -> None:
    """Before a restart: excluded hosts whose cooldown is over stand by again once they pass the pre-flight."""
    back = [h for h in pool.cooled_down() if h.address in executors]
    failed = preflight_spares(cluster, back, executors, launch_dir, {}) if back else {}
    for host in back:
        if host.address in failed:
            e = pool.exclude(host.address, Why.PREFLIGHT, failed[host.address], None)
            _say(console, f"mscluster: {e.label} is still not usable after its cooldown ({e.detail}); excluded "
                          f"for {e.until - e.at:.0f} s more")
            continue
        pool.readmit(host)
        _say(console, f"mscluster: {host.label} is back as a spare (its cooldown is over and it passed the pre-flight)")


def next_cluster(cluster: ClusterSpec, pool: HostPool, shrinking: bool,
                 changes: Sequence[Change] = ()) -> tuple[ClusterSpec, Optional[Shrink]]:
    """The cluster of the next attempt: the pool's hosts and spares; when it shrank, the global batch kept
    (``launcher.elastic``), and the shrink said.

    Raises:
        LauncherError: the global batch cannot be kept on fewer ranks (one line naming the numbers).
    """
    if shrinking:
        # the spares that took a place in the same turn are not "left out": the shrink starts from them
        spares_in = {c.exclusion.host: c.spare for c in changes if c.move is Move.REPLACED and c.spare is not None}
        before = dataclasses.replace(cluster, hosts=tuple(spares_in.get(h.address, h) for h in cluster.hosts))
        shrink = keep_global_batch(before, tuple(pool.hosts))
        return dataclasses.replace(shrink.cluster, spares=tuple(pool.spares)), shrink
    return dataclasses.replace(cluster, hosts=tuple(pool.hosts), spares=tuple(pool.spares)), None


def _run_attempts(cluster: ClusterSpec, plan_attempt: Callable[[int, ClusterSpec], JobPlan], job_dir: str,
                  executors: Mapping[str, Executor], launch_dir: str, console: Optional[TextIO],
                  sleep: Callable[[float], None], preflight_s: Optional[float] = None,
                  preempt: Optional[threading.Event] = None,
                  keeper: Optional[snapshots.Keeper] = None, pool: Optional[HostPool] = None,
                  check_npus: Callable[[ClusterSpec], Mapping[str, str]] = lambda c: {}) -> JobResult:
    pool = pool if pool is not None else HostPool(cluster.hosts, cluster.spares, cluster.exclusion, cluster.elastic)
    result = JobResult(status=JobState.FAILED, exit_code=1, job_dir=os.path.abspath(job_dir), preflight_s=preflight_s)
    # a job continued by hand goes on numbering its attempts: logs get a separator, nothing is overwritten
    result.attempts = previous_attempts(job_dir)
    first = max((a.attempt for a in result.attempts), default=-1) + 1
    attempt_result: Optional[AttemptResult] = None
    for attempt in range(first, first + cluster.restarts + 1):
        if preempt is not None and preempt.is_set():  # between attempts: nothing to save, nothing more to start
            result.status, result.exit_code = JobState.PREEMPTED, PREEMPT_EXIT
            break
        if attempt > first:
            restart = attempt - first
            delay = BACKOFF_S[min(restart - 1, len(BACKOFF_S) - 1)]
            _say(console, f"mscluster: restart {restart} of {cluster.restarts} in {delay:.0f} s, "
                          f"from the newest good checkpoint")
            try:
                sleep(delay)
            except KeyboardInterrupt as exc:
                result.status, result.exit_code = JobState.INTERRUPTED, 130
                result.interrupted_by = interrupt_signal(exc)
                break
        if attempt > first:
            _readmit(pool, cluster, executors, launch_dir, console)
            cluster = dataclasses.replace(cluster, spares=tuple(pool.spares))
        by_host = {h.address: h for h in cluster.hosts}
        restored = None
        if keeper is not None:  # the snapshots the next attempt can use are on its hosts
            keeper.dirs = snapshots.folders(job_dir, list(by_host))
        if keeper is not None and attempt == first:  # a job continued by hand: no state of an earlier launch
            keeper.remove()
        if keeper is not None and attempt > first:  # every host gets the newest snapshot any host kept
            restored = keeper.prepare_restart()
            _say(console, f"mscluster: resuming from the {restored.state_from} state of step {restored.step}"
                          + (f" (kept by {restored.host})" if restored.host else ""))
            before = result.attempts[-1] if result.attempts else None
            if before is not None and before.root_cause and isinstance(before.root_cause.get("last_step"), int) \
                    and restored.step is not None:  # the steps lost are those after the state resumed
                result.attempts[-1] = dataclasses.replace(
                    before, steps_lost=max(before.root_cause["last_step"] - restored.step, 0))
        try:
            job = plan_attempt(attempt, cluster)
        except HostUnreachable as exc:  # the first host went away between attempts
            if attempt == first:
                raise
            result.failures.append(RankFailure(host=cluster.hosts[0].address, name="agent", rank=None, device_id=None,
                                               exit_code=None, signal=None, time=time.time(), log_path=None,
                                               message=str(exc), attempt=attempt))
            result.attempts.append(AttemptRecord(attempt=attempt, ok=False, root_cause=result.failures[-1].to_dict()))
            break
        sink = LogSink(os.path.join(job_dir, jobfiles.LOGS_DIR), console, attempt,
                       None if cluster.console is None else frozenset(cluster.console),
                       console_levels({a.host: a for a in job.agents}))
        supervisor = Supervisor({a.host: a for a in job.agents}, executors,
                                agent_argv=lambda h: [*own_argv(host_python(cluster, by_host[h]), "launcher.agent")],
                                agent_cwd=lambda h: launch_dir if by_host[h].sees_launch_folder else None,
                                # a remote line carries no user data: the job folder travels in the spec
                                agent_env=lambda h: {"MSCLUSTER_JOB_DIR": job.agent(h).job_dir} if by_host[h].is_local else {},
                                sink=sink, attempt=attempt, watch=cluster.watchdog, preempt=preempt,
                                stragglers=cluster.stragglers, hosts_info=pool.to_dict())
        attempt_result = supervisor.run()
        # where this attempt's training state came from: a snapshot or checkpoint the keeper chose, else a
        # restart of the built-in trainer resumes from the newest good checkpoint on disk
        state_from = restored.state_from if restored else (
            STATE_FROM_DISK if attempt > first and cluster.builtin_trainer else None)
        result.failures.extend(attempt_result.failures)
        ordered = order_failures(attempt_result.failures)
        root = ordered[0].to_dict() if ordered else None
        detect = lost = None
        if ordered and attempt_result.stopped_at is not None:
            detect = round(max(attempt_result.stopped_at - ordered[0].time, 0.0), 3)
        if root is not None and attempt_result.last_step is not None:
            lost = max(attempt_result.last_step - (attempt_result.last_checkpoint_step or 0), 0)
            root["last_step"] = attempt_result.last_step
        if result.attempts and result.attempts[-1].root_cause:  # this attempt is the previous one's recovery
            result.attempts[-1] = with_recovery(result.attempts[-1], attempt_result.started_at,
                                                attempt_result.first_step_at)
        result.attempts.append(AttemptRecord(attempt=attempt, ok=attempt_result.ok, started_at=attempt_result.started_at,
                                             ended_at=attempt_result.ended_at, interrupted=attempt_result.interrupted,
                                             interrupted_by=attempt_result.interrupted_by,
                                             root_cause=root, detect_s=detect, steps_lost=lost,
                                             first_step_at=attempt_result.first_step_at,
                                             step_seconds=round(attempt_result.step_seconds, 3),
                                             started_s=_since(attempt_result.started_at, attempt_result.all_started_at),
                                             first_progress_s=_since(attempt_result.started_at,
                                                                     attempt_result.all_progress_at),
                                             teardown_s=_since(attempt_result.stopped_at, attempt_result.ended_at)
                                             if root is not None else None,
                                             state_from=state_from,
                                             resumed_step=restored.step if restored else None,
                                             stragglers=attempt_result.stragglers))
        result.restarts = attempt - first
        if attempt_result.eval:
            result.eval = attempt_result.eval
        if attempt_result.ok:
            result.status, result.exit_code = JobState.SUCCEEDED, 0
            break
        if attempt_result.interrupted:
            result.status, result.exit_code = JobState.INTERRUPTED, 130
            result.interrupted_by = attempt_result.interrupted_by
            break
        if attempt_result.preempted:  # no restart here: the allocation is ending; requeue (sbatch.sh) resumes
            result.status, result.exit_code = JobState.PREEMPTED, PREEMPT_EXIT
            break
        if attempt < first + cluster.restarts:
            _say(console, format_failures(attempt_result.failures, f"attempt {attempt} failed"))
            if not restart_can_help(attempt_result.failures):
                _say(console, "mscluster: not restarting: a rank refused its settings, data or checkpoint "
                              f"(exit {TrainerError.exit_code}); a restart would meet the same error")
                break
            changes = pool.after_attempt(attempt_result.failures, attempt)
            changes += _npu_changes(pool, check_npus, cluster, attempt, changes)
            for change in changes:
                _say(console, change.describe())
            if changes:
                result.attempts[-1] = dataclasses.replace(result.attempts[-1],
                                                          hosts_changed=[c.to_dict() for c in changes])
            ended = next((c for c in changes if c.move is Move.NO_SPARE), None)
            if ended is not None:
                _say(console, f"mscluster: not restarting: {ended.exclusion.label} cannot be used ("
                              f"{ended.exclusion.why}) and no spare is left to take its place; add spares: "
                              "(slurm.spares), or elastic: {min_hosts: N} to go on with fewer hosts")
                break
            try:
                cluster, shrink = next_cluster(cluster, pool, any(c.move is Move.SHRUNK for c in changes), changes)
            except LauncherError as exc:
                _say(console, f"mscluster: not restarting: {exc}")
                break
            if shrink is not None:
                _say(console, shrink.describe())
                result.attempts[-1] = dataclasses.replace(result.attempts[-1], shrink=shrink.to_dict())
    if result.status is JobState.FAILED and attempt_result is not None and not restart_can_help(attempt_result.failures):
        result.exit_code = TrainerError.exit_code  # bad input (settings, data, checkpoint): exit 2, as documented
    result.hosts = pool.to_dict()
    write_goodput_scalars(job_dir, result.attempts)
    try:
        write_json_atomic(os.path.join(job_dir, jobfiles.RESULT_FILE), result.to_dict(), mode=0o600)
    except OSError as exc:  # a full disk: the job's end is still printed, and the logs say the rest
        logger.error("%s: cannot write %s (%s)", job_dir, jobfiles.RESULT_FILE, exc.strerror or exc)
    write_status_html(job_dir)  # the picture gets the attempts, the failures and the goodput
    return result
