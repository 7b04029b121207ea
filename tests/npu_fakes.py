"""Fakes of the two Ascend tools that cannot exist here, ``npu-smi`` and ``hccn_tool``.

They print exactly what the real tools print: ``npu-smi`` prints a real output kept in
``tests/fixtures/ascend`` (sources in its SOURCES.md); ``hccn_tool`` prints the real one-line
formats named there. What a fake host looks like is its environment:

    FAKE_NPU_SMI_INFO   the fixture ``npu-smi info`` prints
    FAKE_NPU_SMI_TOPO   the fixture ``npu-smi info -t topo`` prints
    FAKE_HCCN_SUBNET    NPU d's IP is 192.98.<subnet>.10<d> (hccn_tool -i d -ip -g)
    FAKE_HCCN_DOWN      NPU ids (comma-separated) whose link is DOWN
    FAKE_HCCN_FAULT     NPU ids whose network health is Fault
    FAKE_HCCN_LOSS      NPU ids whose ping loses a packet (the loss fixture)
"""
from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "ascend"

NPU_SMI = """#!{python}
import os, sys
args = sys.argv[1:]
if args == ["info"]:
    sys.stdout.write(open(os.environ["FAKE_NPU_SMI_INFO"]).read())
elif args == ["info", "-t", "topo"]:
    sys.stdout.write(open(os.environ["FAKE_NPU_SMI_TOPO"]).read())
else:
    sys.exit("npu-smi (fake): only 'info' and 'info -t topo'")
"""

HCCN_TOOL = """#!{python}
import os, sys
a = sys.argv[1:]
if len(a) < 3 or a[0] != "-i":
    sys.exit("hccn_tool (fake): hccn_tool -i <id> -link|-net_health|-ip -g, -ping -g address <ip>")
device = int(a[1])
def listed(name):
    return str(device) in os.environ.get(name, "").split(",")
if a[2:] == ["-link", "-g"]:
    print("link status: " + ("DOWN" if listed("FAKE_HCCN_DOWN") else "UP"))
elif a[2:] == ["-net_health", "-g"]:
    print("net health status: " + ("Fault" if listed("FAKE_HCCN_FAULT") else "Success"))
elif a[2:] == ["-ip", "-g"]:
    print("ipaddr:192.98.%s.10%d" % (os.environ.get("FAKE_HCCN_SUBNET", "92"), device))
    print("netmask:255.255.255.0")
elif a[2:4] == ["-ping", "-g"] and a[4:5] == ["address"] and len(a) == 6:
    body = open(os.path.join({fixtures!r}, "hccn_ping_loss.txt" if listed("FAKE_HCCN_LOSS") else "hccn_ping_ok.txt")).read()
    # the tool's format: "device %d PING %s\\n%s" (the first line names the device and the address)
    print("device %d PING %s" % (device, a[5]))
    sys.stdout.write(body.split("\\n", 1)[1])
else:
    sys.exit("hccn_tool (fake): unsupported " + " ".join(a))
"""


def install_fakes(folder: Path) -> Path:
    """Write ``npu-smi`` and ``hccn_tool`` into ``folder`` (made if missing); return it, for PATH."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in (("npu-smi", NPU_SMI), ("hccn_tool", HCCN_TOOL)):
        path = folder / name
        path.write_text(text.format(python=sys.executable, fixtures=str(FIXTURES)))
        path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return folder


def toolkit_home(folder: Path, fixture: str = "ascend_toolkit_install_8.1.RC1.info") -> Path:
    """A CANN toolkit folder holding the fixture's ``ascend_toolkit_install.info`` for this machine's arch."""
    import platform

    target = folder / f"{platform.machine()}-linux"
    target.mkdir(parents=True, exist_ok=True)
    (target / "ascend_toolkit_install.info").write_text((FIXTURES / fixture).read_text())
    return folder


def host_env(fakes: Path, toolkit: Path, info: str = "npu-smi_info_910prob.txt",
             topo: str = "npu-smi_topo_910b3.txt", **fake: str) -> dict[str, str]:
    """The environment of a fake Ascend host: the fakes first on PATH, its fixtures and faults."""
    env = {"PATH": f"{fakes}{os.pathsep}{os.environ.get('PATH', '')}", "ASCEND_TOOLKIT_HOME": str(toolkit),
           "FAKE_NPU_SMI_INFO": str(FIXTURES / info), "FAKE_NPU_SMI_TOPO": str(FIXTURES / topo)}
    env.update({f"FAKE_HCCN_{k.upper()}": v for k, v in fake.items()})
    return env
