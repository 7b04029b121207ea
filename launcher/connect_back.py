"""An agent's connection back to its launcher, for agents a scheduler starts (no SSH channel to talk on).

The launcher listens on a TCP port and starts the agents with its address (``CONNECT_ENV``) and a
one-time token (``TOKEN_ENV``) in their environment; each agent connects, sends one hello line (JSON:
token, node, task, step) and then speaks the protocol it speaks over SSH on that socket. Both ends
are here: `connect_back` (the agent's) and `read_hello` (the launcher's).
"""
from __future__ import annotations

import hmac
import json
import socket
import time
from typing import Any, Mapping, Optional

CONNECT_ENV = "MSCLUSTER_AGENT_CONNECT"  # host:port the agent connects back to
TOKEN_ENV = "MSCLUSTER_AGENT_TOKEN"  # proves the connection is this launcher's agent
HELLO_TIMEOUT_S = 10.0
HELLO_MAX_BYTES = 4096


def connect_back(environ: Mapping[str, str], timeout: float = 30.0) -> Optional[socket.socket]:
    """In an agent started with `CONNECT_ENV`: the connection to the launcher, hello sent; None otherwise.

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
    hello = {"token": environ.get(TOKEN_ENV, ""), "node": environ.get("SLURMD_NODENAME", ""),
             "task": environ.get("SLURM_PROCID"), "step": environ.get("SLURM_STEP_ID")}
    sock.sendall((json.dumps(hello) + "\n").encode("utf-8"))
    return sock


def read_hello(conn: socket.socket, token: str) -> Optional[dict[str, Any]]:
    """The launcher's side: the agent's hello if it carries ``token``, else None (the caller closes it).

    Reads byte by byte, so nothing after the hello line (the agent's protocol) is consumed here.
    """
    conn.settimeout(HELLO_TIMEOUT_S)
    data = b""
    try:
        while not data.endswith(b"\n") and len(data) < HELLO_MAX_BYTES:
            chunk = conn.recv(1)
            if not chunk:
                break
            data += chunk
        hello = json.loads(data.decode("utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    if not isinstance(hello, dict):
        return None
    if not hmac.compare_digest(str(hello.get("token", "")).encode("utf-8"), token.encode("utf-8")):
        return None
    return hello
