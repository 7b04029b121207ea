"""Full-state checkpoints, written atomically, each vouched for by a JSON sidecar.

A checkpoint is ``<dir>/ckpt_e<epoch>_s<global step>.ckpt`` (MindSpore's format: weights, BatchNorm
statistics, optimizer moments, learning rate, global step, plus our ``append_dict``) and
``<same name>.json``: its size and SHA-256, the epoch/step position, the resolved config and the
fingerprint of the settings a resume must agree on. The ``.ckpt`` is written to a temporary name in
the same folder, fsynced and renamed; the sidecar is written (the same way) only after that. A
checkpoint whose sidecar is missing or disagrees with the file is never loaded.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Optional

from trainer.errors import CheckpointError

logger = logging.getLogger(__name__)

NAME_RE = re.compile(r"^ckpt_e(\d+)_s(\d+)\.ckpt$")
TMP_PREFIX = ".tmp-"


@dataclass(frozen=True)
class CheckpointMeta:
    """What the sidecar records about one checkpoint."""

    file: str  # base name of the .ckpt
    size: int
    sha256: str
    epoch: int  # epochs completed before this position (0-based index of the epoch in progress)
    step_in_epoch: int  # steps of that epoch already done (0 = at the epoch's start)
    global_step: int
    dataset_seed: int
    fingerprint: dict[str, Any]
    config: dict[str, Any]
    class_names: list[str] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)
    saved_at: float = 0.0


def checkpoint_name(epoch: int, step_in_epoch: int, global_step: int) -> str:
    """File name that sorts by training position."""
    return f"ckpt_e{epoch:04d}_s{global_step:09d}.ckpt"


def sidecar_path(ckpt_path: str) -> str:
    return ckpt_path + ".json"


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_json_atomic(path: str, payload: dict[str, Any]) -> None:
    tmp = os.path.join(os.path.dirname(path), TMP_PREFIX + os.path.basename(path))
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(payload, handle, indent=2, sort_keys=True)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def save(write: Callable[[str], None], directory: str, meta_fields: dict[str, Any],
         pause_mid_write: float = 0.0) -> tuple[str, CheckpointMeta]:
    """Write a checkpoint atomically and its sidecar after it.

    Args:
        write: writes the checkpoint to the path it is given (``ms.save_checkpoint`` bound to the net).
        directory: the checkpoints folder (created if missing).
        meta_fields: CheckpointMeta fields other than file, size, sha256 and saved_at.
        pause_mid_write: test hook: sleep this long after the data is written, before the rename.
    """
    os.makedirs(directory, exist_ok=True)
    name = checkpoint_name(meta_fields["epoch"], meta_fields["step_in_epoch"], meta_fields["global_step"])
    final = os.path.join(directory, name)
    tmp = os.path.join(directory, TMP_PREFIX + name)
    write(tmp)
    with open(tmp, "rb+") as handle:
        os.fsync(handle.fileno())
    if pause_mid_write:
        logger.warning("debug_pause_in_save: pausing %.1f s before renaming %s", pause_mid_write, tmp)
        time.sleep(pause_mid_write)
    size = os.path.getsize(tmp)
    digest = _sha256(tmp)
    os.replace(tmp, final)
    _fsync_dir(directory)
    meta = CheckpointMeta(file=name, size=size, sha256=digest, saved_at=time.time(), **meta_fields)
    _write_json_atomic(sidecar_path(final), asdict(meta))
    _fsync_dir(directory)
    return final, meta


def verify(path: str) -> CheckpointMeta:
    """Return the sidecar of a checkpoint whose file matches it.

    Raises:
        CheckpointError: no such file, no sidecar, an unreadable sidecar, or a size/SHA-256 mismatch.
    """
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: no such checkpoint file")
    side = sidecar_path(path)
    if not os.path.isfile(side):
        raise CheckpointError(f"{path}: no sidecar {os.path.basename(side)} (incomplete or not written by mscluster)")
    try:
        with open(side, encoding="utf-8") as handle:
            raw = json.load(handle)
        meta = CheckpointMeta(**raw)
    except (OSError, ValueError, TypeError) as exc:
        raise CheckpointError(f"{side}: unreadable sidecar ({exc})") from None
    size = os.path.getsize(path)
    if size != meta.size:
        raise CheckpointError(f"{path}: size {size} bytes differs from the sidecar's {meta.size} (truncated?)")
    if _sha256(path) != meta.sha256:
        raise CheckpointError(f"{path}: SHA-256 differs from the sidecar's (corrupt)")
    return meta


def list_checkpoints(directory: str) -> list[str]:
    """Checkpoint files in ``directory``, oldest position first (temporary files excluded)."""
    if not os.path.isdir(directory):
        return []
    names = [n for n in os.listdir(directory) if NAME_RE.match(n)]
    names.sort(key=lambda n: (int(NAME_RE.match(n).group(1)), int(NAME_RE.match(n).group(2))))
    return [os.path.join(directory, n) for n in names]


def latest_good(directory: str) -> tuple[Optional[str], Optional[CheckpointMeta], list[tuple[str, str]]]:
    """The newest checkpoint that verifies, and (path, reason) for each newer one skipped."""
    skipped: list[tuple[str, str]] = []
    for path in reversed(list_checkpoints(directory)):
        try:
            return path, verify(path), skipped
        except CheckpointError as exc:
            skipped.append((path, str(exc)))
    return None, None, skipped


def prune(directory: str, keep_max: int) -> list[str]:
    """Remove all but the ``keep_max`` newest good checkpoints; called only after a save completed.

    Bad (unverified) files are left for a person to look at, except stale temporaries.
    """
    removed = []
    good = [p for p in list_checkpoints(directory) if os.path.isfile(sidecar_path(p))]
    for path in good[:-keep_max] if keep_max > 0 else []:
        for victim in (sidecar_path(path), path):
            try:
                os.remove(victim)
                removed.append(victim)
            except FileNotFoundError:
                pass
    return removed


def fingerprint_mismatch(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Keys whose values differ between a checkpoint's fingerprint and the current settings."""
    keys = sorted(set(saved) | set(current))
    return [f"{k} ({saved.get(k)!r} in the checkpoint, {current.get(k)!r} now)" for k in keys
            if saved.get(k) != current.get(k)]
