"""Learning-rate schedules as one value per global step (model-zoo style, fed to Momentum).

Pure numpy: the optimizer indexes the array with its own global step, which a checkpoint restores,
so a resumed run continues the schedule at the exact step.
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np


def lr_per_step(kind: str, peak: float, total_steps: int, steps_per_epoch: int,
                warmup_epochs: float = 0.0, start: Optional[float] = None) -> np.ndarray:
    """Learning rate for steps 0..total_steps-1.

    Args:
        kind: constant | warmup_poly (linear warm-up, then (1 - progress)^2 decay) | cosine
            (linear warm-up, then half a cosine to 0).
        peak: the learning rate reached after warm-up.
        warmup_epochs: warm-up length in epochs (may be fractional); ignored by ``constant``.
        start: the warm-up's first value, rising by (peak - start) / warm-up steps a step (the
            model zoo's ``lr_init``, ``src/lr_generator.py``); None: peak / warm-up steps at the
            first step, up to peak at the last.
    """
    steps = np.arange(total_steps, dtype=np.float64)
    if kind == "constant":
        return np.full(total_steps, peak, dtype=np.float32)
    warmup = min(int(round(warmup_epochs * steps_per_epoch)), total_steps)
    lr = np.empty(total_steps, dtype=np.float64)
    if warmup and start is not None:
        lr[:warmup] = start + (peak - start) * steps[:warmup] / warmup
    elif warmup:
        lr[:warmup] = peak * (steps[:warmup] + 1) / warmup
    rest = total_steps - warmup
    if rest:
        progress = (steps[warmup:] - warmup) / rest
        if kind == "warmup_poly":
            lr[warmup:] = peak * (1.0 - progress) ** 2
        elif kind == "cosine":
            lr[warmup:] = peak * 0.5 * (1.0 + np.cos(math.pi * progress))
        else:
            raise ValueError(f"unknown lr_schedule {kind!r}")
    return lr.astype(np.float32)
