"""Monitoring helpers of a training process: TensorBoard events, eval pictures, the progress line, system metrics.

No MindSpore here: everything is plain Python, numpy, Pillow and psutil, so it can be tested
(and reused) without a network. The MindSpore-facing side is ``trainer.callbacks``.

Why a writer of our own instead of ``tensorboardX.SummaryWriter``: SummaryWriter hands every event
to a background thread through a ``multiprocessing.Queue`` and its ``flush()`` does not drain that
queue, so a rank killed right after a checkpoint can lose the points written before it, leaving a
gap after the restart. ``EventWriter`` appends each record to the file itself (tensorboardX's
protobufs and record framing, no thread) and ``flush()`` really flushes: 16 us per step instead of
42 us here. ``purge_step`` works as in SummaryWriter: a SessionLog START at that step makes
TensorBoard drop the points a previous attempt wrote at or past it.
"""
from __future__ import annotations

import logging
import os
import socket
import struct
import threading
import time
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np

from trainer.errors import ConfigError

logger = logging.getLogger(__name__)

SYSTEM_INTERVAL_ENV = "SYSTEM_METRICS_INTERVAL_S"  # seconds between system samples (default 5)
DEFAULT_SYSTEM_INTERVAL_S = 5.0
GRID_SAMPLES = 16  # test images in the eval picture
GRID_COLUMNS = 8
TILE = 96  # pixels per side of one image in the grid (CIFAR's 32 x 3)
CAPTION_H = 26  # two caption lines under each tile
CELL = 30  # pixels per side of one confusion-matrix cell


# -- the event file --------------------------------------------------------------------------------

class EventWriter:
    """One TensorBoard event file, written synchronously; safe to share between threads.

    Args:
        logdir: the run's folder (created).
        purge_step: if given, TensorBoard drops every point an earlier file of this run holds at
            a step >= purge_step (what a resumed attempt needs: it rewrites those steps).
    """

    def __init__(self, logdir: str, purge_step: Optional[int] = None):
        from tensorboardX.proto.event_pb2 import Event, SessionLog
        from tensorboardX.record_writer import masked_crc32c

        self._event, self._crc = Event, masked_crc32c
        os.makedirs(logdir, exist_ok=True)
        self.logdir = logdir
        # the pid keeps two writers started within one second (a quick restart) in two files
        name = f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}"
        self.path = os.path.join(logdir, name)
        self._lock = threading.Lock()
        self._file = open(self.path, "ab")
        self._write(Event(wall_time=time.time(), file_version="brain.Event:2"))
        if purge_step is not None:
            self._write(Event(wall_time=time.time(), step=purge_step,
                              session_log=SessionLog(status=SessionLog.START)))
        self.flush()

    def _write(self, event) -> None:
        data = event.SerializeToString()
        header = struct.pack("<Q", len(data))
        record = header + struct.pack("<I", self._crc(header)) + data + struct.pack("<I", self._crc(data))
        with self._lock:
            if self._file is not None:
                self._file.write(record)

    def add_summary(self, summary, step: int) -> None:
        self._write(self._event(wall_time=time.time(), step=int(step), summary=summary))

    def add_scalars(self, values: Mapping[str, float], step: int) -> None:
        """Several scalars at one step, as one event."""
        from tensorboardX.proto.summary_pb2 import Summary

        self.add_summary(Summary(value=[Summary.Value(tag=tag, simple_value=float(v)) for tag, v in values.items()]),
                         step)

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        self.add_scalars({tag: value}, step)

    def add_image(self, tag: str, image: np.ndarray, step: int) -> None:
        """An RGB uint8 image (H, W, 3), stored as PNG."""
        from tensorboardX import summary

        self.add_summary(summary.image(tag, np.ascontiguousarray(image), dataformats="HWC"), step)

    def add_text(self, tag: str, text: str, step: int) -> None:
        from tensorboardX import summary

        self.add_summary(summary.text(tag, text), step)

    def add_hparams(self, hparams: Mapping[str, Any], metrics: Mapping[str, float], step: int,
                    run: str = "hparams") -> str:
        """The HParams plugin's session (in the sub-run ``run``, as tensorboardX does); returns its folder."""
        from tensorboardX import summary

        exp, ssi, sei = summary.hparams(hparam_values(hparams), dict(metrics))
        sub = EventWriter(os.path.join(self.logdir, run))
        try:
            for s in (exp, ssi, sei):
                sub.add_summary(s, step)
            if metrics:
                sub.add_scalars(metrics, step)
        finally:
            sub.close()
        return sub.logdir

    def flush(self) -> None:
        """Hand everything written so far to the OS: it survives this process being killed."""
        with self._lock:
            if self._file is not None:
                self._file.flush()

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None


def hparam_values(config: Mapping[str, Any]) -> dict[str, Any]:
    """Settings as HParams accepts them: bool, int, float or str (None and others become text)."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        out[key] = value if isinstance(value, (bool, int, float, str)) else str(value)
    return out


def config_markdown(config: Mapping[str, Any], extra: Mapping[str, Any] = ()) -> str:
    """The resolved settings as a Markdown code block (TensorBoard's text tab renders Markdown)."""
    rows = [f"{k}: {v!r}" if isinstance(v, str) else f"{k}: {v}" for k, v in {**dict(config), **dict(extra)}.items()]
    return "\n".join("    " + row for row in rows)


# -- eval pictures (pure: arrays in, arrays out) ---------------------------------------------------

def confusion_counts(preds: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts (C, C), rows = true class, columns = predicted; pairs outside 0..C-1 are left out."""
    preds = np.asarray(preds, np.int64).reshape(-1)
    labels = np.asarray(labels, np.int64).reshape(-1)
    ok = (preds >= 0) & (preds < num_classes) & (labels >= 0) & (labels < num_classes)
    flat = labels[ok] * num_classes + preds[ok]
    return np.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def read_test_images(data_dir: str, count: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``count`` images of the test split as uint8 (N, 32, 32, 3) and their labels.

    The eval pipeline reads the same file in the same order, with these pixels.

    Raises:
        DataError: the test split is missing or malformed.
    """
    from trainer.data import CIFAR_SIDE, RECORD_BYTES, validate_split

    path = validate_split(data_dir, training=False)[0]
    with open(path, "rb") as handle:
        raw = handle.read(RECORD_BYTES * count)
    records = np.frombuffer(raw, np.uint8)[: len(raw) // RECORD_BYTES * RECORD_BYTES].reshape(-1, RECORD_BYTES)
    images = records[:, 1:].reshape(-1, 3, CIFAR_SIDE, CIFAR_SIDE).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), records[:, 0].astype(np.int64)


def _font(size: int = 11):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: the fixed bitmap font
        return ImageFont.load_default()


def _fit(draw, text: str, font, width: int) -> str:
    """``text`` cut (with an ellipsis) to fit ``width`` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"


def prediction_grid(images: np.ndarray, preds: Sequence[int], labels: Sequence[int],
                    class_names: Sequence[str], columns: int = GRID_COLUMNS, tile: int = TILE) -> np.ndarray:
    """A grid of images, each captioned with its predicted (green if right, red if wrong) and true class.

    Returns:
        uint8 (rows * (tile + CAPTION_H), columns * tile, 3) with rows = ceil(N / columns).
    """
    from PIL import Image, ImageDraw

    n = len(images)
    columns = max(1, min(columns, n))
    rows = -(-n // columns)
    canvas = Image.new("RGB", (columns * tile, rows * (tile + CAPTION_H)), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    font = _font()

    def name(i: int) -> str:
        return class_names[i] if 0 <= i < len(class_names) else str(i)

    for k in range(n):
        x, y = (k % columns) * tile, (k // columns) * (tile + CAPTION_H)
        canvas.paste(Image.fromarray(np.asarray(images[k], np.uint8)).resize((tile, tile), Image.NEAREST), (x, y))
        right = int(preds[k]) == int(labels[k])
        draw.text((x + 2, y + tile + 1), _fit(draw, f"pred {name(int(preds[k]))}", font, tile - 4),
                  fill=(0, 130, 0) if right else (200, 0, 0), font=font)
        draw.text((x + 2, y + tile + 13), _fit(draw, f"true {name(int(labels[k]))}", font, tile - 4),
                  fill=(60, 60, 60), font=font)
    return np.asarray(canvas)


def confusion_image(matrix: np.ndarray, class_names: Sequence[str], cell: int = CELL) -> np.ndarray:
    """The confusion matrix as a picture: rows true class, columns predicted, shaded by row share, counts printed.

    Returns:
        uint8 (H, W, 3); H = W = label margin + C * cell + a small border.
    """
    from PIL import Image, ImageDraw

    matrix = np.asarray(matrix, np.int64)
    c = matrix.shape[0]
    font = _font()
    margin = 96  # room for the true-class names on the left and the indices on top
    side = margin + c * cell + 4
    canvas = Image.new("RGB", (side, side), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    draw.text((2, 2), "rows: true", fill=(0, 0, 0), font=font)
    draw.text((2, 14), "cols: predicted", fill=(0, 0, 0), font=font)
    totals = matrix.sum(axis=1, keepdims=True)
    share = np.divide(matrix, totals, out=np.zeros(matrix.shape, float), where=totals > 0)
    for j in range(c):
        draw.text((margin + j * cell + cell // 3, margin - 14), str(j), fill=(0, 0, 0), font=font)
    for i in range(c):
        y = margin + i * cell
        label = class_names[i] if i < len(class_names) else str(i)
        label = label if label == str(i) else f"{i} {label}"
        draw.text((2, y + cell // 3), _fit(draw, label, font, margin - 6), fill=(0, 0, 0), font=font)
        for j in range(c):
            x = margin + j * cell
            level = share[i, j]
            color = (int(255 * (1 - level)), int(255 * (1 - 0.6 * level)), 255)  # white -> blue
            draw.rectangle((x, y, x + cell - 1, y + cell - 1), fill=color, outline=(200, 200, 200))
            text = str(int(matrix[i, j]))
            if len(text) > 4:
                text = f"{matrix[i, j] / 1000:.0f}k"
            draw.text((x + 2, y + cell // 3), text, fill=(255, 255, 255) if level > 0.5 else (0, 0, 0), font=font)
    return np.asarray(canvas)


# -- the progress line (pure) ----------------------------------------------------------------------

def format_duration(seconds: Optional[float]) -> str:
    if seconds is None or not np.isfinite(seconds):
        return "--:--"
    seconds = int(round(max(seconds, 0.0)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def eta_seconds(done: int, total: int, elapsed: float, steps_timed: int) -> Optional[float]:
    """Seconds left for ``total - done`` steps at the mean pace of the ``steps_timed`` steps in ``elapsed``."""
    if steps_timed <= 0 or elapsed <= 0:
        return None
    return (total - done) * elapsed / steps_timed


def format_progress(epoch: int, epochs: int, step: int, steps: int, loss: float, img_s: float,
                    eta_s: Optional[float], width: int = 80) -> str:
    """The live line: ``epoch 1/2 [#####.....] 10/20 loss 2.1034 img/s 117.4 ETA 0:05`` (cut to ``width``)."""
    bar = 20
    filled = min(bar, int(bar * step / steps)) if steps else bar
    text = (f"epoch {epoch}/{epochs} [{'#' * filled}{'.' * (bar - filled)}] {step}/{steps} "
            f"loss {loss:.4f} img/s {img_s:.1f} ETA {format_duration(eta_s)}")
    return text[: max(width - 1, 10)]


def format_plain(epoch: int, epochs: int, step: int, steps: int, global_step: int, loss: float, lr: float,
                 img_s: float, accumulation: int = 1) -> str:
    """The line printed every ``log_every_steps`` steps when stdout is not a terminal.

    Steps are optimizer steps; with gradient accumulation the line ends ``k=<micro-batches a step>``.
    """
    return (f"epoch={epoch}/{epochs} step={step}/{steps} global_step={global_step} loss={loss:.4f} "
            f"lr={lr:.5g} img/s={img_s:.1f}" + (f" k={accumulation}" if accumulation != 1 else ""))


# -- system metrics --------------------------------------------------------------------------------

def system_interval(environ: Mapping[str, str]) -> float:
    """Seconds between system samples, from ``SYSTEM_METRICS_INTERVAL_S`` (default 5).

    Raises:
        ConfigError: the value is not a number > 0.
    """
    raw = environ.get(SYSTEM_INTERVAL_ENV, "")
    if raw == "":
        return DEFAULT_SYSTEM_INTERVAL_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise ConfigError(f"environment: {SYSTEM_INTERVAL_ENV}={raw!r} must be a number of seconds > 0")
    return value


class SystemSampler:
    """Samples this process's RSS (and, on one rank per host, the host's CPU and memory) in a thread.

    A point is written at the current global step only once the step has moved past the last
    point's, so each tag has at most one point per step, in increasing steps; what was sampled in
    between is kept as its maximum (memory) or averaged by psutil since the last point (CPU).

    Args:
        write: called with ``({tag: value}, step)``.
        current_step: the trainer's global step, read from the thread.
        host_metrics: also write ``system/cpu_percent`` and ``system/memory_used_gb``.
        interval_s: seconds between samples.
        start_step: the step training starts from; points come at later steps only.
    """

    def __init__(self, write: Callable[[dict[str, float], int], None], current_step: Callable[[], int],
                 host_metrics: bool, interval_s: float, start_step: int):
        import psutil

        self._psutil = psutil
        self._process = psutil.Process()
        self.write, self.current_step, self.host_metrics = write, current_step, host_metrics
        self.interval_s = interval_s
        self.last_step = start_step
        self._peak: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        if host_metrics:
            psutil.cpu_percent(interval=None)  # the first call only starts psutil's measurement

    def sample(self) -> None:
        """Take one reading; write the pending point if the step moved."""
        reading = {"system/rss_gb": self._process.memory_info().rss / 1e9}
        if self.host_metrics:
            reading["system/memory_used_gb"] = self._psutil.virtual_memory().used / 1e9
        for tag, value in reading.items():
            self._peak[tag] = max(value, self._peak.get(tag, value))
        step = self.current_step()
        if step <= self.last_step:
            return
        point = dict(self._peak)
        if self.host_metrics:
            point["system/cpu_percent"] = self._psutil.cpu_percent(interval=None)
        self.write(point, step)
        self.last_step = step
        self._peak.clear()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.sample()
            except Exception as exc:  # noqa: BLE001 - monitoring must never stop training
                logger.warning("system metrics: %s; no more samples", exc)
                return

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="system-metrics", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
