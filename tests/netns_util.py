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
import ipaddress
import os
import random
import shutil
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, List, Sequence

import pytest

from launcher.spec import SSHSpec
from sshd_util import SSHServer, keygen, require_sshd, running_sshd, skip_or_fail

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


@contextlib.contextmanager
def netns_lab(workdir: Path, count: int = 2, extra_sshd_config: Sequence[str] = ()) -> Iterator[NetnsLab]:
    """Build ``count`` namespace hosts on a fresh bridge; tear everything down on exit."""
    require_netns()
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    tag = uuid.uuid4().hex[:6]
    bridge = f"msbr{tag}"  # interface names: at most 15 characters
    net = pick_subnet()
    addresses = list(net.hosts())
    gateway = str(addresses[0])
    namespaces: List[str] = []
    veths: List[str] = []
    with contextlib.ExitStack() as stack:
        try:
            _ip("link", "add", bridge, "type", "bridge")
            stack.callback(_ip_quiet, "link", "del", bridge)
            _ip("addr", "add", f"{gateway}/{net.prefixlen}", "dev", bridge)
            _ip("link", "set", bridge, "up")
            for i in range(count):
                ns = f"msns{tag}{chr(ord('a') + i)}"
                veth, peer = f"msv{tag}{i}", f"msp{tag}{i}"
                _ip("netns", "add", ns)
                namespaces.append(ns)
                stack.callback(_ip_quiet, "netns", "del", ns)  # also removes the veth pair
                _ip("link", "add", veth, "type", "veth", "peer", "name", peer, "netns", ns)
                veths.append(veth)
                stack.callback(_ip_quiet, "link", "del", veth)
                _ip("link", "set", veth, "master", bridge)
                _ip("link", "set", veth, "up")
                _ip("-n", ns, "addr", "add", f"{addresses[1 + i]}/{net.prefixlen}", "dev", peer)
                _ip("-n", ns, "link", "set", peer, "up")
                _ip("-n", ns, "link", "set", "lo", "up")

            user_key = keygen(workdir / "id_ed25519", "test-user")
            hosts = []
            port = None
            for i, ns in enumerate(namespaces):
                server = stack.enter_context(
                    running_sshd(
                        workdir / ns,
                        str(addresses[1 + i]),
                        netns=ns,
                        user_key=user_key,
                        extra_config=tuple(extra_sshd_config),
                        port=port,
                    )
                )
                port = server.port  # one port for all hosts, as in a real cluster
                hosts.append(NetnsHost(netns=ns, address=server.address, sshd=server))
            known_hosts = workdir / "known_hosts"
            known_hosts.write_text("".join(Path(h.sshd.known_hosts).read_text() for h in hosts))
            lab = NetnsLab(
                bridge=bridge,
                subnet=str(net),
                gateway=gateway,
                unused_address=str(addresses[-1]),
                hosts=tuple(hosts),
                key_file=str(user_key),
                known_hosts=str(known_hosts),
                user=hosts[0].sshd.user,
            )
        except Exception as exc:
            raise RuntimeError(f"building the netns lab failed: {exc}") from exc
        yield lab
    leftovers = [ns for ns in namespaces if os.path.exists(f"/run/netns/{ns}")]
    if leftovers:
        raise RuntimeError(f"namespaces left behind: {leftovers}")


@pytest.fixture(scope="session")
def netns_hosts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NetnsLab]:
    """Two namespace hosts with sshd each, for the whole session (skips, or fails under CI)."""
    with netns_lab(tmp_path_factory.mktemp("netns"), count=2) as lab:
        yield lab
