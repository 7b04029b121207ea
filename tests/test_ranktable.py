"""The Ascend rank table (against a hand-written hccl_tools-format golden file) and NPU IP discovery.

Discovery runs real processes: a fake ``hccn_tool`` script on PATH (the only fake) and the real
``cat`` of an hccn.conf written to tmp.
"""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from launcher.config import load_cluster, parse_cluster
from launcher.errors import DiscoveryError
from launcher.plan import plan_ranks
from launcher.ranktable import (build_rank_table, discover_device_ips, dump_rank_table,
                                parse_hccn_conf, parse_hccn_tool_output)

HERE = Path(__file__).resolve().parent
GOLDEN = HERE / "golden" / "ranktable_2x8.json"
CONFIGS = HERE.parent / "cluster_configs"

# Prints what the real `hccn_tool -i <id> -ip -g` prints; the third octet comes from the host
# (FAKE_SUBNET, set per host by the runner), the last from the device id. Ids >= FAKE_MAX fail.
FAKE_HCCN_TOOL = """#!/bin/sh
echo "$*" >> "$FAKE_CALLS"
if [ "$1" != "-i" ] || [ "$3" != "-ip" ] || [ "$4" != "-g" ]; then
    echo "usage: hccn_tool -i <id> -ip -g" >&2; exit 2
fi
if [ "$2" -ge "${FAKE_MAX:-8}" ]; then
    echo "Get ip address failed, device $2 not found" >&2; exit 1
fi
echo "ipaddr:192.98.${FAKE_SUBNET:-92}.10$2"
echo "netmask:255.255.255.0"
"""


def two_by_eight_ips() -> dict[tuple[str, int], str]:
    ips = {("10.0.0.1", d): f"192.98.92.10{d}" for d in range(8)}
    ips.update({("10.0.0.2", d): f"192.98.93.10{d}" for d in range(8)})
    return ips


def all_values(node):
    if isinstance(node, dict):
        for value in node.values():
            yield from all_values(value)
    elif isinstance(node, list):
        for value in node:
            yield from all_values(value)
    else:
        yield node


def key_order(node):
    """Every mapping's keys, in order, depth first."""
    if isinstance(node, dict):
        return [list(node)] + [k for value in node.values() for k in key_order(value)]
    if isinstance(node, list):
        return [k for value in node for k in key_order(value)]
    return []


# ---------------------------------------------------------------- building

def test_2x8_matches_the_hand_written_golden_table():
    plan = plan_ranks(load_cluster(str(CONFIGS / "ascend_2x8.yaml")))
    table = build_rank_table(plan, two_by_eight_ips())
    golden_text = GOLDEN.read_text(encoding="utf-8")
    golden = json.loads(golden_text)
    assert table == golden
    assert key_order(table) == key_order(golden)
    assert dump_rank_table(table) == golden_text  # indent 4, like hccl_tools writes it
    assert all(isinstance(value, str) for value in all_values(table))


def test_single_local_server_uses_the_loopback_ip_as_server_id():
    plan = plan_ranks(load_cluster(str(CONFIGS / "ascend_1x8.yaml")))
    table = build_rank_table(plan, {("localhost", d): f"192.98.92.10{d}" for d in range(8)})
    assert table["server_count"] == "1"
    assert table["server_list"][0]["server_id"] == "127.0.0.1"
    assert [d["rank_id"] for d in table["server_list"][0]["device"]] == [str(i) for i in range(8)]


def test_missing_ip_names_host_and_device():
    plan = plan_ranks(load_cluster(str(CONFIGS / "ascend_2x8.yaml")))
    ips = two_by_eight_ips()
    del ips[("10.0.0.2", 5)]
    with pytest.raises(DiscoveryError, match=r"^10\.0\.0\.2: no IP for device 5 \(rank 13\); set hosts\[1\]\.device_ips"):
        build_rank_table(plan, ips)


# ---------------------------------------------------------------- parsers

def test_parse_hccn_tool_output():
    assert parse_hccn_tool_output("ipaddr:192.98.92.100\nnetmask:255.255.255.0\n") == "192.98.92.100"
    assert parse_hccn_tool_output("netmask:255.255.255.0\nipaddr: 192.98.93.101 \n") == "192.98.93.101"
    assert parse_hccn_tool_output("Get ip address failed\n") is None
    assert parse_hccn_tool_output("ipaddr:\n") is None


def test_parse_hccn_conf():
    text = ("# written by hccn_tool\naddress_0=192.98.92.100\nnetmask_0=255.255.255.0\n"
            "netdetect_0=192.98.92.1\naddress_1 = 192.98.93.100\naddress_2=\naddress_12=192.98.95.1\n")
    assert parse_hccn_conf(text) == {0: "192.98.92.100", 1: "192.98.93.100", 12: "192.98.95.1"}
    assert parse_hccn_conf("") == {}


# ---------------------------------------------------------------- discovery (real processes)

@pytest.fixture
def fake_tool_dir(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    tool = bin_dir / "hccn_tool"
    tool.write_text(FAKE_HCCN_TOOL)
    tool.chmod(0o755)
    return bin_dir


def local_runner(tmp_path: Path, bin_dirs: list[Path], subnets=None, max_device: int = 8):
    """run(host, argv) executing locally, as the SSH executor would on ``host``; records argv."""
    calls: list[tuple[str, list[str]]] = []
    calls_file = tmp_path / "hccn_tool_calls.txt"

    def run(host: str, argv: list[str]) -> tuple[int, str]:
        calls.append((host, list(argv)))
        env = {"PATH": os.pathsep.join([str(d) for d in bin_dirs] + ["/usr/bin", "/bin"]),
               "FAKE_CALLS": str(calls_file), "FAKE_MAX": str(max_device),
               "FAKE_SUBNET": (subnets or {}).get(host, "92")}
        try:
            proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=30)
        except FileNotFoundError as exc:
            return 127, str(exc)
        return proc.returncode, proc.stdout + proc.stderr

    return run, calls, calls_file


def ascend_plan(text_hosts: str):
    return plan_ranks(parse_cluster(f"name: npu\nbackend: ascend\nhosts:\n{text_hosts}", "npu.yaml"))


def test_discovery_asks_hccn_tool_on_every_host(tmp_path, fake_tool_dir):
    plan = plan_ranks(load_cluster(str(CONFIGS / "ascend_2x8.yaml")))
    run, calls, calls_file = local_runner(tmp_path, [fake_tool_dir], subnets={"10.0.0.1": "92", "10.0.0.2": "93"})
    ips = discover_device_ips(plan, run, hccn_conf=str(tmp_path / "absent.conf"))
    assert ips == two_by_eight_ips()
    assert calls[0] == ("10.0.0.1", ["hccn_tool", "-i", "0", "-ip", "-g"])
    assert len(calls_file.read_text().splitlines()) == 16  # the fake really ran, once per device
    # discovered IPs feed the builder: the same table as the golden file
    assert dump_rank_table(build_rank_table(plan, ips)) == GOLDEN.read_text(encoding="utf-8")


def test_cluster_file_ips_come_first(tmp_path, fake_tool_dir):
    plan = ascend_plan("  - {address: 10.0.0.1, devices: [0, 1], device_ips: {1: 10.9.9.9}}\n")
    run, calls, calls_file = local_runner(tmp_path, [fake_tool_dir])
    ips = discover_device_ips(plan, run, hccn_conf=str(tmp_path / "absent.conf"))
    assert ips == {("10.0.0.1", 0): "192.98.92.100", ("10.0.0.1", 1): "10.9.9.9"}
    assert calls_file.read_text().split() == ["-i", "0", "-ip", "-g"]  # device 1 was not asked


def test_hccn_conf_when_hccn_tool_is_missing(tmp_path):
    empty_bin = tmp_path / "empty"
    empty_bin.mkdir()
    conf = tmp_path / "hccn.conf"
    conf.write_text("address_0=192.98.92.100\nnetmask_0=255.255.255.0\naddress_1=192.98.93.100\n"
                    "netmask_1=255.255.255.0\n")
    plan = ascend_plan("  - {address: localhost, devices: 2}\n")
    run, calls, _ = local_runner(tmp_path, [empty_bin])
    ips = discover_device_ips(plan, run, hccn_conf=str(conf))
    assert ips == {("localhost", 0): "192.98.92.100", ("localhost", 1): "192.98.93.100"}
    # a host without hccn_tool is asked once, then its hccn.conf is read once
    assert [argv[0] for _, argv in calls] == ["hccn_tool", "cat"]


def test_hccn_conf_for_devices_hccn_tool_cannot_answer(tmp_path, fake_tool_dir):
    conf = tmp_path / "hccn.conf"
    conf.write_text("address_2=192.98.94.100\naddress_3=192.98.95.100\n")
    plan = ascend_plan("  - {address: localhost, devices: 4}\n")
    run, _, _ = local_runner(tmp_path, [fake_tool_dir], max_device=2)
    ips = discover_device_ips(plan, run, hccn_conf=str(conf))
    assert ips == {("localhost", 0): "192.98.92.100", ("localhost", 1): "192.98.92.101",
                   ("localhost", 2): "192.98.94.100", ("localhost", 3): "192.98.95.100"}


def test_no_ip_anywhere_names_host_and_device(tmp_path, fake_tool_dir):
    conf = tmp_path / "hccn.conf"
    conf.write_text("address_0=192.98.92.100\n")
    plan = ascend_plan("  - {address: localhost, devices: [0, 5]}\n")
    run, _, _ = local_runner(tmp_path, [fake_tool_dir], max_device=0)
    with pytest.raises(DiscoveryError) as info:
        discover_device_ips(plan, run, hccn_conf=str(conf))
    message = str(info.value)
    assert message.startswith("localhost: no IP for device 5: ")
    assert "device 5 not found" in message  # hccn_tool's own complaint
    assert "has no address_5" in message and "hosts[0].device_ips" in message
    assert "\n" not in message


def test_unreadable_hccn_conf_is_reported(tmp_path):
    empty_bin = tmp_path / "empty"
    empty_bin.mkdir()
    plan = ascend_plan("  - {address: localhost, devices: 1}\n")
    run, _, _ = local_runner(tmp_path, [empty_bin])
    with pytest.raises(DiscoveryError, match=r"absent\.conf has no address_0 \(exit 1: .*No such file"):
        discover_device_ips(plan, run, hccn_conf=str(tmp_path / "absent.conf"))


A3_V12 = """
name: a3
backend: ascend
ascend: {init: ranktable, rank_table_version: "1.2"}
hosts:
  - {address: 172.16.0.100, devices: 4, super_pod_id: 0, super_device_ids: {0: 0, 1: 1, 2: 2, 3: 3}}
  - {address: 172.16.0.101, devices: 4, super_pod_id: 0, super_device_ids: {0: 4, 1: 5, 2: 6, 3: 7}}
  - {address: 172.16.0.102, devices: 4, super_pod_id: 1, super_device_ids: {0: 0, 1: 1, 2: 2, 3: 3}}
  - {address: 172.16.0.103, devices: 4, super_pod_id: 1, super_device_ids: {0: 4, 1: 5, 2: 6, 3: 7}}
"""


def test_v12_matches_canns_a3_example():
    """tests/golden/SOURCES.md: CANN's A3 SuperPoD example, transcribed (server ids = the servers' IPs)."""
    plan = plan_ranks(parse_cluster(A3_V12, "a3.yaml"))
    ips = {(f"172.16.0.10{n}", d): f"192.168.{n + 1}.{6 + d}" for n in range(4) for d in range(4)}
    table = build_rank_table(plan, ips)
    golden_text = (HERE / "golden" / "ranktable_a3_4x4_v1.2.json").read_text(encoding="utf-8")
    assert table == json.loads(golden_text)
    assert key_order(table) == key_order(json.loads(golden_text))
    assert dump_rank_table(table) == golden_text
    assert all(isinstance(value, str) for value in all_values(table))


def test_v12_host_ip_from_the_file_when_it_is_not_the_address():
    text = A3_V12.replace("{address: 172.16.0.100, devices: 4,", "{address: 172.16.0.100, host_ip: 10.9.0.1, devices: 4,")
    plan = plan_ranks(parse_cluster(text, "a3.yaml"))
    ips = {(f"172.16.0.10{n}", d): f"192.168.{n + 1}.{6 + d}" for n in range(4) for d in range(4)}
    table = build_rank_table(plan, ips)
    assert [s["host_ip"] for s in table["server_list"]] == ["10.9.0.1", "172.16.0.101", "172.16.0.102", "172.16.0.103"]
    assert parse_cluster(text, "a3.yaml").hosts[0].host_ip == "10.9.0.1"


def test_the_resolved_file_keeps_the_superpod_fields():
    from launcher.config import resolved_yaml

    spec = parse_cluster(A3_V12, "a3.yaml")
    assert parse_cluster(resolved_yaml(spec), "a3.yaml") == spec
