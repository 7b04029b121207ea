"""What the launcher does to a host's in-memory snapshot folder: ``launcher.snapshottool``, a JSON request on stdin.

Run through the host's executor as one of mscluster's own modules (``launcher.jobplan.own_argv``);
the request travels on stdin, never on the command line. Only a folder named as
``mscluster.jobfiles.snapshot_dir`` names one (``/dev/shm/mscluster-...``) is ever read or removed.

    {"op": "list", "dir": D}     prints the newest complete snapshot that verifies (its sidecar's
                                 file, global_step, sha256, size) or null
    {"op": "read", "dir": D, "name": N}   prints {"data": base64 of the .ckpt, "sidecar": its JSON text}
    {"op": "write", "dir": D, "name": N, "data": ..., "sidecar": ...}   checks the bytes against the
                                 sidecar, writes both atomically (the .ckpt first), then removes every
                                 other snapshot of the folder; prints {"ok": true}
    {"op": "remove", "dir": D}   removes the folder; prints {"removed": bool}

Imports no MindSpore. Exit 1 with one line on stderr for a bad request or a failed check.
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import sys
from typing import Any, Optional

from mscluster.fsutil import write_json_atomic
from mscluster.jobfiles import is_snapshot_dir
from trainer import checkpoint as ckpt
from trainer.errors import CheckpointError


def newest(folder: str) -> Optional[dict[str, Any]]:
    """The newest snapshot of ``folder`` that verifies, as the sidecar says it; None: none."""
    _, meta, _ = ckpt.latest_good(folder)
    if meta is None:
        return None
    return {"name": meta.file, "global_step": meta.global_step, "sha256": meta.sha256, "size": meta.size}


def read(folder: str, name: str) -> dict[str, str]:
    path = os.path.join(folder, name)
    meta = ckpt.verify(path)
    with open(path, "rb") as handle:
        data = handle.read()
    if hashlib.sha256(data).hexdigest() != meta.sha256:
        raise CheckpointError(f"{path}: SHA-256 differs from the sidecar's (changed while read)")
    with open(ckpt.sidecar_path(path), encoding="utf-8") as handle:
        sidecar = handle.read()
    return {"data": base64.b64encode(data).decode("ascii"), "sidecar": sidecar}


def write(folder: str, name: str, data_b64: str, sidecar: str) -> None:
    """Write a snapshot received from another host, as the trainer writes one: the file, then its sidecar."""
    if not ckpt.NAME_RE.match(name):
        raise CheckpointError(f"{name}: not a snapshot's name")
    data = base64.b64decode(data_b64.encode("ascii"), validate=True)
    side = json.loads(sidecar)
    if not isinstance(side, dict) or side.get("file") != name or side.get("size") != len(data) \
            or side.get("sha256") != hashlib.sha256(data).hexdigest():
        raise CheckpointError(f"{name}: the bytes received differ from their sidecar")
    os.makedirs(folder, mode=0o700, exist_ok=True)
    tmp = os.path.join(folder, ckpt.TMP_PREFIX + name)
    with open(tmp, "wb") as handle:
        handle.write(data)
    final = os.path.join(folder, name)
    os.replace(tmp, final)
    write_json_atomic(ckpt.sidecar_path(final), side)
    ckpt.read_sidecar(ckpt.sidecar_path(final))  # type-checked as the trainer will check it
    for other in os.listdir(folder):  # keep only the newest complete one
        if other not in (name, name + ".json"):
            try:
                os.remove(os.path.join(folder, other))
            except FileNotFoundError:
                pass


def remove(folder: str) -> bool:
    existed = os.path.isdir(folder)
    shutil.rmtree(folder, ignore_errors=True)
    return existed and not os.path.exists(folder)


def handle(request: Any) -> Any:
    if not isinstance(request, dict) or not isinstance(request.get("dir"), str):
        raise CheckpointError("a request is a JSON object with op and dir")
    folder, op = request["dir"], request.get("op")
    if not is_snapshot_dir(folder):
        raise CheckpointError(f"{folder}: not a snapshot folder of mscluster")
    if op == "list":
        return newest(folder)
    if op == "read":
        return read(folder, str(request.get("name")))
    if op == "write":
        write(folder, str(request.get("name")), str(request.get("data")), str(request.get("sidecar")))
        return {"ok": True}
    if op == "remove":
        return {"removed": remove(folder)}
    raise CheckpointError(f"unknown op {str(op)[:40]!r}")


def main() -> int:
    try:
        print(json.dumps(handle(json.loads(sys.stdin.read()))))
    except (CheckpointError, OSError, ValueError) as exc:
        sys.stderr.write(f"mscluster snapshot: {exc}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
