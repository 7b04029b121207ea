"""Full-state checkpoints, written atomically, each vouched for by a JSON sidecar.

A checkpoint is ``<dir>/ckpt_e<epoch>_s<global step>.ckpt`` (MindSpore's format: weights, BatchNorm
statistics, optimizer moments, learning rate, global step, plus our ``append_dict``) and
``<same name>.json``: its size and SHA-256, the epoch/step position, the resolved config and the
fingerprint of the settings a resume must agree on. The ``.ckpt`` is written to a temporary name in
the same folder, fsynced and renamed; the sidecar is written (the same way) only after that. A
checkpoint whose sidecar is missing or disagrees with the file is never loaded.

``CheckpointWriter`` runs that sequence in a background thread on a snapshot of the parameters
(the training step waits only for the copy), one checkpoint at a time; the guarantees are the
same, because a checkpoint counts only once its sidecar exists and matches.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Optional

from mscluster.fsutil import write_json_atomic
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


def _fsync(path: str) -> None:
    """fsync a file or a folder (read-only descriptor: MindSpore leaves the files it writes mode 0400)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _pause_torn(tmp: str, seconds: float) -> None:
    """Test hook: leave ``tmp`` half-written on disk for ``seconds``, then write it whole again.

    A process killed during the pause leaves exactly what a kill in the middle of a write leaves:
    a torn temporary file and no new checkpoint.
    """
    with open(tmp, "rb") as handle:
        data = handle.read()
    os.chmod(tmp, 0o600)
    with open(tmp, "r+b") as handle:
        handle.truncate(len(data) // 2)
        handle.flush()
        os.fsync(handle.fileno())
    logger.warning("debug_pause_in_save: pausing %.1f s with %s half-written", seconds, tmp)
    time.sleep(seconds)
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def save(write: Callable[[str], None], directory: str, meta_fields: dict[str, Any],
         pause_mid_write: float = 0.0) -> tuple[str, CheckpointMeta]:
    """Write a checkpoint atomically and its sidecar after it.

    Args:
        write: writes the checkpoint to the path it is given (``ms.save_checkpoint`` bound to the net).
        directory: the checkpoints folder (created if missing).
        meta_fields: CheckpointMeta fields other than file, size, sha256 and saved_at.
        pause_mid_write: test hook: keep the temporary file half-written this long before the rename.

    Returns:
        The checkpoint's path and its sidecar's content.
    """
    os.makedirs(directory, exist_ok=True)
    name = checkpoint_name(meta_fields["epoch"], meta_fields["step_in_epoch"], meta_fields["global_step"])
    final = os.path.join(directory, name)
    # created exclusively under a fresh name: nothing planted at a predictable name is followed
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX + name[:-len(".ckpt")] + ".", suffix=".ckpt", dir=directory)
    os.close(fd)
    write(tmp)
    _fsync(tmp)
    if pause_mid_write:
        _pause_torn(tmp, pause_mid_write)
    size = os.path.getsize(tmp)
    digest = _sha256(tmp)
    os.replace(tmp, final)
    _fsync(directory)
    meta = CheckpointMeta(file=name, size=size, sha256=digest, saved_at=time.time(), **meta_fields)
    write_json_atomic(sidecar_path(final), asdict(meta), fsync=True)
    _fsync(directory)
    return final, meta


def verify(path: str) -> CheckpointMeta:
    """Return the sidecar of a checkpoint whose file matches it.

    Raises:
        CheckpointError: no such file, no sidecar, an unreadable sidecar, or a size/SHA-256 mismatch.
    """
    meta = verify_sidecar_only(path)
    size = os.path.getsize(path)
    if size != meta.size:
        raise CheckpointError(f"{path}: size {size} bytes differs from the sidecar's {meta.size} (truncated?)")
    if _sha256(path) != meta.sha256:
        raise CheckpointError(f"{path}: SHA-256 differs from the sidecar's (corrupt)")
    return meta


# the sidecar's fields and the JSON types each must have (bool is not an int here)
_SIDECAR_TYPES = {"file": str, "size": int, "sha256": str, "epoch": int, "step_in_epoch": int, "global_step": int,
                  "dataset_seed": int, "fingerprint": dict, "config": dict, "class_names": list, "metrics": dict,
                  "saved_at": (int, float)}


def read_sidecar(side: str) -> CheckpointMeta:
    """The sidecar at ``side``, every field type-checked.

    Raises:
        CheckpointError: unreadable, not JSON, a field missing or unknown, or of the wrong type.
    """
    try:
        with open(side, encoding="utf-8") as handle:
            raw = json.loads(handle.read(1 << 24))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{side}: unreadable sidecar ({exc})") from None
    if not isinstance(raw, dict):
        raise CheckpointError(f"{side}: unreadable sidecar (not a JSON object)")
    unknown = sorted(set(raw) - set(_SIDECAR_TYPES))
    missing = sorted(k for k in ("file", "size", "sha256", "epoch", "step_in_epoch", "global_step", "dataset_seed",
                                 "fingerprint", "config") if k not in raw)
    if unknown or missing:
        raise CheckpointError(f"{side}: unreadable sidecar ({'unknown' if unknown else 'missing'} field "
                              f"{(unknown or missing)[0]!r})")
    for key, value in raw.items():
        kind = _SIDECAR_TYPES[key]
        if isinstance(value, bool) or not isinstance(value, kind) or (kind is int and value < 0):
            raise CheckpointError(f"{side}: unreadable sidecar ({key} has the wrong type: {type(value).__name__})")
    if not re.fullmatch(r"[0-9a-f]{64}", raw["sha256"]):
        raise CheckpointError(f"{side}: unreadable sidecar (sha256 is not a hex digest)")
    return CheckpointMeta(**raw)


def load_verified(path: str) -> tuple[dict, CheckpointMeta]:
    """Read ``path`` once, check those bytes against its sidecar, and load exactly those bytes.

    The bytes go to a private copy (in a 0700 folder, in memory where ``/dev/shm`` exists) that
    MindSpore then reads: a file swapped on disk between the check and the load is never loaded.

    Raises:
        CheckpointError: as ``verify``.
    """
    import tempfile

    meta = verify_sidecar_only(path)
    with open(path, "rb") as handle:
        data = handle.read()
    if len(data) != meta.size:
        raise CheckpointError(f"{path}: size {len(data)} bytes differs from the sidecar's {meta.size} (truncated?)")
    if hashlib.sha256(data).hexdigest() != meta.sha256:
        raise CheckpointError(f"{path}: SHA-256 differs from the sidecar's (corrupt)")
    # a private copy (0700 folder, in memory where /dev/shm exists): MindSpore reads it by name
    shm = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    with tempfile.TemporaryDirectory(prefix="mscluster-load-", dir=shm) as private:
        copy = os.path.join(private, os.path.basename(path))
        fd = os.open(copy, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        del data
        import mindspore as ms  # only now: a bad file is refused without loading MindSpore

        return ms.load_checkpoint(copy), meta


def verify_sidecar_only(path: str) -> CheckpointMeta:
    """The checkpoint's type-checked sidecar (the file's bytes are checked by the caller)."""
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: no such checkpoint file")
    side = sidecar_path(path)
    if not os.path.isfile(side):
        raise CheckpointError(f"{path}: no sidecar {os.path.basename(side)} (incomplete or not written by mscluster)")
    return read_sidecar(side)


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


def _position(path: str) -> tuple[int, int]:
    match = NAME_RE.match(os.path.basename(path))
    return (int(match.group(1)), int(match.group(2))) if match else (-1, -1)


def remove_stale_temporaries(directory: str) -> list[str]:
    """Remove the temporary files of writes that never finished (a process killed mid-save).

    Call it only while no save is in flight in this folder (one writer, between saves).
    """
    removed = []
    if not os.path.isdir(directory):
        return removed
    for name in os.listdir(directory):
        if name.startswith(TMP_PREFIX):
            path = os.path.join(directory, name)
            try:
                os.remove(path)
                removed.append(path)
            except FileNotFoundError:
                pass
    return removed


def prune(directory: str, keep_max: int, newest: Optional[str] = None) -> list[str]:
    """Keep the ``keep_max`` newest complete checkpoints up to ``newest``; remove older ones.

    Called only after a save completed (``newest`` is the one just written). Checkpoints at later
    positions than ``newest`` belong to an abandoned attempt (the run resumed from an earlier
    one): they neither count nor get removed, so a bad file there can never push out the
    checkpoint just written. Files without a sidecar are left for a person to look at; stale
    temporaries of writes that never finished are removed.
    """
    removed = remove_stale_temporaries(directory)
    limit = _position(newest) if newest else None
    good = [p for p in list_checkpoints(directory) if os.path.isfile(sidecar_path(p))
            and (limit is None or _position(p) <= limit)]
    for path in good[:-keep_max] if keep_max > 0 else []:
        for victim in (sidecar_path(path), path):
            try:
                os.remove(victim)
                removed.append(victim)
            except FileNotFoundError:
                pass
    return removed


class CheckpointWriter:
    """Writes checkpoints one at a time, inline or in a background thread, then prunes.

    Each write is ``save`` followed by ``prune``: the atomic rename and the sidecar are the same in
    both modes. In the background, ``submit`` returns once the previous write has finished and the
    new one has started, so the caller must hand it a ``write`` that reads a snapshot, never live
    parameters. An error of a background write is raised by the next ``submit`` or by ``wait``.
    """

    def __init__(self, directory: str, keep_max: int, background: bool = True, pause_mid_write: float = 0.0,
                 on_saved: Optional[Callable[[str, CheckpointMeta, float], None]] = None):
        self.directory, self.keep_max, self.background = directory, keep_max, background
        self.pause_mid_write, self.on_saved = pause_mid_write, on_saved
        self._thread: Optional[threading.Thread] = None
        self._error: Optional[BaseException] = None
        self.last: Optional[tuple[str, CheckpointMeta]] = None

    def _run(self, write: Callable[[str], None], meta_fields: dict[str, Any]) -> None:
        t0 = time.perf_counter()
        try:
            path, meta = save(write, self.directory, meta_fields, self.pause_mid_write)
            prune(self.directory, self.keep_max, newest=path)
        except BaseException as exc:  # noqa: BLE001 - handed to the training thread by wait()
            self._error = exc
            return
        self.last = (path, meta)
        if self.on_saved is not None:
            self.on_saved(path, meta, time.perf_counter() - t0)

    def submit(self, write: Callable[[str], None], meta_fields: dict[str, Any]) -> str:
        """Start writing a checkpoint; return the path it will have once complete."""
        self.wait()
        name = checkpoint_name(meta_fields["epoch"], meta_fields["step_in_epoch"], meta_fields["global_step"])
        if self.background:
            self._thread = threading.Thread(target=self._run, args=(write, meta_fields), daemon=False,
                                            name="mscluster-checkpoint")
            self._thread.start()
        else:
            self._run(write, meta_fields)
            self._raise()
        return os.path.join(self.directory, name)

    def wait(self) -> Optional[tuple[str, CheckpointMeta]]:
        """Wait for the write in flight; return the last complete checkpoint.

        Raises:
            CheckpointError or OSError: the last write failed.
        """
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self._raise()
        return self.last

    def _raise(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error


def fingerprint_mismatch(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Keys whose values differ between a checkpoint's fingerprint and the current settings."""
    keys = sorted(set(saved) | set(current))
    return [f"{k} ({saved.get(k)!r} in the checkpoint, {current.get(k)!r} now)" for k in keys
            if saved.get(k) != current.get(k)]
