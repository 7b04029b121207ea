"""The job model: one object that says exactly what a launch starts, built by one function.

``build_job_plan`` turns a validated cluster file into a ``JobPlan``: for every host, the agent's
spec, with every process (ranks and the scheduler) as its exact argv, environment (everything
the launcher adds on top of the host's own) and folder, plus the files the agent writes first
(the built-in trainer's settings, the rank table). ``mscluster plan`` prints it (with
placeholders for what is fixed only at launch: the job folder, the scheduler port, the event
pipe's number), ``launch`` runs it, and a test compares it with ``/proc`` of every process
started. Pure: no I/O.
"""
from __future__ import annotations

import os
import shlex
import sys
import textwrap
from dataclasses import dataclass
from typing import Any, Mapping, Optional

import yaml

from launcher.plan import plan_ranks, rank_env, scheduler_env
from launcher.protocol import AgentSpec, ProcessSpec
from launcher.spec import AtLaunch, Backend, ClusterSpec, HostSpec, Plan, WatchdogSpec
from launcher.table import format_table
from launcher.watchdog import (AUTO_CEILING_S, AUTO_FIRST_S, AUTO_FLOOR_S, AUTO_LEARN_STEPS, AUTO_SECTION_MULTIPLE,
                               AUTO_STEP_MULTIPLE)
from mscluster import jobfiles
from mscluster.rank import (BEAT_INTERVAL_ENV, ERROR_FILE_ENV, EVENT_FD_ENV, HOST_ENV, RESTART_COUNT_ENV,
                            STACK_FILE_ENV)
from trainer import config as train_config

PYTHON_WORD = "python"
BACKEND_MARGIN_S = 30  # the backend's timeouts exceed the watchdog's by this much
QUIET_GLOG_V = "3"  # MindSpore's log level for the built-in trainer and the scheduler: errors only  # a command's first word that means the cluster's interpreter on that host


@dataclass(frozen=True)
class JobPlan:
    """Everything one attempt of a job starts, host by host, in the cluster file's host order."""

    cluster: ClusterSpec
    placement: Plan  # ranks on hosts and devices, and the scheduler
    job_dir: str  # as the launcher sees it; AtLaunch.JOB_DIR in a preview
    attempt: int
    agents: tuple[AgentSpec, ...]

    @property
    def preview(self) -> bool:
        """Whether values fixed at launch are still placeholders (``mscluster plan``)."""
        return self.job_dir is AtLaunch.JOB_DIR or (
            self.placement.scheduler is not None and self.placement.scheduler.port is None)

    def agent(self, address: str) -> AgentSpec:
        return next(a for a in self.agents if a.host == address)

    def processes(self) -> list[tuple[str, ProcessSpec]]:
        """(host, process) for every process of the job: each host's scheduler first, then ranks."""
        return [(a.host, p) for a in self.agents for p in a.processes]


# -- where things are on a host --------------------------------------------------------------------

def host_job_dir(host: HostSpec, job_dir: str) -> str:
    """The job folder as seen on ``host``: absolute for local hosts, as given (home-relative) on remote ones."""
    if job_dir is AtLaunch.JOB_DIR:
        return job_dir
    return os.path.abspath(job_dir) if host.sees_launch_folder else job_dir


def host_python(cluster: ClusterSpec, host: HostSpec, local_python: Optional[str] = None) -> str:
    """The interpreter that runs the agent (and ``python`` in a command) on ``host``."""
    return cluster.python or ((local_python or sys.executable) if host.sees_launch_folder else "python3")


# mscluster's own programs (agent, probe, scheduler, the built-in trainer's ranks) run as
# ``python -c OWN_MODULE_BOOT <module> ARGS`` rather than ``python -m <module> ARGS``: -m puts the
# folder the process runs in (the user's launch folder, a remote login folder) first on sys.path, so a
# user's launcher.py or trainer.py there would be imported instead of ours. Python's -P does the same
# as this line but only from 3.11 (hosts run 3.9-3.13), and -I also drops PYTHONPATH, which Ascend's
# CANN environment needs. runpy.run_module with alter_sys is what -m does: sys.argv[0] becomes the
# module's file, __name__ is "__main__".
OWN_MODULE_BOOT = ("import runpy,sys;sys.path[:]=[p for p in sys.path if p];"
                   'runpy.run_module(sys.argv.pop(1),run_name="__main__",alter_sys=True)')
CLI_MODULE = "mscluster_cli"  # the CLI as a module: the built-in trainer (`train`), a Slurm batch job (`launch`)


def own_argv(python: str, module: str, *args: str) -> tuple[str, ...]:
    """The argv that runs mscluster's ``module`` with ``python`` as ``-m`` would, whatever the folder holds."""
    return (python, "-c", OWN_MODULE_BOOT, module, *args)


def launch_folder(cluster: ClusterSpec, host: HostSpec, launch_dir: str) -> Optional[str]:
    """The folder a host's processes run in.

    A ``command:`` runs in ``cwd:`` or else in the folder launch was run in, on every host (the
    shared-filesystem convention of pdsh and msrun). The built-in trainer runs in the launch
    folder locally and in the login folder (None) remotely, where its relative job folder lives.
    """
    if cluster.command:
        return os.path.join(launch_dir, cluster.cwd) if cluster.cwd else launch_dir
    return launch_dir if host.sees_launch_folder else None


def program_argv(cluster: ClusterSpec, host: HostSpec, job_dir_on_host: str, attempt: int,
                 local_python: Optional[str] = None) -> tuple[str, ...]:
    """What every rank of ``host`` runs: the cluster's command, or the built-in trainer."""
    python = host_python(cluster, host, local_python)
    if cluster.command:
        first, *rest = cluster.command
        return (python if first == PYTHON_WORD else first, *rest)
    settings = os.path.join(job_dir_on_host, jobfiles.settings_file_name(attempt))
    return own_argv(python, CLI_MODULE, "train", "--config", settings)


def scheduler_argv(cluster: ClusterSpec, host: HostSpec, local_python: Optional[str] = None) -> tuple[str, ...]:
    """The dynamic cluster's scheduler: mscluster's own small program, whatever the ranks run."""
    return own_argv(host_python(cluster, host, local_python), "trainer.scheduler")


def train_settings(cluster: ClusterSpec, job_dir_on_host: str, attempt: int) -> dict[str, Any]:
    """The built-in trainer's settings for one attempt: the ``train:`` section, its folder, resume."""
    if attempt > 0:  # a restart continues from the newest good checkpoint
        return cluster.train_section(output_dir=str(job_dir_on_host), resume=train_config.RESUME_AUTO)
    return cluster.train_section(output_dir=str(job_dir_on_host))


def stall_words(w: WatchdogSpec) -> str:
    """What ``plan`` says of the stall limits that will be used."""
    first = f"{w.startup_timeout:g} s before the first step"
    if not w.auto:
        return f"a rank stalls after {w.stall_timeout:g} s without a step ({first})"
    return (f"stall_timeout auto: {first}; then {AUTO_FIRST_S:g} s per step until {AUTO_LEARN_STEPS} steps are "
            f"timed, then {AUTO_STEP_MULTIPLE:g} x the slowest step; a section (checkpoint, eval) "
            f"{AUTO_FIRST_S:g} s the first time, then {AUTO_SECTION_MULTIPLE:g} x its slowest; "
            f"each within {AUTO_FLOOR_S:g}..{AUTO_CEILING_S:g} s")


def compile_shape(cluster: ClusterSpec) -> str:
    """The compile cache's folder for this cluster: ``ranks<N>`` (and ``_k<grad_accumulation>`` for the trainer)."""
    k = f"_k{cluster.train_config.grad_accumulation}" if cluster.builtin_trainer else ""
    return f"ranks{cluster.world_size}{k}"


def backend_timeouts(cluster: ClusterSpec) -> dict[str, str]:
    """The backend's own timeouts, from the watchdog's, so the backend never waits longer than we do.

    the dynamic cluster (cpu, ascend with ``init: dynamic``): its heartbeat (``MS_NODE_TIMEOUT``, 30 s
    by default) and message wait (``MS_RECEIVE_MSG_TIMEOUT``); ascend: HCCL's collective wait (``HCCL_EXEC_TIMEOUT``, 1836 s by
    default) and link set-up (``HCCL_CONNECT_TIMEOUT``, 120 s; CANN takes 120..7200). Each is the
    watchdog's stall (or startup) timeout plus a margin, so the watchdog names the culprit first;
    a value the cluster file's ``env:`` gives wins.
    """
    if not cluster.watchdog.enabled:
        return {}
    w = cluster.watchdog
    # auto: no learned limit exceeds the ceiling, so the backend waits out the longest one
    stall = int(AUTO_CEILING_S if w.auto else w.stall_timeout) + BACKEND_MARGIN_S
    wanted = {}
    if cluster.backend is Backend.ASCEND:
        wanted = {"HCCL_EXEC_TIMEOUT": str(min(stall, 17340)),
                  "HCCL_CONNECT_TIMEOUT": str(min(max(int(cluster.watchdog.startup_timeout), 120), 7200))}
    if cluster.uses_scheduler:  # the dynamic cluster's heartbeat, on cpu and on ascend started as msrun does
        wanted.update({"MS_NODE_TIMEOUT": str(stall), "MS_RECEIVE_MSG_TIMEOUT": str(stall)})
    given = cluster.env_dict()
    return {k: v for k, v in wanted.items() if k not in given}


# -- the plan -----------------------------------------------------------------------------------

def build_job_plan(cluster: ClusterSpec, *, job_dir: str = AtLaunch.JOB_DIR,
                   scheduler_port: Optional[int] = None, attempt: int = 0, rank_table: Optional[str] = None,
                   grace_period: float = 5.0, launch_dir: Optional[str] = None,
                   local_python: Optional[str] = None,
                   cpus: Optional[Mapping[tuple[str, int], tuple[int, ...]]] = None) -> JobPlan:
    """The complete plan of one attempt of ``cluster``.

    Args:
        job_dir: the job folder (as the launcher sees it); the default is a placeholder.
        scheduler_port: cpu: the scheduler's port; None = the file's, else a placeholder.
        rank_table: ascend: the rank table's JSON text; None = a placeholder.
        launch_dir: the folder launch runs in (default: this process's).
        local_python: the interpreter of local hosts (default: this one's).
        cpus: (host, device) -> the cores of that device's rank (ascend: its NPU's CPU affinity,
            from the pre-flight); the others are split evenly by the agent (``bind_cores``).
    """
    placement = plan_ranks(cluster, scheduler_port)
    preview = job_dir is AtLaunch.JOB_DIR or (placement.scheduler is not None and placement.scheduler.port is None)
    launch_dir = launch_dir or os.getcwd()
    agents = []
    for host in cluster.hosts:
        jd = host_job_dir(host, job_dir)
        cwd = launch_folder(cluster, host, launch_dir)
        table_path = os.path.join(jd, jobfiles.RANK_TABLE_FILE) if cluster.uses_rank_table else None
        # in-memory snapshots: named from the job folder as the launcher sees it (it removes them)
        snapshots = (jobfiles.snapshot_dir(job_dir, host.address) if not preview and cluster.builtin_trainer
                     and cluster.train_config.snapshot_every_steps not in (0, None) else "")

        def launcher_env(name: str, ours: bool) -> dict[str, str]:
            env = {RESTART_COUNT_ENV: str(attempt), ERROR_FILE_ENV: jobfiles.error_file(jd, name, attempt),
                   HOST_ENV: host.address, EVENT_FD_ENV: AtLaunch.EVENT_FD, "PYTHONUNBUFFERED": "1"}
            if "MS_COMPILER_CACHE_ENABLE" not in cluster.env_dict():
                # MindSpore's graph compile cache, shared by every attempt: a restart compiles less. One folder per
                # shape: MindSpore keys a graph by its cell and input shapes, so after a shrink (another world
                # size and grad_accumulation, the same micro-batch) it would run the old shape's graph
                env.update(MS_COMPILER_CACHE_ENABLE="1",
                           MS_COMPILER_CACHE_PATH=jobfiles.compile_cache_dir(jd, compile_shape(cluster)))
            if cluster.watchdog.enabled:
                env[BEAT_INTERVAL_ENV] = f"{cluster.watchdog.beat_interval:g}"
                env[STACK_FILE_ENV] = jobfiles.faulthandler_file(jd, name, attempt)
            env.update(backend_timeouts(cluster))
            if snapshots:
                env[jobfiles.SNAPSHOT_DIR_ENV] = snapshots
            if ours and "GLOG_v" not in cluster.env_dict():
                env["GLOG_v"] = QUIET_GLOG_V  # our programs log MindSpore's errors only, unless env: says
            return env

        procs = []
        if placement.scheduler is not None and placement.scheduler.host == host.address:
            env = {**scheduler_env(placement, job_dir=jd, preview=preview), **launcher_env(jobfiles.SCHEDULER, True)}
            procs.append(ProcessSpec(jobfiles.SCHEDULER, scheduler_argv(cluster, host, local_python),
                                     tuple(sorted(env.items())), cpus=(), cwd=cwd,
                                     error_file=env[ERROR_FILE_ENV]))
        argv = program_argv(cluster, host, jd, attempt, local_python)
        for r in placement.ranks_on(host.address):
            name = jobfiles.rank_name(r.rank)
            env = {**rank_env(placement, r, job_dir=jd, rank_table_path=table_path, preview=preview),
                   **launcher_env(name, cluster.builtin_trainer)}
            bound = (cpus or {}).get((host.address, r.device_id)) if cluster.bind_cores else ()
            procs.append(ProcessSpec(name, argv, tuple(sorted(env.items())), rank=r.rank, device_id=r.device_id,
                                     cpus=bound or (None if cluster.bind_cores else ()), local_rank=r.local_rank,
                                     local_size=r.local_size, cwd=cwd, error_file=env[ERROR_FILE_ENV]))
        files = []
        if cluster.builtin_trainer:
            files.append((jobfiles.settings_file_name(attempt),
                          yaml.safe_dump(train_settings(cluster, jd, attempt), sort_keys=True)))
        if table_path is not None:
            files.append((jobfiles.RANK_TABLE_FILE, rank_table if rank_table is not None else AtLaunch.RANK_TABLE))
        agents.append(AgentSpec(host=host.address, job_dir=jd, processes=tuple(procs), files=tuple(files),
                                grace_period=grace_period, attempt=attempt, bind_cores=cluster.bind_cores,
                                keepalive_interval=cluster.ssh.keepalive_interval,
                                keepalive_count=cluster.ssh.keepalive_count, stack_tool=cluster.watchdog.stacks,
                                snapshot_dir=snapshots))
    return JobPlan(cluster=cluster, placement=placement, job_dir=job_dir, attempt=attempt, agents=tuple(agents))


# -- printing (mscluster plan) -----------------------------------------------------------------------

PLAN_WIDTH = 100  # columns: what a plan's lines fit (a single longer word, a path, stays whole)
BOOT_VAR = "BOOT"  # OWN_MODULE_BOOT is printed once, as a shell variable, and named in every argv


def format_job_plan(job: JobPlan) -> str:
    """The plan as ``mscluster plan`` prints it: the job, its ranks, each distinct argv once, the environment.

    Processes that run the same argv in the same folder share one entry ("ranks 0-15 on h1, h2"); the
    environment is printed once for what every process gets, once per process only for what differs.
    """
    cluster, placement = job.cluster, job.placement
    hosts = len(cluster.hosts)
    program = "command" if cluster.command else "built-in trainer"
    spares = len(cluster.spares)
    lines = [f"{cluster.name}: backend {cluster.backend}, {len(placement.ranks)} rank(s) on "
             f"{hosts} host{'s' if hosts != 1 else ''}"
             + (f" and {spares} spare{'s' if spares != 1 else ''}" if spares else "") + f", {program}",
             f"  cluster file: {cluster.source}"]
    lines += _job_folder_lines(job)
    lines += _training_lines(cluster, len(placement.ranks))
    if cluster.backend is Backend.ASCEND:
        lines.append("HCCL starts " + ("as msrun starts it (ascend.init: dynamic): a scheduler, MS_* variables, "
                                       "no rank table" if not cluster.uses_rank_table else
                                       f"from the rank table (ascend.init: ranktable, version "
                                       f"{cluster.ascend.rank_table_version}): RANK_TABLE_FILE"))
    unit = "npu" if cluster.backend is Backend.ASCEND else "slot"
    rows = [("rank", "host", unit, "local rank")]
    if placement.scheduler is not None:
        port = placement.scheduler.port if placement.scheduler.port is not None else AtLaunch.SCHEDULER_PORT
        rows.append(("sched", placement.scheduler.host, "-", f"port {port}"))
    for r in placement.ranks:
        rows.append((str(r.rank), r.host, str(r.device_id), f"{r.local_rank}/{r.local_size}"))
    lines.extend(format_table(rows, indent="  "))
    lines += _spare_lines(cluster, unit)

    procs = job.processes()
    lines += ["", "processes (argv, folder):"]
    lines += _process_lines(procs)
    lines += ["", "environment of every process (on top of the host's own):"]
    lines += _env_lines(procs)
    w, ssh = cluster.watchdog, cluster.ssh
    words = (f"watchdog: {stall_words(w)}; frozen after {w.frozen_after:g} s without a beat "
             f"(beats every {w.beat_interval:g} s)" if w.enabled else "watchdog: off")
    words += f"; a host is lost after {ssh.silence_limit:g} s of silence (keepalive every {ssh.keepalive_interval:g} s)"
    lines += ["", *textwrap.wrap(words, PLAN_WIDTH, subsequent_indent="  ", break_on_hyphens=False)]
    files = sorted({rel for a in job.agents for rel, _ in a.files})
    if files:
        lines += ["", "files written in the job folder of every host first: " + ", ".join(files)]
    return "\n".join(lines)


def _spare_lines(cluster: ClusterSpec, unit: str) -> list[str]:
    """The spares (``spares:``, or ``slurm.spares``' nodes): pre-flighted with the hosts, running nothing."""
    if not cluster.spares:
        return []
    rows = [("spare", f"{unit}s")] + [(h.label, _ranges(list(h.devices))) for h in cluster.spares]
    words = ("spares: pre-flighted at the start, they run nothing until one takes the place of a failed host "
             "(its ranks and device ids move there)")
    return ["", *textwrap.wrap(words, PLAN_WIDTH, subsequent_indent="  ", break_on_hyphens=False),
            *format_table(rows, indent="  ")]


def _job_folder_lines(job: JobPlan) -> list[str]:
    """Where the job folder will be: ``--job-dir``'s, or ``<workdir>/<name>-<time>`` as launch names it."""
    cluster = job.cluster
    if job.job_dir is not AtLaunch.JOB_DIR:
        folder, notes = job.job_dir, ["--job-dir"]
    else:
        folder = os.path.join(cluster.workdir, f"{cluster.name}-<time>")
        notes = [f"{AtLaunch.JOB_DIR} below", "<time>: the launch's, as YYYYmmdd-HHMMSS"]
    if not os.path.isabs(folder) and any(not h.sees_launch_folder for h in cluster.hosts):
        notes.append("under the login folder on remote hosts")
    first, notes_text = f"  job folder:   {folder}", f"({'; '.join(notes)})"
    if len(first) + 1 + len(notes_text) <= PLAN_WIDTH:
        return [f"{first} {notes_text}"]
    return [first, *textwrap.wrap(notes_text, PLAN_WIDTH, break_long_words=False,
                                  initial_indent=" " * 16, subsequent_indent=" " * 17)]


def _training_lines(cluster: ClusterSpec, ranks: int) -> list[str]:
    """The built-in trainer's epochs, lr and global batch (a command's own are its business)."""
    if not cluster.builtin_trainer:
        return []
    cfg = cluster.train_config
    schedule = cfg.lr_schedule + (f", {cfg.warmup_epochs:g} warm-up epoch(s)" if cfg.warmup_epochs else "")
    return [f"  training:     epochs {cfg.epochs}, lr {cfg.lr:g} ({schedule})",
            f"  batch:        global {cfg.batch_size * ranks * cfg.grad_accumulation} = batch_size "
            f"{cfg.batch_size} x {ranks} rank(s) x grad_accumulation {cfg.grad_accumulation}"]


def _label(specs: list[ProcessSpec]) -> str:
    if specs[0].rank is None:
        return "sched"
    return ("rank " if len(specs) == 1 else "ranks ") + _ranges([p.rank for p in specs])


def _ranges(numbers: list[int]) -> str:
    """``[0, 1, 2, 5]`` -> ``0-2,5``."""
    spans: list[list[int]] = []
    for n in sorted(numbers):
        if spans and n == spans[-1][1] + 1:
            spans[-1][1] = n
        else:
            spans.append([n, n])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)


def _hosts_text(hosts: list[str]) -> str:
    text = ", ".join(hosts)
    return text if len(hosts) <= 4 else f"{hosts[0]} .. {hosts[-1]} ({len(hosts)} hosts)"


def _process_lines(procs: list[tuple[str, ProcessSpec]]) -> list[str]:
    """Each distinct (argv, folder) once, with the processes that run it; mscluster's boot line once."""
    groups: dict[tuple, list[tuple[str, ProcessSpec]]] = {}
    for host, p in procs:  # the scheduler never shares an entry with ranks
        groups.setdefault((p.rank is None, p.argv, p.cwd), []).append((host, p))
    lines = []
    for (_, argv, cwd), members in groups.items():
        hosts = list(dict.fromkeys(host for host, _ in members))
        lines.append(f"  {_label([p for _, p in members])} on {_hosts_text(hosts)}:")
        lines.append(f"    # in {cwd if cwd is not None else '~ (the login folder)'}")
        words = [f'"${BOOT_VAR}"' if i and argv[i - 1] == "-c" and a == OWN_MODULE_BOOT else shlex.quote(a)
                 for i, a in enumerate(argv)]
        lines += _wrap_words(words, "    ", "      ")
    if any(OWN_MODULE_BOOT in p.argv for _, p in procs):
        lines.append(f"  where {BOOT_VAR} runs a module as python -m would, never a same-named file of the folder:")
        lines += _shell_assignment(BOOT_VAR, OWN_MODULE_BOOT, "    ")
    return lines


def _wrap_words(words: list[str], indent: str, more: str) -> list[str]:
    """Shell words on lines of at most PLAN_WIDTH columns, continued with `` \\``."""
    lines, line = [], indent
    for word in words:
        if line.strip() and len(line) + 1 + len(word) + 2 > PLAN_WIDTH:
            lines.append(line + " \\")
            line = more
        line += (" " if line.strip() else "") + word
    return lines + [line]


def _shell_assignment(name: str, value: str, indent: str) -> list[str]:
    """``NAME='...'`` then ``NAME+='...'`` lines, split after a ``;``: bash rebuilds the exact value."""
    room = PLAN_WIDTH - len(indent) - len(name) - 4
    parts, part = [], ""
    for piece in value.split(";"):
        candidate = f"{part};{piece}" if part else piece
        if part and len(shlex.quote(candidate + ";")) > room:
            parts.append(part + ";")
            part = piece
        else:
            part = candidate
    parts.append(part)
    return [f"{indent}{name}{'+' if i else ''}={shlex.quote(p)}" for i, p in enumerate(parts)]


def _env_lines(procs: list[tuple[str, ProcessSpec]]) -> list[str]:
    """What every process gets, per-process patterns (``<name>``), then a table of what differs."""
    envs = [(p, dict(p.env)) for _, p in procs]
    if not envs:
        return []
    common = dict(envs[0][1])
    for _, env in envs[1:]:
        common = {k: v for k, v in common.items() if env.get(k) == v}
    differ = sorted({k for _, env in envs for k in env} - set(common))
    patterns = {}
    for key in differ:  # e.g. each process's error file: '<job dir>/errors/<name>.attempt0.json'
        shapes = {str(env[key]).replace(p.name, "<name>") if key in env and p.name in str(env[key]) else None
                  for p, env in envs}
        if len(envs) > 1 and len(shapes) == 1 and None not in shapes:
            patterns[key] = shapes.pop()
    lines = [f"  {k}={_quote(v)}" for k, v in sorted({**common, **patterns}.items())]
    if patterns:
        names = [p.name for p, _ in envs]
        lines.append(f"  (<name>: each process's own: {', '.join(names[:3])}" + (" .. " + names[-1] if len(names) > 3
                                                                                else "") + ")")
    table_keys = [k for k in differ if k not in patterns]
    if len(envs) < 2 or not table_keys:
        return lines
    rows = [("process", *table_keys)]
    rows += [(_label([p]), *(_quote(env[k]) if k in env else "-" for k in table_keys)) for p, env in envs]
    table = format_table(rows, indent="  ")
    if max(len(line) for line in table) <= PLAN_WIDTH:
        return lines + ["environment per process:"] + table
    lines.append("environment per process:")
    for p, env in envs:  # too many columns for a table: each process's differences, wrapped
        own = [f"{k}={_quote(env[k])}" for k in table_keys if k in env]
        lines += _wrap_words([_label([p]).ljust(8), *own], "  ", "      ")
    return lines


def _quote(value: str) -> str:
    """A value as a shell would need it; a placeholder too (``'<job dir>'``: its text holds a space)."""
    return shlex.quote(str(value))
