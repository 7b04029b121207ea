"""``scheduler: slurm``: the allocation's nodes are the hosts, and Slurm's ``srun`` starts what SSH would.

Inside an allocation (``salloc``, or the batch script ``mscluster submit`` writes) the launcher

- reads the nodes from ``SLURM_JOB_NODELIST`` (``scontrol show hostnames``) and their addresses
  from Slurm itself (``scontrol show node``'s NodeAddr, resolved where it is a name): `read_allocation`;
- runs each short command of the pre-flight and the device discovery as a one-task step on its
  node (`SlurmExecutor.run`);
- starts one agent per node with ONE step, ``srun --nodes=N --ntasks-per-node=1
  --kill-on-bad-exit=1 ... python -m launcher.agent`` (`AgentStep`). Each agent connects back to
  the launcher over TCP (address, port and a one-time token in its environment) and speaks the
  protocol it speaks over SSH on that socket: its stdin and stdout. srun's own stdio carries only
  the agents' stderr (``--label`` says whose). Everything downstream (supervision, teardown,
  restarts, logs, status) is the SSH path's, unchanged.

A step that does not end with its agents (a frozen node) is finished with ``scancel`` of the step.
The sbatch script and the job states for ``submit``, ``status`` and ``cancel`` are here too.
"""
from __future__ import annotations

import collections
import dataclasses
import hmac
import json
import logging
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from typing import Deque, Mapping, Optional, Sequence

from launcher.errors import HostUnreachable, LauncherError
from launcher.executor import BatchCallback, LineCallback, RunResult, Session, _LineSplitter, kill_process_group
from launcher.spec import DEFAULT_DEVICES_PER_HOST, ClusterSpec, HostSpec, is_ipv4

logger = logging.getLogger(__name__)

CONNECT_ENV = "MSCLUSTER_AGENT_CONNECT"  # host:port the agent connects back to
TOKEN_ENV = "MSCLUSTER_AGENT_TOKEN"  # proves the connection is this step's agent
SLURM_JOB_FILE = "slurm.json"  # <job>/slurm.json: the Slurm job id submit got
SBATCH_SCRIPT = "sbatch.sh"
STEP_EXIT_WAIT_S = 10.0  # after its agents are gone, how long a step may take to end before scancel
HELLO_TIMEOUT_S = 10.0
HARMLESS = ("cluster configuration lacks support for cpu binding",)  # srun's note where TaskPlugin=task/none
_LABEL = re.compile(r"\s*(\d+): ?(.*)")  # srun --label: "<task>: line"
_TASK_EXIT = re.compile(r"srun: error: (\S+): task (\d+): (?:Exited with exit code (\d+)|(.*))")
_CPUS = re.compile(r"(\d+)(?:\(x(\d+)\))?")


class SlurmError(LauncherError):
    """Not inside an allocation, an allocation too small, a Slurm tool missing or failing."""


@dataclass(frozen=True)
class Allocation:
    """The Slurm job the launcher runs in: its id and nodes (in Slurm's order), with addresses and cores."""

    job_id: str
    nodes: tuple[str, ...]
    addresses: tuple[str, ...]
    cpus: tuple[int, ...]  # cores the job holds on each node


# -- pure helpers ----------------------------------------------------------------------------------

def expand_cpus_per_node(text: str) -> list[int]:
    """``SLURM_JOB_CPUS_PER_NODE`` (``"2(x3),1"``) -> ``[2, 2, 2, 1]``."""
    counts: list[int] = []
    for part in filter(None, text.strip().split(",")):
        match = _CPUS.fullmatch(part.strip())
        if not match:
            raise ValueError(f"not a SLURM_JOB_CPUS_PER_NODE list: {text!r}")
        counts += [int(match.group(1))] * int(match.group(2) or 1)
    return counts


def parse_show_node(text: str) -> dict[str, str]:
    """``scontrol -o show node`` (one node a line) -> {NodeName: NodeAddr}."""
    addresses = {}
    for line in text.splitlines():
        fields = dict(word.split("=", 1) for word in line.split() if "=" in word)
        if "NodeName" in fields:
            addresses[fields["NodeName"]] = fields.get("NodeAddr", fields["NodeName"])
    return addresses


def parse_show_job(text: str) -> dict[str, str]:
    """``scontrol -o show job ID`` -> its fields (JobState, Reason, NodeList, RunTime, ...)."""
    fields: dict[str, str] = {}
    for word in text.split():
        if "=" in word:
            key, value = word.split("=", 1)
            fields.setdefault(key, value)
    return fields


def resolve_address(node: str, addr: str) -> str:
    """A node's IPv4 address: NodeAddr itself, or what it resolves to."""
    if is_ipv4(addr):
        return addr
    try:
        return socket.gethostbyname(addr)
    except OSError:
        raise SlurmError(f"Slurm node {node}: cannot resolve its address {addr!r} (NodeAddr) on this machine") from None


def with_allocation(cluster: ClusterSpec, allocation: Allocation) -> ClusterSpec:
    """The cluster with its hosts taken from the allocation: the first ``slurm.nodes`` nodes (all, if unset).

    Raises:
        SlurmError: the allocation has fewer nodes than the file asks for, or too few ranks for ``console:``.
    """
    wanted = cluster.slurm.nodes or len(allocation.nodes)
    have = len(allocation.nodes)
    if have < wanted:
        listed = ", ".join(allocation.nodes[:8]) + (", ..." if have > 8 else "")
        raise SlurmError(f"Slurm job {allocation.job_id} has {have} node{'s' if have != 1 else ''} ({listed}), but "
                         f"{cluster.source} asks for slurm.nodes: {wanted}: allocate {wanted} (salloc -N{wanted}) "
                         f"or lower slurm.nodes")
    per_host = cluster.slurm.devices_per_host or DEFAULT_DEVICES_PER_HOST[cluster.backend]
    hosts = tuple(HostSpec(address=address, devices=tuple(range(per_host)), node=node)
                  for node, address in zip(allocation.nodes[:wanted], allocation.addresses[:wanted]))
    world = wanted * per_host
    too_high = [r for r in cluster.console or () if r >= world]
    if too_high:
        raise SlurmError(f"{cluster.source}: console: rank {too_high[0]} does not exist: the allocation gives "
                         f"{world} rank(s) ({wanted} node(s) x {per_host})")
    return dataclasses.replace(cluster, hosts=hosts)


def placeholder_allocation(cluster: ClusterSpec) -> Allocation:
    """For ``plan`` outside an allocation: ``slurm.nodes`` (else 1) nodes named node1.., at
    addresses of the documentation range 192.0.2.0/24 (RFC 5737)."""
    count = cluster.slurm.nodes or 1
    return Allocation(job_id="<job id>", nodes=tuple(f"node{i + 1}" for i in range(count)),
                      addresses=tuple(f"192.0.2.{i + 1}" for i in range(count)), cpus=(0,) * count)


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
    words = ["srun", f"--nodes={len(nodes)}", f"--ntasks={len(nodes)}", "--ntasks-per-node=1",
             f"--nodelist={','.join(nodes)}", "--distribution=block", "--kill-on-bad-exit=1", "--label",
             "--cpu-bind=none", "--job-name=mscluster-agents"]
    if cpus_per_task > 1:
        words.append(f"--cpus-per-task={cpus_per_task}")  # every core the job holds there, for the ranks
    if cwd is not None:
        words.append(f"--chdir={cwd}")
    return [*words, "--", *argv]


# -- the allocation --------------------------------------------------------------------------------

def require_tool(name: str, environ: Mapping[str, str]) -> str:
    path = shutil.which(name, path=environ.get("PATH"))
    if path is None:
        raise SlurmError(f"{name} not found on PATH: scheduler: slurm needs Slurm's client tools "
                         f"(srun, scontrol; sbatch for submit) on this machine")
    return path


def _scontrol(args: Sequence[str], environ: Mapping[str, str], what: str) -> str:
    try:
        done = subprocess.run(["scontrol", *args], env=dict(environ), capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SlurmError(f"scontrol {' '.join(args)}: {exc}") from None
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]
        raise SlurmError(f"cannot read {what} from Slurm (scontrol {' '.join(args)}): {last}")
    return done.stdout


def read_allocation(environ: Mapping[str, str]) -> Allocation:
    """The allocation this process runs in.

    Raises:
        SlurmError: not inside an allocation, srun or scontrol missing, or Slurm does not answer.
    """
    job_id = environ.get("SLURM_JOB_ID") or environ.get("SLURM_JOBID")
    if not job_id:
        raise SlurmError("not inside a Slurm allocation (SLURM_JOB_ID is not set): run it under salloc "
                         "(salloc -N2 mscluster launch ...) or submit it with mscluster submit")
    nodelist = environ.get("SLURM_JOB_NODELIST") or environ.get("SLURM_NODELIST")
    if not nodelist:
        raise SlurmError(f"Slurm job {job_id}: SLURM_JOB_NODELIST is not set: not a job allocation's environment")
    require_tool("srun", environ)
    require_tool("scontrol", environ)
    nodes = tuple(_scontrol(["show", "hostnames", nodelist], environ, "the job's nodes").split())
    if not nodes:
        raise SlurmError(f"Slurm job {job_id}: no nodes in SLURM_JOB_NODELIST={nodelist!r}")
    addrs = parse_show_node(_scontrol(["-o", "show", "node", nodelist], environ, "the nodes' addresses"))
    addresses = tuple(resolve_address(n, addrs.get(n, n)) for n in nodes)
    try:
        cpus = expand_cpus_per_node(environ.get("SLURM_JOB_CPUS_PER_NODE", ""))
    except ValueError:
        cpus = []
    if len(cpus) != len(nodes):
        cpus = [1] * len(nodes)
    return Allocation(job_id=job_id, nodes=nodes, addresses=addresses, cpus=tuple(cpus))


def allocate(cluster: ClusterSpec, environ: Mapping[str, str]) -> tuple[ClusterSpec, Allocation]:
    """The cluster with the hosts of the allocation this process runs in, and that allocation.

    Raises:
        SlurmError: as `read_allocation` and `with_allocation` do.
    """
    allocation = read_allocation(environ)
    return with_allocation(cluster, allocation), allocation


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

    def _end_stdout(self, splitter: _LineSplitter) -> None:
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
        conn.settimeout(HELLO_TIMEOUT_S)
        data = b""
        try:
            while not data.endswith(b"\n") and len(data) < 4096:
                chunk = conn.recv(1)  # byte by byte: nothing after the hello may be consumed here
                if not chunk:
                    break
                data += chunk
            hello = json.loads(data.decode("utf-8"))
            ok = isinstance(hello, dict) and hmac.compare_digest(str(hello.get("token", "")), self.token)
            node = str(hello.get("node", "")) if ok else ""
        except (OSError, ValueError, UnicodeDecodeError):
            ok, node, hello = False, "", {}
        with self._lock:
            if not ok or node not in self._stderr or node in self._socks:
                logger.warning("slurm: refused a connection from %s (not this step's agent, or a second one)", peer[0])
                conn.close()
                return
            conn.settimeout(None)
            self._socks[node] = conn
            self.step_id = self.step_id or (str(hello.get("step")) if hello.get("step") else None)
            self._arrived.notify_all()

    # -- srun's own output: the agents' stderr, labelled with their task
    def _read_srun(self, stream) -> None:
        splitter = _LineSplitter()
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

    def finish(self) -> None:
        """End the step: it should end with its agents; else scancel it, then KILL srun."""
        self._closed = True
        with self._lock:
            self._arrived.notify_all()
            socks = list(self._socks.values())
        try:
            self.proc.wait(timeout=STEP_EXIT_WAIT_S)
        except subprocess.TimeoutExpired:
            target = f"{self.job_id}.{self.step_id}" if self.step_id is not None else None
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
    """The agent steps of one launch: one per attempt, started by the attempt's first ``start``."""

    def __init__(self, cluster: ClusterSpec, allocation: Allocation, environ: Mapping[str, str]) -> None:
        self.cluster, self.allocation = cluster, allocation
        self.environ = dict(environ)
        self._lock = threading.Lock()
        self._step: Optional[AgentStep] = None
        self._started: set[str] = set()  # nodes whose session the current step has handed out

    def start(self, node: str, argv: Sequence[str], *, env: Mapping[str, str], cwd: Optional[str],
              on_stderr: Optional[LineCallback], on_lines: Optional[BatchCallback]) -> Session:
        with self._lock:
            if self._step is None or node in self._started:  # a node started twice: the next attempt
                if self._step is not None:
                    self._step.finish()
                hosts = self.cluster.hosts
                nodes = [h.node or h.address for h in hosts]
                cpus = min(self.allocation.cpus[self.allocation.nodes.index(n)] for n in nodes)
                self._step = AgentStep(nodes, {h.node or h.address: h.address for h in hosts}, argv, env, cwd,
                                       self.environ, self.allocation.job_id, cpus, self.cluster.slurm.start_timeout)
                self._started = set()
            self._started.add(node)
            step = self._step
        return step.session(node, on_stderr, on_lines)

    def close(self) -> None:
        with self._lock:
            step, self._step = self._step, None
        if step is not None:
            step.finish()


def executors(cluster: ClusterSpec, allocation: Allocation, environ: Mapping[str, str]) -> dict[str, SlurmExecutor]:
    """One executor per host of an allocated cluster (`with_allocation`), sharing one `StepGroup`."""
    group = StepGroup(cluster, allocation, environ)
    return {h.address: SlurmExecutor(h, group) for h in cluster.hosts}


# -- the agent's side -----------------------------------------------------------------------------

def connect_back(environ: Mapping[str, str], timeout: float = 30.0) -> Optional[socket.socket]:
    """In an agent started by `AgentStep`: the connection to the launcher, hello sent; None otherwise.

    Raises:
        OSError: the launcher cannot be reached within ``timeout``.
    """
    target = environ.get(CONNECT_ENV)
    if not target:
        return None
    host, _, port = target.rpartition(":")
    deadline = time.monotonic() + timeout
    while True:
        try:
            sock = socket.create_connection((host, int(port)), timeout=5.0)
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    sock.settimeout(None)
    step = environ.get("SLURM_STEP_ID")
    hello = {"token": environ.get(TOKEN_ENV, ""), "node": environ.get("SLURMD_NODENAME", ""),
             "task": environ.get("SLURM_PROCID"), "step": step}
    sock.sendall((json.dumps(hello) + "\n").encode("utf-8"))
    return sock


# -- sbatch, status, cancel -----------------------------------------------------------------------

def sbatch_script(cluster: ClusterSpec, job_dir: str, launch_argv: Sequence[str], launch_dir: str) -> str:
    """The batch script ``mscluster submit`` writes to ``<job>/sbatch.sh``: Slurm's options from the
    ``slurm:`` section, then ``mscluster launch`` of the job folder, exec'd: the batch shell becomes the
    launcher, so Slurm's warning signal (``--signal=B:USR1@s``) and scancel's TERM reach it directly."""
    s = cluster.slurm
    nodes = s.nodes or 1
    options = [f"--job-name={cluster.name}", f"--nodes={nodes}", "--ntasks-per-node=1",
               f"--output={os.path.join(job_dir, 'logs', 'slurm-%j.out')}", "--open-mode=append",
               f"--chdir={launch_dir}", f"--signal=B:USR1@{s.warning_s}", "--requeue" if s.requeue else "--no-requeue"]
    if s.exclusive:
        options.append("--exclusive")
    for key in ("partition", "account", "time"):
        value = getattr(s, key)
        if value is not None:
            options.append(f"--{key}={value}")
    options += list(s.sbatch_options)
    lines = ["#!/bin/bash",
             f"# Written by `mscluster submit` for job {cluster.name}: Slurm runs it on the first node of the",
             "# allocation; it runs `mscluster launch` there, which starts one agent per node with srun.",
             *(f"#SBATCH {shlex.quote(o)}" for o in options),
             "set -eu",
             'echo "mscluster: Slurm job ${SLURM_JOB_ID} (restart ${SLURM_RESTART_COUNT:-0}) on ${SLURM_JOB_NODELIST}"',
             "exec " + shlex.join(launch_argv), ""]
    return "\n".join(lines)


def parse_sbatch_id(stdout: str) -> Optional[str]:
    """``sbatch --parsable`` prints ``<id>`` or ``<id>;<cluster>``."""
    text = stdout.strip().splitlines()[-1] if stdout.strip() else ""
    job_id = text.split(";", 1)[0]
    return job_id if job_id.isdigit() else None


def read_job_id(job_dir: str) -> Optional[str]:
    """The Slurm job id ``submit`` recorded in the job folder, or None."""
    try:
        with open(os.path.join(job_dir, SLURM_JOB_FILE), encoding="utf-8") as handle:
            value = json.load(handle).get("job_id")
    except (OSError, ValueError, AttributeError):
        return None
    return str(value) if value is not None and str(value).isdigit() else None


def job_state(job_id: str, environ: Mapping[str, str]) -> tuple[str, str]:
    """(state, reason) of a Slurm job: from squeue while Slurm lists it, else ``scontrol show job``;
    ("UNKNOWN", why) when Slurm no longer knows it or does not answer."""
    try:
        out = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T|%r"], env=dict(environ), capture_output=True, text=True,
                  timeout=20)
        if out.returncode == 0 and out.stdout.strip():
            state, _, reason = out.stdout.strip().splitlines()[0].partition("|")
            return state, "" if reason in ("None", "(null)") else reason
        out = subprocess.run(["scontrol", "-o", "show", "job", job_id], env=dict(environ), capture_output=True, text=True,
                  timeout=20)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return "UNKNOWN", f"Slurm did not answer ({exc})"
    if out.returncode != 0:
        return "UNKNOWN", (out.stderr.strip().splitlines() or ["Slurm no longer knows the job"])[-1]
    fields = parse_show_job(out.stdout)
    reason = fields.get("Reason", "")
    return fields.get("JobState", "UNKNOWN"), "" if reason in ("None", "(null)") else reason
