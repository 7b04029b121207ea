"""Feature: data-parallel training with the MindSpore dynamic cluster (scheduler + 2 workers on CPU).

Description: two real worker processes train a small ResNet on disjoint shards of the stand-in.
Expectation: both end with bit-identical trainable weights and a finite loss, only rank 0 wrote
checkpoints and printed the eval line, and the checkpoint evaluates to what was printed. With the
shared-memory exchange (the ranks told they share a host) the same holds, and every step's loss is
the collective's to float rounding: both average the same gradients.
"""
from __future__ import annotations

import math
import os
import re
import subprocess
import sys

import pytest

from cluster_helper import run_dynamic_cluster
from helpers import side_by_side

pytestmark = pytest.mark.integration

SMALL = ["arch=resnet18", "stem=cifar", "width=8", "image_size=32", "batch_size=16",
         "steps_per_epoch=6", "epochs=2", "lr=0.02", "log_every_steps=2", "tensorboard=false"]


EVAL_IMAGES = 600  # the test split's first 600 images: rank 0's 300 and rank 1's 300


def _final(output: str) -> dict[str, str]:
    match = re.search(r"^final rank=(\d+) global_step=(\d+) loss=(\S+) weights_sha256=([0-9a-f]+)$", output, re.M)
    assert match, output[-3000:]
    return dict(zip(("rank", "global_step", "loss", "sha"), match.groups()))


@pytest.fixture(scope="module")
def runs(tmp_path_factory, cifar_dir):
    """Both jobs below, side by side (tests.helpers.side_by_side): each mostly waits on its cluster."""
    dp, shm = tmp_path_factory.mktemp("dp"), tmp_path_factory.mktemp("dp-shm")
    # one evaluation, at the end: each is a pass over the 10,000 test records
    collective = SMALL + [f"data_dir={cifar_dir}", f"output_dir={dp / 'out'}", "eval_every_epochs=2",
                          f"eval_images={EVAL_IMAGES}"]
    # no evaluation: it does not change the weights, and the other run's already proves it
    shared = SMALL + [f"data_dir={cifar_dir}", f"output_dir={shm / 'out'}", "grad_exchange=shared_memory",
                      "eval_every_epochs=0"]
    with side_by_side({"two_rank": lambda: (run_dynamic_cluster(2, collective, str(dp)), dp / "out"),
                       "shared_memory": lambda: run_dynamic_cluster(2, shared, str(shm), one_host=True)}) as futures:
        yield futures


@pytest.fixture(scope="module")
def two_rank_run(runs):
    return runs["two_rank"].result()


@pytest.fixture(scope="module")
def shared_memory_run(runs):
    return runs["shared_memory"].result()


def _losses(output: str) -> list[float]:
    return [float(v) for v in re.findall(r"global_step=\d+ loss=(\S+)", output)]


def test_shared_memory_averages_what_the_collective_averages(two_rank_run, shared_memory_run):
    _, rank0, rank1 = shared_memory_run
    for r in shared_memory_run:
        assert r.returncode == 0, f"{r.role} exited {r.returncode}:\n{r.output[-3000:]}"
    assert "gradient exchange: shared_memory" in rank0.output
    f0, f1 = _final(rank0.output), _final(rank1.output)
    assert f0["global_step"] == f1["global_step"] == "12"
    assert f0["sha"] == f1["sha"], "the ranks ended with different weights"
    collective = two_rank_run[0][1].output
    assert "gradient exchange: collective" in collective
    assert len(_losses(rank0.output)) == len(_losses(collective)) == 7  # steps 2, 4, ..., 12 and the final line
    assert _losses(rank0.output) == pytest.approx(_losses(collective), rel=2e-3)


def test_two_workers_train_one_model(two_rank_run):
    results, out = two_rank_run
    sched, rank0, rank1 = results
    for r in results:
        assert r.returncode == 0, f"{r.role} exited {r.returncode}:\n{r.output[-3000:]}"
    f0, f1 = _final(rank0.output), _final(rank1.output)
    assert (f0["rank"], f1["rank"]) == ("0", "1")
    assert f0["global_step"] == f1["global_step"] == "12"
    assert math.isfinite(float(f0["loss"])) and math.isfinite(float(f1["loss"]))
    assert f0["sha"] == f1["sha"], "the ranks ended with different weights"
    # the ranks saw different shards: their per-step losses differ
    losses0 = re.findall(r"global_step=\d+ loss=(\S+)", rank0.output)
    losses1 = re.findall(r"global_step=\d+ loss=(\S+)", rank1.output)
    assert losses0 and losses0 != losses1


def test_only_rank0_checkpoints_and_evaluates(two_rank_run, cifar_dir):
    results, out = two_rank_run
    _, rank0, rank1 = results
    ckpts = sorted(p for p in os.listdir(out / "checkpoints") if p.endswith(".ckpt"))
    assert ckpts == ["ckpt_e0001_s000000006.ckpt", "ckpt_e0002_s000000012.ckpt"]
    assert "checkpoint saved" in rank0.output and "checkpoint saved" not in rank1.output
    evals = re.findall(r"^eval epoch=(\d+) top1=([\d.]+) loss=([\d.]+)$", rank0.output, re.M)
    assert [e[0] for e in evals] == ["2"]
    assert "eval epoch=" not in rank1.output

    # reload: eval on the saved checkpoint gives the accuracy printed at save time
    last = str(out / "checkpoints" / ckpts[-1])
    proc = subprocess.run([sys.executable, "-m", "mscluster_cli", "eval", "--checkpoint", last,
                           "--data-dir", cifar_dir, "--images", str(EVAL_IMAGES)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert re.search(rf"^top1={evals[-1][1]} loss=\S+ images={EVAL_IMAGES}$", proc.stdout, re.M), (proc.stdout, evals)
