"""Several test "hosts" on one machine: network namespaces on a private bridge, an sshd in each.

``netns_lab(workdir, count=2)`` builds, in the root namespace, a bridge with address
``10.213.X.1/24`` (X chosen so that no existing address or route of this machine overlaps it) and,
for each host, a namespace with a veth pair onto the bridge, address ``10.213.X.(2+i)``, loopback
up, and a private sshd listening on that address (all hosts accept the same user key). Every host
reaches every other one and the root namespace over the bridge; nothing is routed anywhere else.
The filesystem is shared, so the same venv python serves all hosts.

Everything (sshd processes by pid, namespaces, veths, bridge) is removed on exit, also when the
body raises. Needs root, iproute2 and openssh-server; skips, or fails under CI, without them.
"""
from __future__ import annotations

import contextlib
import dataclasses
import getpass
import ipaddress
import json
import os
import random
import shutil
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, List, Optional, Sequence

import psutil

import pytest

from launcher.spec import SSHSpec
from helpers import free_port
from sshd_util import SSHD, SSHServer, keygen, require_sshd, skip_or_fail, sshd_config, stop_process_tree, wait_listening

SUBNET_BASE = "10.213"  # only our own bridge carries addresses from it


def require_netns() -> None:
    """Skip (or fail under CI) unless we are root with iproute2, sshd and network namespaces."""
    require_sshd()
    if shutil.which("ip") is None:
        skip_or_fail("ip (iproute2) missing: run scripts/ci_system_deps.sh as root")
    probe = f"msprobe{uuid.uuid4().hex[:6]}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        skip_or_fail(f"cannot create network namespaces here: {made.stderr.strip()}")
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")


def _ip_quiet(*args: str) -> None:
    subprocess.run(["ip", *args], capture_output=True, timeout=30)


def _used_networks() -> List[ipaddress.IPv4Network]:
    nets = []
    for cmd in (["ip", "-4", "-o", "addr", "show"], ["ip", "-4", "route", "show", "table", "all"]):
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout
        for word in out.split():
            if word[:1].isdigit():
                with contextlib.suppress(ValueError):
                    nets.append(ipaddress.ip_network(word, strict=False))
    return [n for n in nets if isinstance(n, ipaddress.IPv4Network) and n.prefixlen > 0]


def pick_subnet() -> ipaddress.IPv4Network:
    """A 10.213.X.0/24 that overlaps no address or route of this machine (default route aside)."""
    used = _used_networks()
    candidates = list(range(1, 255))
    random.shuffle(candidates)
    for x in candidates:
        net = ipaddress.ip_network(f"{SUBNET_BASE}.{x}.0/24")
        if not any(net.overlaps(u) for u in used):
            return net
    raise RuntimeError(f"no free /24 in {SUBNET_BASE}.0.0/16")


@dataclass(frozen=True)
class NetnsHost:
    """One namespace "host": its namespace name, its address and its sshd."""

    netns: str
    address: str
    sshd: SSHServer

    def exec_argv(self, *argv: str) -> List[str]:
        """argv that runs ``argv`` inside this host's namespace (from the root namespace)."""
        return ["ip", "netns", "exec", self.netns, *argv]

    def set_link(self, up: bool) -> None:
        """Plug or unplug the host's network card (the namespace's end of its veth pair)."""
        out = subprocess.run(["ip", "-n", self.netns, "-o", "link", "show"], capture_output=True, text=True,
                             check=True).stdout
        link = next(line.split(":")[1].strip().split("@")[0] for line in out.splitlines()
                    if line.split(":")[1].strip() != "lo")
        subprocess.run(["ip", "-n", self.netns, "link", "set", link, "up" if up else "down"], check=True)


@dataclass(frozen=True)
class NetnsLab:
    """The bridge, the hosts, and one SSH setting that reaches them all."""

    bridge: str
    subnet: str  # e.g. "10.213.57.0/24"
    gateway: str  # the bridge's own address (root namespace), e.g. "10.213.57.1"
    unused_address: str  # in the subnet, nobody behind it: connecting to it times out
    hosts: tuple[NetnsHost, ...]
    key_file: str
    known_hosts: str  # lines for every host's sshd
    user: str

    def ssh_spec(self, **changes: object) -> SSHSpec:
        """SSH settings for any host of the lab (same port everywhere), strict host keys on."""
        ports = {h.sshd.port for h in self.hosts}
        if len(ports) != 1:
            raise RuntimeError(f"hosts listen on different ports: {ports}")
        spec = SSHSpec(
            user=self.user,
            port=ports.pop(),
            key_file=self.key_file,
            connect_timeout=5.0,
            strict_host_keys=True,
            known_hosts=self.known_hosts,
        )
        return dataclasses.replace(spec, **changes)


LAB_STATE_DIR = "/run/mscluster-test-labs"  # one JSON file per live lab: what to remove if its owner dies
STATE_VERSION = 1


def _run_batch(argv: Sequence[str], lines: Sequence[str]) -> None:
    """``ip ... -batch -`` with ``lines`` on stdin: hundreds of link commands in one process."""
    done = subprocess.run([*argv, "-batch", "-"], input="\n".join(lines) + "\n", capture_output=True,
                          text=True, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} -batch: {done.stderr.strip()[-500:]}")


def _parallel(argvs: Sequence[Sequence[str]], what: str) -> None:
    """Run every command at once and wait for all; the first failure raises."""
    procs = [subprocess.Popen(list(a), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True) for a in argvs]
    failed = []
    for argv, proc in zip(argvs, procs):
        _, err = proc.communicate(timeout=120)
        if proc.returncode != 0:
            failed.append(f"{' '.join(argv)}: {err.strip()[-300:]}")
    if failed:
        raise RuntimeError(f"{what}: {failed[0]} ({len(failed)} failed)")


def netns_pids(ns: str) -> List[int]:
    """Every process inside namespace ``ns`` (the kernel's list, ``ip netns pids``)."""
    done = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True, timeout=30)
    return [int(w) for w in done.stdout.split() if w.isdigit()]


def _pid_from_file(path: str, config: str) -> Optional[int]:
    """The pid in an sshd pid file, if that process is still the sshd started with ``config``."""
    try:
        pid = int(Path(path).read_text().split()[0])
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError, IndexError):
        return None
    return pid if config.encode() in cmdline else None  # a reused pid is somebody else's: left alone


CGROUP_V1_CPU = "/sys/fs/cgroup/cpu"
CGROUP_V2 = "/sys/fs/cgroup"


def make_host_cgroup(name: str, share: float) -> Optional[str]:
    """A CPU cgroup that gets ``share`` (0..1) of the weight of everything else when both want CPU.

    All of a lab's hosts share this machine's cores, which a real fleet's hosts do not: 512 ranks
    starting at once leave the launcher (one process among 600) a 600th of the CPU. In this
    cgroup the hosts get the CPU the launcher leaves idle, and the launcher what it asks for.
    cgroup v1's cpu controller, else v2's; None where neither can be written (then the hosts
    run at nice 19).
    """
    candidates = []
    if os.path.isfile(os.path.join(CGROUP_V1_CPU, "cpu.shares")):
        candidates.append((os.path.join(CGROUP_V1_CPU, name), "cpu.shares", max(int(1024 * share), 2)))
    try:
        v2 = "cpu" in Path(CGROUP_V2, "cgroup.controllers").read_text().split()
    except OSError:
        v2 = False
    if v2:
        candidates.append((os.path.join(CGROUP_V2, name), "cpu.weight", max(int(100 * share), 1)))
    for path, knob, value in candidates:
        try:
            os.makedirs(path, exist_ok=True)
            Path(path, knob).write_text(str(value))
            return path
        except OSError:
            with contextlib.suppress(OSError):
                os.rmdir(path)
    return None


def remove_lab(state: dict) -> List[str]:
    """Stop a lab's sshd servers by their pid files, every process left in its namespaces by pid, then
    delete the namespaces, veths and bridge. Returns the namespaces still there afterwards."""
    for entry in state.get("sshd", []):
        pid = _pid_from_file(entry["pid_file"], entry["config"])
        if pid is not None:
            stop_process_tree(pid)
    namespaces = [ns for ns in state.get("namespaces", []) if os.path.exists(f"/run/netns/{ns}")]
    for ns in namespaces:  # agents and ranks the sshd trees did not hold (daemonized, reparented)
        for pid in netns_pids(ns):
            with contextlib.suppress(psutil.NoSuchProcess):
                psutil.Process(pid).kill()
    if namespaces:
        subprocess.run(["ip", "-force", "-batch", "-"], input="".join(f"netns del {ns}\n" for ns in namespaces),
                       capture_output=True, text=True, timeout=120)
    _ip_quiet("link", "del", state.get("bridge", ""))
    if state.get("cgroup"):
        with contextlib.suppress(OSError):
            os.rmdir(state["cgroup"])  # empty once its processes are gone
    return [ns for ns in state.get("namespaces", []) if os.path.exists(f"/run/netns/{ns}")]


def reap_stale_labs(state_dir: str = LAB_STATE_DIR) -> List[str]:
    """Remove the labs whose owner process is gone (a run killed before its teardown); their names."""
    reaped = []
    for path in sorted(Path(state_dir).glob("*.json")) if os.path.isdir(state_dir) else []:
        try:
            state = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        owner = state.get("owner", {})
        try:
            alive = psutil.Process(int(owner.get("pid", 0))).create_time() == owner.get("started")
        except (psutil.NoSuchProcess, ValueError, TypeError):
            alive = False
        if alive:
            continue
        if not remove_lab(state):
            path.unlink(missing_ok=True)
            reaped.append(state.get("bridge", path.stem))
    return reaped


@contextlib.contextmanager
def netns_lab(workdir: Path, count: int = 2, extra_sshd_config: Sequence[str] = (),
              host_cpu_share: Optional[float] = None) -> Iterator[NetnsLab]:
    """Build ``count`` (up to 250) namespace hosts on a fresh bridge, in parallel; tear all down on exit.

    ``host_cpu_share``: run every host's sshd (and so its agents and ranks) in a cgroup with this
    share of the CPU weight (``make_host_cgroup``), as a benchmark of the launcher at scale needs.

    What it builds is recorded in ``/run/mscluster-test-labs/<tag>.json`` before it exists, so a run
    killed before its teardown is cleaned up by the next lab (``reap_stale_labs``), or by hand with
    ``python tests/netns_util.py --cleanup``: sshd by pid file, namespaces with ``ip netns del``.
    """
    require_netns()
    reap_stale_labs()
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    tag = uuid.uuid4().hex[:6]
    bridge = f"msbr{tag}"  # interface names: at most 15 characters
    net = pick_subnet()
    addresses = list(net.hosts())
    if count > len(addresses) - 2:
        raise ValueError(f"at most {len(addresses) - 2} hosts fit in {net}")
    gateway = str(addresses[0])
    namespaces = [f"msns{tag}{i:03d}" for i in range(count)]
    host_dirs = [workdir / ns for ns in namespaces]
    port = free_port("127.0.0.1")  # every namespace is a fresh network stack: free in all of them
    cgroup = make_host_cgroup(f"mscluster-lab-{tag}", host_cpu_share) if host_cpu_share is not None else None
    nice = ["nice", "-n", "19"] if host_cpu_share is not None and cgroup is None else []
    state = {"version": STATE_VERSION, "owner": {"pid": os.getpid(), "started": psutil.Process().create_time()},
             "bridge": bridge, "namespaces": namespaces, "cgroup": cgroup,
             "sshd": [{"pid_file": str(d / "sshd.pid"), "config": str(d / "sshd_config")} for d in host_dirs]}
    os.makedirs(LAB_STATE_DIR, mode=0o700, exist_ok=True)
    state_file = Path(LAB_STATE_DIR) / f"{tag}.json"
    state_file.write_text(json.dumps(state))
    procs: List[subprocess.Popen] = []
    try:
        try:
            root = [f"link add {bridge} type bridge", f"addr add {gateway}/{net.prefixlen} dev {bridge}",
                    f"link set {bridge} up"]
            _run_batch(["ip"], root)
            _run_batch(["ip"], [f"netns add {ns}" for ns in namespaces])
            links = []
            for i, ns in enumerate(namespaces):
                veth, peer = f"msv{tag}{i}", f"msp{tag}{i}"
                links += [f"link add {veth} type veth peer name {peer} netns {ns}",
                          f"link set {veth} master {bridge}", f"link set {veth} up"]
            _run_batch(["ip"], links)
            for i, ns in enumerate(namespaces):
                _run_batch(["ip", "-n", ns], [f"addr add {addresses[1 + i]}/{net.prefixlen} dev msp{tag}{i}",
                                              f"link set msp{tag}{i} up", "link set lo up"])

            user_key = keygen(workdir / "id_ed25519", "test-user")
            for d in host_dirs:
                d.mkdir(parents=True, exist_ok=True)
                (d / "authorized_keys").write_text(Path(f"{user_key}.pub").read_text())
            _parallel([["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "test-host", "-f",
                        str(d / "ssh_host_ed25519_key")] for d in host_dirs], "host keys")
            os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # sshd's privilege separation folder
            for i, (ns, d) in enumerate(zip(namespaces, host_dirs)):
                cfg = sshd_config(d, str(addresses[1 + i]), port, d / "ssh_host_ed25519_key", extra_sshd_config)
                (d / "sshd.log").write_text("")
                procs.append(subprocess.Popen([*nice, "ip", "netns", "exec", ns, SSHD, "-D", "-f", str(cfg), "-E",
                                               str(d / "sshd.log")], stdin=subprocess.DEVNULL,
                                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                              start_new_session=True))
                if cgroup is not None:  # before it accepts a connection: every session inherits it
                    Path(cgroup, "cgroup.procs").write_text(str(procs[-1].pid))
            hosts = []
            for i, (ns, d, proc) in enumerate(zip(namespaces, host_dirs, procs)):
                address = str(addresses[1 + i])
                wait_listening(proc, address, port, d / "sshd.log")
                pub = Path(f"{d / 'ssh_host_ed25519_key'}.pub").read_text().split()
                (d / "known_hosts").write_text(f"[{address}]:{port} {pub[0]} {pub[1]}\n")
                server = SSHServer(address=address, port=port, user=getpass.getuser(), key_file=str(user_key),
                                   known_hosts=str(d / "known_hosts"), pid=proc.pid, log=str(d / "sshd.log"),
                                   workdir=str(d))
                hosts.append(NetnsHost(netns=ns, address=address, sshd=server))
            known_hosts = workdir / "known_hosts"
            known_hosts.write_text("".join(Path(h.sshd.known_hosts).read_text() for h in hosts))
            lab = NetnsLab(bridge=bridge, subnet=str(net), gateway=gateway, unused_address=str(addresses[-1]),
                           hosts=tuple(hosts), key_file=str(user_key), known_hosts=str(known_hosts),
                           user=getpass.getuser())
        except Exception as exc:
            raise RuntimeError(f"building the netns lab failed: {exc}") from exc
        yield lab
    finally:
        leftovers = remove_lab(state)
        for proc in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        if not leftovers:
            state_file.unlink(missing_ok=True)
    if leftovers:
        raise RuntimeError(f"namespaces left behind: {leftovers}")


FLEET_HOSTS = 8


@pytest.fixture(scope="session")
def fleet_hosts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NetnsLab]:
    """Eight namespace hosts with sshd each, for the whole session (skips, or fails under CI)."""
    with netns_lab(tmp_path_factory.mktemp("fleet"), count=FLEET_HOSTS) as lab:
        yield lab


@pytest.fixture(scope="session")
def netns_hosts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NetnsLab]:
    """Three namespace hosts with sshd each (two for a job, one for its spare), for the whole session (skips,
    or fails under CI)."""
    with netns_lab(tmp_path_factory.mktemp("netns"), count=3) as lab:
        yield lab


if __name__ == "__main__":  # python tests/netns_util.py --cleanup: remove what interrupted runs left
    import sys

    if sys.argv[1:] != ["--cleanup"]:
        sys.exit("usage: python tests/netns_util.py --cleanup")
    print("removed:", ", ".join(reap_stale_labs()) or "nothing")
