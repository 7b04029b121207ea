"""For programs that ``mscluster launch`` runs on every device: who am I, and tell the launcher.

Imports neither the launcher nor MindSpore, so it costs nothing at import time. Outside a launch
(a plain ``python train.py``) everything still works: ``rank_info()`` says rank 0 of 1, and the
``report*`` functions do nothing.

    from mscluster.rank import rank_info, record, report, report_eval, report_checkpoint

    @record                         # an uncaught exception lands in the launcher's failure table
    def main():
        me = rank_info()            # rank, world_size, local_rank, device_id, job_dir, ...
        for step in range(1, 101):
            loss = train_one_step()
            report(step, epoch=1, loss=loss, img_per_s=512.0)
        report_eval(1, top1=0.91)

The events travel on a pipe of their own (``MSCLUSTER_EVENT_FD``), never on stdout, in the
schema of ``mscluster.events``; a write is one ``write(2)`` of a few hundred bytes.
"""
from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import socket
import threading
import time
import traceback
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping, Optional, TypeVar

from mscluster import events, jobfiles
from mscluster.errors import RankEnvError

EVENT_FD_ENV = "MSCLUSTER_EVENT_FD"
ERROR_FILE_ENV = "MSCLUSTER_ERROR_FILE"
JOB_DIR_ENV = "MSCLUSTER_JOB_DIR"
HOST_ENV = "MSCLUSTER_HOST"
DEVICE_TARGET_ENV = "MSCLUSTER_DEVICE_TARGET"  # Ascend | CPU, set by the launcher for every process
NPU_DRIVER_NODE = "/dev/davinci_manager"  # the Ascend driver's device: present where NPUs are (pods too)
RESTART_COUNT_ENV = "MSCLUSTER_RESTART_COUNT"
BEAT_INTERVAL_ENV = "MSCLUSTER_BEAT_INTERVAL"  # seconds between liveness beats; 0 or unset: none
STACK_FILE_ENV = "MSCLUSTER_STACK_FILE"  # where faulthandler writes every thread's stack on STACK_SIGNAL
STACK_SIGNAL = signal.SIGUSR2  # USR1 is left to the program (Slurm's warning before a time limit)
PREEMPT_SIGNAL = signal.SIGUSR1  # the launcher forwards Slurm's warning before the time limit as this
PREEMPT_EXIT = 75  # exit with this after saving (EX_TEMPFAIL): the job ends "preempted", to be requeued

SINGLE = "single"                    # one process, no launcher
DYNAMIC_CLUSTER = "dynamic_cluster"  # MindSpore's scheduler + workers (MS_ROLE ...)
HCCL = "hccl"                        # Ascend with a rank table (RANK_TABLE_FILE)


@dataclass(frozen=True)
class RankInfo:
    """This process's place in the job, as its environment says."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_size: int = 1  # ranks on this host (LOCAL_SIZE)
    device_id: int = 0
    host: str = ""
    backend: str = SINGLE  # single | dynamic_cluster | hccl
    job_dir: Optional[str] = None
    checkpoint_dir: Optional[str] = None  # <job>/checkpoints: where rank 0 keeps checkpoints
    restart_count: int = 0  # 0 in the first attempt, k after the k-th automatic restart
    is_scheduler: bool = False  # the dynamic cluster's scheduler process (not a rank)
    device_target: str = "CPU"  # MindSpore's: Ascend (a rank table, or NPUs here) or CPU

    @property
    def distributed(self) -> bool:
        return self.backend != SINGLE


def _device_target(env: Mapping[str, str]) -> str:
    """Ascend with a rank table; else what the launcher says; else Ascend where the NPU driver is
    (a pod that Huawei's ascend-operator started, msrun's own job), CPU elsewhere."""
    if env.get("RANK_TABLE_FILE"):
        return "Ascend"
    given = env.get(DEVICE_TARGET_ENV, "")
    if given:
        if given not in ("Ascend", "CPU"):
            raise RankEnvError(f"environment: {DEVICE_TARGET_ENV}={given!r} is neither Ascend nor CPU")
        return given
    return "Ascend" if os.path.exists(NPU_DRIVER_NODE) else "CPU"


def env_int(environ: Mapping[str, str], name: str, default: Optional[int] = None) -> int:
    """An integer >= 0 from ``environ[name]``, or ``default`` when unset. Raises RankEnvError."""
    raw = environ.get(name)
    if raw is None or raw == "":
        if default is None:
            raise RankEnvError(f"environment: {name} is not set")
        return default
    try:
        value = int(raw)
    except ValueError:
        raise RankEnvError(f"environment: {name}={raw!r} is not an integer") from None
    if value < 0:
        raise RankEnvError(f"environment: {name}={raw!r} must be >= 0")
    return value


def rank_info(environ: Optional[Mapping[str, str]] = None) -> RankInfo:
    """This process's ``RankInfo``, read from ``environ`` (default: ``os.environ``).

    Three cases, decided by the environment alone: ``RANK_TABLE_FILE`` set, Ascend with HCCL
    (``RANK_ID``, ``RANK_SIZE``, ``DEVICE_ID``); ``MS_ROLE`` set, MindSpore's dynamic cluster
    (``MS_WORKER_NUM``, ``MS_NODE_ID``); neither, one process, rank 0 of 1. What Huawei's
    ascend-operator injects into a MindSpore pod is read too: without ``MS_NODE_ID`` the rank is
    ``MS_NODE_RANK x MS_LOCAL_WORKER + LOCAL_RANK``, and ``MS_LOCAL_WORKER`` is the host's rank count
    (``mscluster.pod`` starts one process per NPU of such a pod). ``DEVICE_ID`` defaults to the
    local rank, as msrun sets it.

    Raises:
        RankEnvError: a variable is not an integer, or a rank is out of range.
    """
    env = os.environ if environ is None else environ
    if environ is None:
        _channel.start_beats()  # a rank that asks who it is is watched from now on (see report)
    job_dir = env.get(JOB_DIR_ENV) or None
    common: dict[str, Any] = {
        "host": env.get(HOST_ENV) or socket.gethostname(),
        "job_dir": job_dir,
        "checkpoint_dir": jobfiles.checkpoints_dir(job_dir) if job_dir else None,
        "restart_count": env_int(env, RESTART_COUNT_ENV, 0),
        "local_rank": env_int(env, "LOCAL_RANK", 0),
        "local_size": max(env_int(env, "LOCAL_SIZE", env_int(env, "MS_LOCAL_WORKER", 1)), 1),
        "device_target": _device_target(env),
    }
    device_id = env_int(env, "DEVICE_ID", common["local_rank"])
    if env.get("RANK_TABLE_FILE"):
        size, rank = env_int(env, "RANK_SIZE"), env_int(env, "RANK_ID")
        if rank >= size:
            raise RankEnvError(f"environment: RANK_ID={rank} must be < RANK_SIZE={size}")
        return RankInfo(rank=rank, world_size=size, device_id=device_id, backend=HCCL, **common)
    role = env.get("MS_ROLE")
    if role:
        size = env_int(env, "MS_WORKER_NUM")
        if role == "MS_SCHED":
            return RankInfo(world_size=size, backend=DYNAMIC_CLUSTER, is_scheduler=True, **common)
        if role != "MS_WORKER":
            raise RankEnvError(f"environment: MS_ROLE={role!r} is neither MS_SCHED nor MS_WORKER")
        if env.get("MS_NODE_ID") or not env.get("MS_NODE_RANK"):
            rank = env_int(env, "MS_NODE_ID", env_int(env, "RANK_ID", 0))
        else:  # ascend-operator: the pod's node rank and its local workers
            rank = env_int(env, "MS_NODE_RANK") * common["local_size"] + common["local_rank"]
        if rank >= size:
            raise RankEnvError(f"environment: rank {rank} (MS_NODE_ID, or MS_NODE_RANK x MS_LOCAL_WORKER + "
                               f"LOCAL_RANK) must be < MS_WORKER_NUM={size}")
        return RankInfo(rank=rank, world_size=size, device_id=device_id, backend=DYNAMIC_CLUSTER, **common)
    return RankInfo(**common)


# -- the error file ------------------------------------------------------------------------------

def write_error_file(exc: BaseException, exit_code: int = 1,
                     environ: Optional[Mapping[str, str]] = None) -> Optional[str]:
    """Write ``exc`` (type, message, traceback, time) as JSON to ``MSCLUSTER_ERROR_FILE``, if set.

    The launcher's failure table shows its message and the tail of its traceback (torchelastic's
    error file). Returns the path written, or None.
    """
    env = os.environ if environ is None else environ
    path = env.get(ERROR_FILE_ENV)
    if not path:
        return None
    record_ = {
        "type": type(exc).__name__,
        "message": f"{type(exc).__name__}: {exc}",
        "traceback": "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)),
        "timestamp": time.time(),
        "pid": os.getpid(),
        "exit_code": exit_code,
    }
    try:
        from mscluster.fsutil import write_atomic

        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        write_atomic(path, json.dumps(record_), mode=0o600)
    except OSError:
        return None
    return path


F = TypeVar("F", bound=Callable[..., Any])


def record(fn: F) -> F:
    """Decorate a rank's entry point: an uncaught exception writes the error file, then propagates.

    ``SystemExit`` with code 0 or None and ``KeyboardInterrupt`` are not failures and write nothing.
    When it returns, the launcher is told the rank finished (``report_finished``): a crash after that,
    in the interpreter's or MindSpore's teardown, does not fail the job.
    """
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            result = fn(*args, **kwargs)
            report_finished()
            return result
        except SystemExit as exc:
            if exc.code not in (0, None):
                write_error_file(exc, exc.code if isinstance(exc.code, int) else 1)
            raise
        except KeyboardInterrupt:
            raise
        except BaseException as exc:
            code = getattr(exc, "exit_code", 1)  # mscluster's own errors carry theirs (2: bad input)
            write_error_file(exc, code if isinstance(code, int) else 1)
            raise
    return wrapper  # type: ignore[return-value]


# -- the event channel ---------------------------------------------------------------------------

class _Channel:
    """The write end of this process's event pipe; silent when there is none (not under a launch)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._fd: Optional[int] = None
        self._pid: Optional[int] = None
        self._dead = False
        self._beating: Optional[int] = None  # the pid for which beats were decided (and started, if asked)

    def _open(self) -> Optional[int]:
        if self._pid != os.getpid():  # first use, or a forked child: look again
            self._pid, self._fd, self._dead = os.getpid(), None, False
            raw = os.environ.get(EVENT_FD_ENV, "")
            if raw.isdigit():
                fd = int(raw)
                try:
                    os.fstat(fd)
                    os.set_inheritable(fd, False)  # programs this rank starts do not hold the pipe
                    self._fd = fd
                except OSError:
                    self._dead = True
            else:
                self._dead = True
        return None if self._dead else self._fd

    def start_beats(self) -> None:
        """Start the liveness thread once per process (when the launcher asked for beats)."""
        with self._lock:
            if self._beating == os.getpid():  # decided for this process already
                return
            self._beating = os.getpid()
            if self._open() is None:
                return
            try:
                interval = float(os.environ.get(BEAT_INTERVAL_ENV, "0"))
            except ValueError:
                interval = 0.0
            if not (interval > 0 and interval < 3600):
                return
        _register_stack_dump()
        thread = threading.Thread(target=self._beat, args=(interval,), name="mscluster-beat", daemon=True)
        thread.start()
        self.send(events.Beat(time=time.time()))

    def _beat(self, interval: float) -> None:
        while not self._dead:
            time.sleep(interval)
            self.send(events.Beat(time=time.time()))

    def send(self, event: events.RankEvent) -> None:
        if self._beating != os.getpid() and not isinstance(event, events.Beat):
            self.start_beats()
        data = (events.encode(event) + "\n").encode("utf-8")
        with self._lock:
            fd = self._open()
            if fd is None:
                return
            try:
                while data:
                    data = data[os.write(fd, data):]
            except OSError:  # the agent is gone (the job is being stopped): nothing to tell anyone
                self._dead = True


_stack_file = None  # kept open for faulthandler, which writes to its descriptor from a signal handler


def _register_stack_dump() -> None:
    """SIGUSR2 makes faulthandler write every thread's Python stack to ``MSCLUSTER_STACK_FILE``:
    the watchdog's way to a stack where py-spy may not attach (no ptrace)."""
    global _stack_file
    path = os.environ.get(STACK_FILE_ENV)
    if not path or _stack_file is not None:
        return
    try:
        import faulthandler

        os.makedirs(os.path.dirname(path) or ".", mode=0o700, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        _stack_file = os.fdopen(fd, "a")
        faulthandler.register(STACK_SIGNAL, file=_stack_file, all_threads=True, chain=False)
    except (OSError, ValueError, RuntimeError):
        _stack_file = None


_channel = _Channel()
_preempted = threading.Event()


def watch_preemption() -> None:
    """From now on SIGUSR1 (``launch`` forwards Slurm's warning before the time limit) does not
    kill this process but sets `preempt_requested`: save a checkpoint, then ``sys.exit(PREEMPT_EXIT)``.

    Call it from the main thread. Without it, SIGUSR1's default action ends the process.
    """
    signal.signal(PREEMPT_SIGNAL, lambda signum, frame: _preempted.set())


def preempt_requested() -> bool:
    """Whether SIGUSR1 arrived since `watch_preemption`: the job is about to be stopped."""
    return _preempted.is_set()


def report(step: int, *, epoch: Optional[int] = None, loss: Optional[float] = None, **scalars: float) -> None:
    """Tell the launcher that step ``step`` is done (``mscluster status``, ``status.json``, the watchdog).

    The first call (or ``rank_info()``) also starts a thread that sends a liveness beat every
    ``MSCLUSTER_BEAT_INTERVAL`` seconds: the launcher's watchdog then tells a process whose
    training is stuck (beats, no steps) from one that is frozen (neither).

    Args:
        step: the program's step count, >= 0 (the built-in trainer: the global optimizer step).
        epoch: the epoch the step belongs to, if the program has epochs.
        loss: the step's loss.
        scalars: any other numbers worth showing (``img_per_s=...``, ``lr=...``).
    """
    _channel.send(events.Progress(step=int(step), time=time.time(), epoch=None if epoch is None else int(epoch),
                                  loss=None if loss is None else float(loss),
                                  scalars={k: float(v) for k, v in scalars.items()}))


def report_eval(epoch: int, **metrics: float) -> None:
    """Tell the launcher an evaluation's results (``top1=0.91, loss=0.3``); the job's last one is kept."""
    _channel.send(events.Eval(epoch=int(epoch), time=time.time(), metrics={k: float(v) for k, v in metrics.items()}))


def report_finished() -> None:
    """Tell the launcher this rank's work is done (``record`` does it when the entry point returns):
    an exit by a signal or a non-zero code after it (a crash in a framework's teardown at exit) is
    then a warning, not the job's failure."""
    _channel.send(events.Finished(time=time.time()))


def report_checkpoint(path: str, step: int) -> None:
    """Tell the launcher that a complete checkpoint of step ``step`` is at ``path``."""
    _channel.send(events.Checkpoint(path=str(path), step=int(step), time=time.time()))


@contextlib.contextmanager
def section(name: str) -> Iterator[None]:
    """Tell the launcher's watchdog that the work inside is the section ``name`` (e.g. ``"checkpoint"``,
    ``"eval"``, ``"data"``): with ``stall_timeout: auto`` each section gets its own timeout, learned
    from how long it took before (the first time: a generous one), so a long save is not a stall.

        with mscluster.rank.section("checkpoint"):
            save(...)

    Sections do not nest: an inner one ends the outer one's timing. Outside a launch it does nothing.
    """
    if not isinstance(name, str) or not _SECTION_NAME.fullmatch(name) or name in events.RESERVED_SECTIONS:
        raise ValueError(f"section name: letters, digits, _ . / - (up to 64, not {' or '.join(events.RESERVED_SECTIONS)}), "
                         f"got {name!r}")
    _channel.send(events.Section(name=name, time=time.time()))
    try:
        yield
    finally:
        _channel.send(events.Section(name=name, time=time.time(), end=True))


_SECTION_NAME = events.NAME
