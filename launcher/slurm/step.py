"""``scheduler: slurm``'s executors: Slurm's ``srun`` starts what SSH would.

- Each short command of the pre-flight and the device discovery runs as a one-task step on its node
  (`SlurmExecutor.run`).
- One agent per node starts with ONE step, ``srun --nodes=N --ntasks-per-node=1 --kill-on-bad-exit=1
  ... python -m launcher.agent`` (`AgentStep`). Each agent connects back to the launcher over TCP
  (`launcher.connect_back`) and speaks the protocol it speaks over SSH on that socket: its stdin and
  stdout. srun's own stdio carries only the agents' stderr (``--label`` says whose). Everything
  downstream (supervision, teardown, restarts, logs, status) is the SSH path's, unchanged.

A step that does not end with its agents (a frozen node) is finished with ``scancel`` of the step.
"""
from __future__ import annotations

import collections
import logging
import os
import re
import secrets
import shlex
import signal
import socket
import subprocess
import threading
import time
from typing import Deque, Mapping, Optional, Sequence

from launcher.connect_back import CONNECT_ENV, TOKEN_ENV, read_hello
from launcher.errors import HostUnreachable
from launcher.executor import BatchCallback, LineCallback, LineSplitter, RunResult, Session, kill_process_group
from launcher.slurm.allocation import Allocation
from launcher.spec import ClusterSpec, HostSpec

logger = logging.getLogger(__name__)

STEP_EXIT_WAIT_S = 10.0  # after its agents are gone, how long a step may take to end before scancel
HARMLESS = ("cluster configuration lacks support for cpu binding",)  # srun's note where TaskPlugin=task/none
_LABEL = re.compile(r"\s*(\d+): ?(.*)")  # srun --label: "<task>: line"
_TASK_EXIT = re.compile(r"srun: error: (\S+): task (\d+): (?:Exited with exit code (\d+)|(.*))")


def task_argv(node: str, argv: Sequence[str], env: Mapping[str, str], cwd: Optional[str]) -> list[str]:
    """A one-task step on ``node`` running ``argv`` with ``env`` added: srun execs it, no shell reads it."""
    words = ["srun", "--nodes=1", "--ntasks=1", f"--nodelist={node}", "--overlap", "--quiet", "--kill-on-bad-exit=1",
             "--job-name=mscluster-check"]
    if cwd is not None:
        words.append(f"--chdir={cwd}")
    if env:
        words += ["--", "env", *(f"{k}={v}" for k, v in env.items())]
    else:
        words.append("--")
    return words + list(argv)


def agent_step_argv(nodes: Sequence[str], cpus_per_task: int, argv: Sequence[str], cwd: Optional[str]) -> list[str]:
    """The one step that starts an agent on every node."""
    # --overlap: the step of an attempt that lost a node lingers (that node never reports its task's end); the
    # next attempt's step, on a spare in its place, must not wait for its cores
    words = ["srun", f"--nodes={len(nodes)}", f"--ntasks={len(nodes)}", "--ntasks-per-node=1",
             f"--nodelist={','.join(nodes)}", "--distribution=block", "--kill-on-bad-exit=1", "--label",
             "--cpu-bind=none", "--overlap", "--job-name=mscluster-agents"]
    if cpus_per_task > 1:
        words.append(f"--cpus-per-task={cpus_per_task}")  # every core the job holds there, for the ranks
    if cwd is not None:
        words.append(f"--chdir={cwd}")
    return [*words, "--", *argv]


def advertised_address(peer: str) -> str:
    """This machine's address on the route to ``peer`` (where the nodes can reach the launcher)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect((peer, 9))  # UDP: no packet is sent, the kernel only picks the route
            return probe.getsockname()[0]
        except OSError:
            return socket.gethostbyname(socket.gethostname())


# -- short commands: one step of one task --------------------------------------------------------------

class SlurmExecutor:
    """Runs commands on one node of the allocation through srun; its agent through the job's `StepGroup`."""

    def __init__(self, host: HostSpec, group: "StepGroup") -> None:
        self.host = host.address
        self.node = host.node or host.address
        self.label = host.label
        self.group = group

    def run(self, argv: Sequence[str], *, timeout: float, env: Mapping[str, str] = {},
            cwd: Optional[str] = None, input: str = "") -> RunResult:
        words = task_argv(self.node, argv, env, cwd)
        try:
            proc = subprocess.Popen(words, env=self.group.environ, stdin=subprocess.PIPE if input else subprocess.DEVNULL,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        except OSError as exc:
            raise HostUnreachable(f"node {self.label}: cannot run srun: {exc.strerror or exc}") from None
        try:
            out, err = proc.communicate(input.encode("utf-8") if input else None, timeout=timeout)
        except subprocess.TimeoutExpired:
            _stop_srun(proc)
            raise HostUnreachable(f"node {self.label}: `{shlex.join(argv)}` did not finish within {timeout:g} s "
                                  f"(srun)") from None
        text = err.decode("utf-8", "replace")
        code = proc.returncode
        if "execve():" in text and "No such file or directory" in text:
            code = 127  # as a shell reports a missing program (the executor contract)
        elif code != 0 and text.lstrip().startswith("srun: error:") and not out:
            first = text.strip().splitlines()[0]
            raise HostUnreachable(f"node {self.label}: srun could not run there: {first}")
        return RunResult(code, out.decode("utf-8", "replace"), text)

    def start(self, argv: Sequence[str], *, env: Mapping[str, str], cwd: Optional[str],
              on_stderr: Optional[LineCallback] = None, on_lines: Optional[BatchCallback] = None) -> Session:
        return self.group.start(self.node, argv, env=env, cwd=cwd, on_stderr=on_stderr, on_lines=on_lines)

    def close(self) -> None:
        self.group.close()


def _stop_srun(proc: subprocess.Popen, grace: float = 3.0) -> None:
    """srun ends its step on a second SIGINT within a second; KILL if it does not go."""
    for sig in (signal.SIGINT, signal.SIGINT):
        try:
            os.kill(proc.pid, sig)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        kill_process_group(proc.pid)
        proc.wait()


# -- the agents: one step, a connection back from every node -------------------------------------

class _StepSession(Session):
    """One node's agent: its stdin and stdout are the TCP connection it made back to the launcher;
    its stderr comes from srun's (``--label``)."""

    def __init__(self, host: str, sock: socket.socket, step: "AgentStep", node: str,
                 on_stderr: Optional[LineCallback], on_lines: Optional[BatchCallback]) -> None:
        super().__init__(host, on_stderr, on_lines)
        self._sock, self._step, self._node = sock, step, node
        self._ended = threading.Event()
        thread = threading.Thread(target=self._pump_stdout, args=(self._recv,), daemon=True, name=f"{node}-agent")
        self._threads.append(thread)
        thread.start()

    def _recv(self) -> bytes:
        return self._sock.recv(32768)

    def _end_stdout(self, splitter: LineSplitter) -> None:
        self._ended.set()
        super()._end_stdout(splitter)

    def _write(self, data: bytes) -> None:
        self._sock.sendall(data)

    def _close_stdin(self) -> None:
        self._sock.shutdown(socket.SHUT_WR)

    def _wait(self, timeout: Optional[float]) -> Optional[int]:
        if not self._ended.wait(timeout):
            return None
        return self._step.exit_code(self._node)

    def _kill(self) -> None:
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()


class AgentStep:
    """``srun`` of one agent per node; each agent's connection becomes that node's `Session`."""

    def __init__(self, nodes: Sequence[str], addresses: Mapping[str, str], argv: Sequence[str], env: Mapping[str, str],
                 cwd: Optional[str], environ: Mapping[str, str], job_id: str, cpus_per_task: int,
                 start_timeout: float) -> None:
        self.nodes, self.addresses, self.job_id = tuple(nodes), dict(addresses), job_id
        self.start_timeout = start_timeout
        self.token = secrets.token_hex(16)
        self.step_id: Optional[str] = None
        self._lock = threading.Lock()
        self._socks: dict[str, socket.socket] = {}
        self._arrived = threading.Condition(self._lock)
        self._sessions: dict[str, _StepSession] = {}
        self._stderr: dict[str, Deque[str]] = {n: collections.deque(maxlen=50) for n in self.nodes}
        self._srun_tail: Deque[str] = collections.deque(maxlen=20)
        self._task_codes: dict[str, int] = {}
        self._closed = False
        here = advertised_address(self.addresses[self.nodes[0]])
        self._listener = socket.create_server((here, 0), backlog=max(len(self.nodes), 16))
        self._listener.settimeout(0.5)
        child_env = {**environ, **env, CONNECT_ENV: f"{here}:{self._listener.getsockname()[1]}", TOKEN_ENV: self.token}
        words = agent_step_argv(self.nodes, cpus_per_task, argv, cwd)
        logger.debug("starting the agents: %s", shlex.join(words))
        self.proc = subprocess.Popen(words, env=child_env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, start_new_session=True)
        self._threads = [threading.Thread(target=self._accept, daemon=True, name="slurm-accept")]
        for stream in (self.proc.stdout, self.proc.stderr):
            self._threads.append(threading.Thread(target=self._read_srun, args=(stream,), daemon=True, name="srun-io"))
        for thread in self._threads:
            thread.start()

    # -- the nodes connecting back
    def _accept(self) -> None:
        while not self._closed and len(self._socks) < len(self.nodes):
            try:
                conn, peer = self._listener.accept()
            except socket.timeout:
                if self.proc.poll() is not None:
                    break
                continue
            except OSError:
                break
            threading.Thread(target=self._greet, args=(conn, peer), daemon=True, name="slurm-hello").start()

    def _greet(self, conn: socket.socket, peer) -> None:
        """Read the agent's hello line; keep the connection if its token and node are this step's."""
        hello = read_hello(conn, self.token)
        node = str(hello.get("node", "")) if hello is not None else ""
        with self._lock:
            if hello is None or node not in self._stderr or node in self._socks:
                logger.warning("slurm: refused a connection from %s (not this step's agent, or a second one)", peer[0])
                conn.close()
                return
            conn.settimeout(None)
            self._socks[node] = conn
            self.step_id = self.step_id or (str(hello.get("step")) if hello.get("step") else None)
            self._arrived.notify_all()

    # -- srun's own output: the agents' stderr, labelled with their task
    def _read_srun(self, stream) -> None:
        splitter = LineSplitter()
        try:
            for chunk in iter(lambda: stream.read1(32768), b""):
                for line in splitter.feed(chunk):
                    self._srun_line(line)
        except (OSError, ValueError):
            pass
        for line in splitter.finish():
            self._srun_line(line)

    def _srun_line(self, line: str) -> None:
        if any(h in line for h in HARMLESS):
            return
        node = None
        match = _LABEL.fullmatch(line)
        if match and int(match.group(1)) < len(self.nodes):
            node, line = self.nodes[int(match.group(1))], match.group(2)  # block distribution: task i on node i
        else:
            exited = _TASK_EXIT.match(line)
            if exited and exited.group(1) in self._stderr:
                node = exited.group(1)
                if exited.group(3) is not None:
                    self._task_codes[node] = int(exited.group(3))
        with self._lock:
            if node is None:
                self._srun_tail.append(line)
                logger.info("srun: %s", line)
                return
            self._stderr[node].append(line)
            session = self._sessions.get(node)
        if session is not None:
            session._emit_stderr(line)

    # -- what the executors ask
    def session(self, node: str, on_stderr: Optional[LineCallback], on_lines: Optional[BatchCallback]) -> Session:
        """The node's agent once it has connected. Raises HostUnreachable if it does not within
        ``start_timeout``, or the step ends first."""
        deadline = time.monotonic() + self.start_timeout
        with self._lock:
            while node not in self._socks:
                left = deadline - time.monotonic()
                if self.proc.poll() is not None or left <= 0 or self._closed:
                    raise HostUnreachable(self._no_agent(node, left <= 0))
                self._arrived.wait(min(left, 0.5))
            session = _StepSession(self.addresses[node], self._socks[node], self, node, on_stderr, on_lines)
            early = list(self._stderr[node])
            self._sessions[node] = session
        for line in early:  # what its agent wrote before it connected
            session._emit_stderr(line)
        return session

    def _no_agent(self, node: str, timed_out: bool) -> str:
        said = list(self._stderr[node]) or list(self._srun_tail)
        reason = said[-1] if said else ""
        if timed_out:
            why = f"no agent connected back within {self.start_timeout:g} s (slurm.start_timeout)"
        else:
            why = f"the agent step ended before its agent connected back (srun exit code {self.proc.returncode})"
        return f"node {node} ({self.addresses[node]}): {why}" + (f": {reason}" if reason else "")

    def exit_code(self, node: str) -> int:
        """The node's agent's exit code as srun reported it; 0 if srun ended without naming it; -1 unknown."""
        if node in self._task_codes:
            return self._task_codes[node]
        try:
            code = self.proc.wait(timeout=1.0)
        except subprocess.TimeoutExpired:
            return -1
        return self._task_codes.get(node, 0 if code == 0 else -1)

    def finish(self, wait: float = STEP_EXIT_WAIT_S) -> None:
        """End the step: it should end with its agents within ``wait`` seconds; else scancel it, then KILL srun."""
        self._closed = True
        with self._lock:
            self._arrived.notify_all()
            socks = list(self._socks.values())
        try:
            self.proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            target = f"{self.job_id}.{self.step_id}" if self.step_id is not None else None
            if wait > 0:
                logger.warning("slurm: the agent step did not end with its agents; cancelling it (%s)", target or "srun")
            if target is not None:
                subprocess.run(["scancel", "--quiet", target], capture_output=True, timeout=30)
                try:
                    self.proc.wait(timeout=STEP_EXIT_WAIT_S)
                except subprocess.TimeoutExpired:
                    _stop_srun(self.proc)
            else:
                _stop_srun(self.proc)
        for sock in socks:
            try:
                sock.close()
            except OSError:
                pass
        self._listener.close()
        for thread in self._threads:
            thread.join(timeout=5.0)


class StepGroup:
    """The agent steps of one launch: one per attempt, started by the attempt's first ``start``, on the
    attempt's nodes (the job's hosts; after a spare took a failed node's place, the hosts `use` names)."""

    def __init__(self, cluster: ClusterSpec, allocation: Allocation, environ: Mapping[str, str]) -> None:
        self.cluster, self.allocation = cluster, allocation
        self.environ = dict(environ)
        self._lock = threading.Lock()
        self._step: Optional[AgentStep] = None
        self._started: set[str] = set()  # nodes whose session the current step has handed out
        self._hosts: tuple[HostSpec, ...] = cluster.hosts  # the next step's, in rank order
        self._ending: list[threading.Thread] = []  # steps being cancelled while the next one runs

    def use(self, hosts: Sequence[HostSpec]) -> None:
        """The hosts the next attempt's step starts agents on: the job's, a spare in a failed one's place,
        fewer after a shrink. Raises ValueError for a node that is not the allocation's."""
        strangers = [h.label for h in hosts if (h.node or h.address) not in self.allocation.nodes]
        if strangers:
            raise ValueError(f"not nodes of Slurm job {self.allocation.job_id}: {', '.join(strangers)}")
        with self._lock:
            self._hosts = tuple(hosts)

    def start(self, node: str, argv: Sequence[str], *, env: Mapping[str, str], cwd: Optional[str],
              on_stderr: Optional[LineCallback], on_lines: Optional[BatchCallback]) -> Session:
        with self._lock:
            if self._step is None or node in self._started or node not in self._step.nodes:
                # the first start of an attempt (a node started twice, or one the last step did not hold)
                hosts = self._hosts
                nodes = [h.node or h.address for h in hosts]
                if self._step is not None:
                    self._end(self._step, left_out=set(self._step.nodes) - set(nodes))
                    self._step = None
                if node not in nodes:
                    raise HostUnreachable(f"node {node}: not one of this attempt's nodes ({', '.join(nodes)})")
                cpus = min(self.allocation.cpus[self.allocation.nodes.index(n)] for n in nodes)
                self._step = AgentStep(nodes, {h.node or h.address: h.address for h in hosts}, argv, env, cwd,
                                       self.environ, self.allocation.job_id, cpus, self.cluster.slurm.start_timeout)
                self._started = set()
            self._started.add(node)
            step = self._step
        return step.session(node, on_stderr, on_lines)

    def _end(self, step: AgentStep, left_out: set[str]) -> None:
        """End the last attempt's step. One holding a node this attempt leaves out (a lost one: it never reports
        its task's end) is cancelled at once, beside the next step (``--overlap``), not waited for."""
        if not left_out:
            step.finish()
            return
        logger.info("slurm: cancelling the last agent step (it held %s, which this attempt leaves out)",
                    ", ".join(sorted(left_out)))
        thread = threading.Thread(target=step.finish, kwargs={"wait": 0.0}, daemon=True, name="slurm-step-end")
        thread.start()
        self._ending.append(thread)

    def close(self) -> None:
        with self._lock:
            step, self._step = self._step, None
            ending, self._ending = self._ending, []
        if step is not None:
            step.finish()
        for thread in ending:
            thread.join()


def executors(cluster: ClusterSpec, allocation: Allocation, environ: Mapping[str, str]) -> dict[str, SlurmExecutor]:
    """One executor per host and per spare of an allocated cluster (`with_allocation`), sharing one `StepGroup`."""
    group = StepGroup(cluster, allocation, environ)
    return {h.address: SlurmExecutor(h, group) for h in (*cluster.hosts, *cluster.spares)}


def use_hosts(executors: Mapping[str, "SlurmExecutor"], hosts: Sequence[HostSpec]) -> None:
    """The hosts the next attempt starts agents on (`StepGroup.use`), through the executors `executors` made."""
    groups = {id(e.group): e.group for e in executors.values()}
    for group in groups.values():
        group.use(hosts)
