"""The Ascend rank table (v1.0 as hccl_tools writes it; v1.2 for Atlas A3 SuperPoDs) and the discovery of each NPU's IP.

Building and parsing are pure; discovery runs commands through an injected ``run(host, argv)``
(a local or an SSH executor), so it is the one step that touches hosts.

Server order: the rank table lists servers in the cluster file's order, the same order that
numbers the ranks (``launcher.plan``), so ``rank_id`` here always equals the process's RANK_ID.
"""
from __future__ import annotations

import json
import logging
import re
from typing import Callable, Mapping, Optional

from launcher.errors import DiscoveryError
from launcher.plan import connect_address
from launcher.spec import Plan, RankTableVersion, is_ipv4

logger = logging.getLogger(__name__)

HCCN_CONF = "/etc/hccn.conf"
# run(host, argv) -> (exit code, stdout and stderr); 127 when the command does not exist.
Runner = Callable[[str, list[str]], tuple[int, str]]

# [ \t] rather than \s: a blank value must not reach into the next line
_HCCN_TOOL_IP = re.compile(r"^[ \t]*ipaddr[ \t]*:[ \t]*(\S+)[ \t]*\r?$", re.MULTILINE)
_HCCN_CONF_ADDRESS = re.compile(r"^[ \t]*address_(\d+)[ \t]*=[ \t]*(\S+)[ \t]*\r?$", re.MULTILINE)


def build_rank_table(plan: Plan, device_ips: Mapping[tuple[str, int], str]) -> dict:
    """The rank table of ``plan`` in the version its ``ascend.rank_table_version`` names; every value a string.

    1.0: hccl_tools' format (mindspore-ai/models ``utils/hccl_tools/hccl_tools.py``). 1.2 (Atlas A3
    SuperPoD, CANN's "rank table configuration" for A3, hicann/hccl
    ``docs/en/user_guide/cluster_info_config/rank_table_config_a3.md``): per server its
    ``host_ip``, per NPU its ``super_device_id``, and ``super_pod_list`` naming each SuperPoD's
    servers; the optional port and backup fields are left out (CANN's defaults).

    Args:
        plan: an ascend plan (ranks in server order, devices in id order).
        device_ips: (host address as in the cluster file, device id) -> the NPU's IP.

    Raises:
        DiscoveryError: a device has no IP.
    """
    v12 = plan.cluster.ascend.rank_table_version is RankTableVersion.V1_2
    servers: dict[str, list[dict[str, str]]] = {}
    for rank in plan.ranks:
        ip = device_ips.get((rank.host, rank.device_id))
        if not ip:
            raise DiscoveryError(f"{rank.host}: no IP for device {rank.device_id} (rank {rank.rank}); "
                                 f"set hosts[{rank.host_index}].device_ips in {plan.cluster.source}")
        sdid = plan.cluster.hosts[rank.host_index].super_device_id(rank.device_id) if v12 else None
        servers.setdefault(rank.host, []).append(
            {"device_id": str(rank.device_id), **({"super_device_id": str(sdid)} if v12 else {}),
             "device_ip": ip, "rank_id": str(rank.rank)})
    if not v12:
        return {
            "version": RankTableVersion.V1_0.value,
            "server_count": str(len(servers)),
            "server_list": [
                {"server_id": connect_address(host), "device": devices, "host_nic_ip": "reserve"}
                for host, devices in servers.items()
            ],
            "status": "completed",
        }
    hosts = {h.address: h for h in plan.cluster.hosts}
    pods: dict[str, list[dict[str, str]]] = {}
    for address in servers:
        pods.setdefault(str(hosts[address].super_pod_id), []).append({"server_id": connect_address(address)})
    return {
        "status": "completed",
        "version": RankTableVersion.V1_2.value,
        "server_count": str(len(servers)),
        "server_list": [
            {"server_id": connect_address(host), "host_ip": hosts[host].host_ip or connect_address(host),
             "device": devices}
            for host, devices in servers.items()
        ],
        "super_pod_list": [{"super_pod_id": pod, "server_list": members} for pod, members in pods.items()],
    }


def dump_rank_table(table: Mapping) -> str:
    """The rank table as JSON, indented by 4 like hccl_tools writes it."""
    return json.dumps(table, indent=4) + "\n"


def parse_hccn_tool_output(text: str) -> Optional[str]:
    """The IP in ``hccn_tool -i <id> -ip -g`` output (``ipaddr:192.98.92.100``), or None."""
    match = _HCCN_TOOL_IP.search(text)
    return match.group(1) if match and is_ipv4(match.group(1)) else None


def parse_hccn_conf(text: str) -> dict[int, str]:
    """Device id -> IP from ``/etc/hccn.conf`` lines ``address_<id>=<ip>`` (others ignored)."""
    return {int(device): ip for device, ip in _HCCN_CONF_ADDRESS.findall(text) if is_ipv4(ip)}


def discover_device_ips(plan: Plan, run: Runner, *, hccn_conf: str = HCCN_CONF) -> dict[tuple[str, int], str]:
    """Find every rank's NPU IP: the cluster file's ``device_ips``, else ``hccn_tool``, else hccn.conf.

    Args:
        plan: the ascend plan.
        run: runs ``argv`` on ``host`` and returns (exit code, output); exceptions other than
            OSError (e.g. HostUnreachable) pass through.
        hccn_conf: where the fallback file lives on the hosts.

    Returns:
        (host address, device id) -> IP for every rank.

    Raises:
        DiscoveryError: a device's IP is found by none of the three ways; names host and device.
    """
    found: dict[tuple[str, int], str] = {}
    for host_index, host in enumerate(plan.cluster.hosts):
        tool_works = True  # stop asking hccn_tool on a host that does not have it
        tool_failure = ""
        conf: Optional[dict[int, str]] = None
        conf_failure = ""
        for rank in plan.ranks_on(host.address):
            device = rank.device_id
            ip = host.device_ip(device)
            how = "the cluster file"
            if ip is None and tool_works:
                code, output = _run(run, host.address, ["hccn_tool", "-i", str(device), "-ip", "-g"])
                ip = parse_hccn_tool_output(output) if code == 0 else None
                how = "hccn_tool"
                if ip is None:
                    tool_failure = _summary(code, output)
                    tool_works = code not in (126, 127)
            if ip is None:
                if conf is None:
                    code, output = _run(run, host.address, ["cat", hccn_conf])
                    conf = parse_hccn_conf(output) if code == 0 else {}
                    conf_failure = "" if code == 0 else _summary(code, output)
                ip = conf.get(device)
                how = hccn_conf
            if ip is None:
                raise DiscoveryError(
                    f"{host.address}: no IP for device {device}: hccn_tool -i {device} -ip -g "
                    f"gave none ({tool_failure or 'not run'}) and {hccn_conf} has no address_{device}"
                    f"{f' ({conf_failure})' if conf_failure else ''}; set hosts[{host_index}].device_ips "
                    f"in {plan.cluster.source}")
            logger.debug("%s device %s: %s (from %s)", host.address, device, ip, how)
            found[(host.address, device)] = ip
    return found


def _run(run: Runner, host: str, argv: list[str]) -> tuple[int, str]:
    try:
        return run(host, argv)
    except OSError as exc:  # a local executor that lets "command not found" escape
        return 127, str(exc)


def _summary(code: int, output: str) -> str:
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    last = lines[-1] if lines else "no output"
    return f"exit {code}: {last[:120]}"


