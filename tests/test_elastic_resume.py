"""Feature: the trainer's side of a shrink at the same global batch, with real processes on CPU.

Description: the shrink itself, end to end (a host lost for good, no spare left, the job goes on with fewer
ranks at grad_accumulation raised, resuming at the same step with one set of weights), is
tests/test_launch_ssh.py's namespace job. Here: a step holds the same images at 4 x 8 and 2 x 16 (the
trainer's pipeline, ~1 s), and one process refuses the shared 2-rank job's checkpoint unless asked
(``resume_other_world``, which the shrink sets; at another global batch also
``resume_other_accumulation``), then resumes at its step (~13 s).
Expectation: the same multiset of images per step; the two refusals in one line naming the setting,
nothing written; the resume at step 8 with the line that says the shape.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest
import yaml


pytestmark = pytest.mark.integration

def test_a_step_holds_the_same_images_at_any_number_of_ranks_of_one_global_batch(cifar_dir):
    """The shards interleave (image i of the epoch's shuffled order on rank i % ranks), so a step of
    4 ranks x 8 images and one of 2 ranks x 16 (k = 2) are the same 32 images; their split among the
    ranks (and so into micro-batches) differs. Read with the trainer's own pipeline, without the
    random crops and flips, which differ per rank."""
    import hashlib
    from collections import Counter

    from trainer.data import create_dataset

    def steps(ranks: int, per_rank: int, count: int = 3, seed: int = 7) -> list[Counter]:
        out = [Counter() for _ in range(count)]
        for rank in range(ranks):
            dataset = create_dataset(cifar_dir, training=False, image_size=32, batch_size=per_rank, rank=rank,
                                     rank_size=ranks, seed=seed, shuffle=True)
            for step, (images, labels) in enumerate(dataset.create_tuple_iterator(num_epochs=1, output_numpy=True)):
                if step == count:
                    break
                out[step].update(hashlib.sha1(image.tobytes() + bytes([int(label)])).hexdigest()
                                 for image, label in zip(images, labels))
        return out

    four, two = steps(4, 8), steps(2, 16)
    assert all(sum(step.values()) == 32 for step in four + two)
    assert four == two
    assert four[0] != four[1]  # not a set that every step holds


def _train(cwd, *pairs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mscluster_cli", "train", "--set", *pairs], cwd=str(cwd),
                          capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def test_a_checkpoint_of_another_world_size_resumes_only_when_asked(succeeded_job, tmp_path):
    """One process goes on from the shared 2-rank job's last checkpoint (step 8 of 2 x 16 x k=1 = 32 images a
    step): refused without resume_other_world; at another global batch refused without
    resume_other_accumulation; asked for, at 1 x 16 x k=2 = 32 images, it resumes at step 8 itself."""
    job = succeeded_job.job
    with open(os.path.join(job, "cluster.yaml"), encoding="utf-8") as handle:
        train = yaml.safe_load(handle)["train"]
    out = tmp_path / "job"
    shutil.copytree(os.path.join(job, "checkpoints"), out / "checkpoints")
    newest = out / "checkpoints" / max(n for n in os.listdir(out / "checkpoints") if n.endswith(".ckpt"))
    assert newest.name.endswith("_s000000008.ckpt"), newest
    same = [f"{k}={v}" for k, v in train.items() if k not in ("output_dir", "resume", "epochs", "tensorboard")]
    base = [*same, f"output_dir={out}", "resume=auto", "epochs=3", "tensorboard=false"]
    refused = _train(tmp_path, *base, "grad_accumulation=2")
    assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr[-2000:]
    assert (f"mscluster train: error: {newest}: taken with 2 ranks, the job has 1; set resume_other_world: true to "
            "resume it at the same global batch (the launcher sets it when the job shrinks with elastic:)"
            ) in refused.stderr.splitlines()
    other = _train(tmp_path, *base, "grad_accumulation=1", "resume_other_world=true")
    line = next((x for x in other.stderr.splitlines() if x.startswith(f"mscluster train: error: {newest}: ")), "")
    assert other.returncode == 2 and "taken with 2 ranks x batch 16 x grad_accumulation 1 = global batch 32" in line \
        and "set resume_other_accumulation: true" in line, other.stderr[-2000:]
    assert sorted(os.listdir(out / "checkpoints")) == sorted(os.listdir(os.path.join(job, "checkpoints")))
    allowed = _train(tmp_path, *base, "grad_accumulation=2", "resume_other_world=true")
    assert allowed.returncode == 0, allowed.stdout[-2000:] + allowed.stderr[-2000:]
    assert ("resuming at step 8 (epoch 3) with 1 rank x batch 16 x grad_accumulation 2 = global batch 32"
            in allowed.stdout.splitlines()), allowed.stdout[-2000:]
    assert re.findall(r"global_step=(\d+) loss=", allowed.stdout)[:2] == ["9", "10"]
