"""Feature: monitoring a job: TensorBoard event files from every rank, the progress line, status/logs/tensorboard.

Description: unit checks of the event writer (read back with TensorBoard's own reader), the eval
pictures, the progress line and the system sampler; then real 2-rank launches: one that succeeds
(polled with ``status`` while it runs) and one whose rank 1 fails at step 5 twice (restarts: 1,
resumed from the step-4 checkpoint in between); and one process trained in a pseudo-terminal.
Expectation: every tag on every rank with the expected points at increasing steps, pictures of
the right size, no step written twice or lost across the restart, the progress line drawn in a
terminal and no control character in any log, status right while running and after success or
failure, ``logs --rank 1`` only rank 1's lines, ``tensorboard`` serving on 127.0.0.1.
"""
from __future__ import annotations

import json
import math
import os
import pty
import re
import signal
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest

from helpers import free_port, kill_group
from trainer.monitor import (CAPTION_H, TILE, EventWriter, SystemSampler, confusion_counts, confusion_image,
                             format_progress, prediction_grid, read_test_images)

TRAIN_TAGS = ["train/loss", "train/lr", "train/step_time_ms", "train/data_wait_ms", "train/throughput_img_per_s"]
HOST_TAGS = ["system/cpu_percent", "system/memory_used_gb"]


def _accumulator(run_dir: str):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(run_dir, size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    return acc


def _steps(acc, tag: str) -> list[int]:
    return [e.step for e in acc.Scalars(tag)]


def _png_size(data: bytes) -> tuple[int, int]:
    from PIL import Image
    import io

    with Image.open(io.BytesIO(data)) as image:
        return image.size


# -- units -----------------------------------------------------------------------------------------

def test_event_file_reads_back_with_tensorboard(tmp_path):
    writer = EventWriter(str(tmp_path / "run"), purge_step=1)
    for step in range(1, 4):
        writer.add_scalars({"train/loss": 1.0 / step, "train/lr": 0.1}, step)
    image = np.zeros((20, 30, 3), np.uint8)
    image[:, :, 0] = 255
    writer.add_image("eval/picture", image, 3)
    writer.add_text("config", "    lr: 0.1", 0)
    hp_dir = writer.add_hparams({"lr": 0.1, "arch": "resnet18", "steps_per_epoch": None}, {"hparam/top1": 0.5}, 3)
    writer.close()
    acc = _accumulator(str(tmp_path / "run"))
    assert _steps(acc, "train/loss") == [1, 2, 3]
    assert [round(e.value, 4) for e in acc.Scalars("train/loss")] == [1.0, 0.5, 0.3333]
    [img] = acc.Images("eval/picture")
    assert (img.width, img.height, img.step) == (30, 20, 3) and _png_size(img.encoded_image_string) == (30, 20)
    assert "config/text_summary" in acc.Tags()["tensors"]
    hp = _accumulator(hp_dir)
    assert [e.value for e in hp.Scalars("hparam/top1")] == [0.5]
    assert {"_hparams_/experiment", "_hparams_/session_start_info"} <= set(hp.PluginTagToContent("hparams"))


@pytest.mark.parametrize("purge", [True, False])
def test_a_resumed_attempt_replaces_the_points_past_its_start(tmp_path, purge):
    """Attempt A ran to step 6 (eval at 6); B resumed from step 4 and redid 5..6: each step once, B's values."""
    run = str(tmp_path / "rank_0")
    a = EventWriter(run, purge_step=1)
    for step in range(1, 7):
        a.add_scalar("train/loss", 10.0 + step, step)
    a.add_scalar("eval/top1", 0.1, 6)
    a.close()
    time.sleep(1.1)  # a later attempt: a later file name
    b = EventWriter(run, purge_step=5 if purge else None)
    for step in (5, 6):
        b.add_scalar("train/loss", 20.0 + step, step)
    b.add_scalar("eval/top1", 0.2, 6)
    b.close()
    acc = _accumulator(run)
    loss = [(e.step, e.value) for e in acc.Scalars("train/loss")]
    top1 = [(e.step, round(e.value, 2)) for e in acc.Scalars("eval/top1")]
    if purge:
        assert loss == [(s, 10.0 + s) for s in range(1, 5)] + [(5, 25.0), (6, 26.0)]
        assert top1 == [(6, 0.2)]
    else:  # what purge_step prevents: TensorBoard shows both attempts' points at steps 5 and 6
        assert [s for s, _ in loss] == [1, 2, 3, 4, 5, 6, 5, 6]
        assert top1 == [(6, 0.1), (6, 0.2)]


def test_system_sampler_writes_at_most_one_point_per_step(tmp_path):
    run = str(tmp_path / "run")
    writer = EventWriter(run)
    step = {"now": 0}
    sampler = SystemSampler(writer.add_scalars, lambda: step["now"], host_metrics=False, interval_s=0.02, start_step=0)
    sampler.sample()  # still at the start step: nothing yet
    step["now"] = 3
    sampler.sample()
    sampler.sample()  # same step: kept for later
    step["now"] = 5
    sampler.sample()
    sampler.start()
    for s in range(6, 12):
        step["now"] = s
        time.sleep(0.06)
    sampler.stop()
    writer.close()
    acc = _accumulator(run)
    assert acc.Tags()["scalars"] == ["system/rss_gb"]  # host metrics come from one rank per host
    steps = _steps(acc, "system/rss_gb")
    assert steps[:2] == [3, 5] and len(steps) >= 4
    assert steps == sorted(set(steps)) and steps[-1] <= 11
    assert all(0.01 < e.value < 64 for e in acc.Scalars("system/rss_gb"))

    host = SystemSampler(writer.add_scalars, lambda: 1, host_metrics=True, interval_s=1, start_step=0)
    points = []
    host.write = lambda values, at: points.append((sorted(values), at))
    host.sample()
    assert points == [(sorted(HOST_TAGS + ["system/rss_gb"]), 1)]


def test_eval_pictures_have_their_documented_size():
    counts = confusion_counts(np.array([0, 1, 1, 2, 9]), np.array([0, 1, 2, 2, 1]), 10)
    assert counts.sum() == 5 and counts[0, 0] == 1 and counts[2, 1] == 1 and counts[1, 9] == 1
    assert confusion_counts(np.array([3, 12]), np.array([3, 3]), 10).sum() == 1  # out-of-range left out
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    picture = confusion_image(counts, names)
    assert picture.dtype == np.uint8 and picture.shape == (96 + 10 * 30 + 4, 96 + 10 * 30 + 4, 3)
    images = np.random.default_rng(0).integers(0, 255, (11, 32, 32, 3), dtype=np.uint8)
    grid = prediction_grid(images, [1] * 11, list(range(11)), names, columns=8)
    assert grid.shape == (2 * (TILE + CAPTION_H), 8 * TILE, 3)
    # a right prediction is captioned green, a wrong one red
    caption = grid[TILE:TILE + 13]
    right, wrong = caption[:, TILE:2 * TILE], caption[:, 2 * TILE:3 * TILE]
    assert ((wrong[..., 0] > 150) & (wrong[..., 1] < 80)).any()
    assert not ((right[..., 0] > 150) & (right[..., 1] < 80)).any()


@pytest.mark.mindspore
def test_first_test_images_are_those_the_eval_pipeline_reads_first(cifar_dir):
    from trainer.callbacks import sample_inputs
    from trainer.data import create_dataset

    images, labels = read_test_images(cifar_dir, 16)
    assert images.shape == (16, 32, 32, 3) and images.dtype == np.uint8
    _, sample_labels, inputs = sample_inputs(cifar_dir, 32, 16)
    batch = next(create_dataset(cifar_dir, training=False, image_size=32, batch_size=16)
                 .create_tuple_iterator(num_epochs=1, output_numpy=True))
    assert np.array_equal(batch[1], labels) and np.array_equal(sample_labels, labels)
    assert np.array_equal(batch[0], inputs)  # the grid's predictions are made on what eval sees


@pytest.mark.mindspore
def test_eval_pictures_and_hparams_of_a_real_network(tmp_path, cifar_dir):
    """StepMonitor.log_eval on rank 0 of a one-epoch run: scalars, both pictures, then hparams."""
    from trainer.callbacks import StepMonitor, predict_classes, sample_inputs
    from trainer.config import from_dict
    from trainer.distributed import RankInfo
    from trainer.resnet import build_resnet

    cfg = from_dict({"data_dir": cifar_dir, "arch": "resnet18", "stem": "cifar", "width": 4, "image_size": 32,
                     "batch_size": 16, "epochs": 1})
    net = build_resnet("resnet18", num_classes=10, width=4, stem="cifar")
    monitor = StepMonitor(cfg, RankInfo(), 1, np.full(1, 0.1, np.float32), str(tmp_path / "tb"), 0)
    confusion = np.arange(100).reshape(10, 10)
    net.set_train(True)
    monitor.log_eval(1, {"top1": 0.25, "loss": 2.0}, confusion, net)
    assert net.training  # back in training mode after the forward pass
    monitor.close()
    acc = _accumulator(str(tmp_path / "tb"))
    assert [e.value for e in acc.Scalars("eval/top1")] == [0.25]
    [grid] = acc.Images("eval/predictions")
    assert _png_size(grid.encoded_image_string) == (8 * TILE, 2 * (TILE + CAPTION_H))
    [matrix] = acc.Images("eval/confusion_matrix")
    assert _png_size(matrix.encoded_image_string) == (400, 400)
    assert [e.value for e in _accumulator(str(tmp_path / "tb" / "hparams")).Scalars("hparam/top1")] == [0.25]
    preds = predict_classes(net, sample_inputs(cifar_dir, 32, 16)[2])
    assert preds.shape == (16,) and preds.min() >= 0 and preds.max() < 10


def test_progress_line_fits_the_terminal():
    line = format_progress(1, 2, 10, 20, 2.25, 117.4, 65, width=200)
    assert line == "epoch 1/2 [##########..........] 10/20 loss 2.2500 img/s 117.4 ETA 1:05"
    assert len(format_progress(1, 2, 10, 20, 2.25, 117.4, None, width=40)) == 39
    assert "ETA --:--" in format_progress(1, 2, 1, 20, 2.25, 1.0, None)


# -- real processes --------------------------------------------------------------------------------

def _cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mscluster_cli", *args], capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def finished(succeeded_job):
    """The session's shared 2-rank job of 2 epochs x 4 steps with eval each epoch (tests/shared_jobs.py),
    polled with `status` while it ran."""
    return {"job": succeeded_job.job, "returncode": succeeded_job.returncode, "output": succeeded_job.output,
            "seen": succeeded_job.seen, "cli_running": succeeded_job.cli_running}


def _ok(run: dict) -> None:
    assert run["returncode"] == 0, run["output"][-4000:]


@pytest.mark.integration
def test_every_rank_writes_every_tag(finished):
    _ok(finished)
    tb = os.path.join(finished["job"], "tensorboard")
    result = json.load(open(os.path.join(finished["job"], "result.json")))
    rank0, rank1 = _accumulator(os.path.join(tb, "rank_0")), _accumulator(os.path.join(tb, "rank_1"))
    for acc in (rank0, rank1):
        for tag in TRAIN_TAGS:
            assert _steps(acc, tag) == list(range(1, 9)), tag
        assert all(math.isfinite(e.value) for e in acc.Scalars("train/loss"))
        rss = _steps(acc, "system/rss_gb")
        assert rss and rss == sorted(set(rss)) and 1 <= rss[0] and rss[-1] <= 8
    assert _steps(rank0, "train/throughput_img_per_s_job") == list(range(1, 9))
    for tag in HOST_TAGS:  # both ranks share the host: rank 0 (LOCAL_RANK 0) reports it
        steps = _steps(rank0, tag)
        assert steps and steps == sorted(set(steps)), tag
        assert tag not in rank1.Tags()["scalars"]
    assert _steps(rank0, "eval/top1") == _steps(rank0, "eval/loss") == [4, 8]
    assert rank0.Scalars("eval/top1")[-1].value == pytest.approx(result["eval"]["top1"], abs=1e-4)
    assert not any(t.startswith("eval/") for t in rank1.Tags()["scalars"] + rank1.Tags()["images"])
    # pictures at each evaluation, of the size the renderers promise
    grid = rank0.Images("eval/predictions")
    assert [i.step for i in grid] == [4, 8]
    assert {_png_size(i.encoded_image_string) for i in grid} == {(8 * TILE, 2 * (TILE + CAPTION_H))}
    matrix = rank0.Images("eval/confusion_matrix")
    assert [i.step for i in matrix] == [4, 8]
    assert {_png_size(i.encoded_image_string) for i in matrix} == {(400, 400)}
    # the settings as text, and as hparams with the final top1
    [text] = rank0.Tensors("config/text_summary")
    assert "arch: 'resnet18'" in text.tensor_proto.string_val[0].decode()
    hp = _accumulator(os.path.join(tb, "rank_0", "hparams"))
    assert [e.value for e in hp.Scalars("hparam/top1")] == [pytest.approx(result["eval"]["top1"], abs=1e-4)]


@pytest.mark.integration
def test_status_while_running_and_after_success(finished):
    _ok(finished)
    running = [step for state, step in finished["seen"] if state == "running" and step]
    assert running and running == sorted(running), finished["seen"]
    cli = finished["cli_running"]
    assert cli is not None and cli.returncode == 0, cli
    assert "state:     running (attempt 1 of 1)" in cli.stdout and "progress:  epoch " in cli.stdout
    proc = _cli("status", finished["job"])
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    top1 = json.load(open(os.path.join(finished["job"], "result.json")))["eval"]["top1"]
    assert "state:     succeeded (attempt 1 of 1)" in text
    assert "progress:  epoch 2/2, step 4/4 (global step 8)" in text
    assert f"last eval: epoch 2, top1 {top1:.4f}" in text
    rows = {line.split()[0]: line.split()[2] for line in text.splitlines()[text.splitlines().index(
        next(l for l in text.splitlines() if l.split()[:2] == ["rank", "host"])) + 1:]}
    # the trainer's workers leave without MindSpore's cluster teardown: the launcher stops the scheduler
    assert rows == {"0": "succeeded", "1": "succeeded", "sched": "stopped"}
    as_json = json.loads(_cli("status", finished["job"], "--json").stdout)
    assert as_json["state"] == "succeeded" and as_json["attempt"] == 0


@pytest.mark.integration
def test_logs_one_rank_or_all_merged(finished):
    _ok(finished)
    job = finished["job"]
    one = _cli("logs", job, "--rank", "1")
    assert one.returncode == 0, one.stderr
    assert one.stdout == open(os.path.join(job, "logs", "rank_1.log")).read()
    assert "final rank=1 " in one.stdout and "final rank=0 " not in one.stdout and "eval epoch" not in one.stdout
    merged = _cli("logs", job).stdout.splitlines()
    assert any(l.startswith("[localhost:0] final rank=0 ") for l in merged)
    assert any(l.startswith("[localhost:1] final rank=1 ") for l in merged)
    for rank in (0, 1):  # merged by arrival: each rank's lines keep their order
        own = open(os.path.join(job, "logs", f"rank_{rank}.log")).read().splitlines()
        prefix = f"[localhost:{rank}] "
        assert [l[len(prefix):] for l in merged if l.startswith(prefix)] == own
    followed = _cli("logs", job, "--follow", timeout=30)  # an ended job: prints all and returns
    assert followed.returncode == 0 and followed.stdout.splitlines() == merged


@pytest.mark.integration
def test_no_control_characters_in_piped_output(finished):
    _ok(finished)
    logs = os.path.join(finished["job"], "logs")
    for name in os.listdir(logs):
        text = open(os.path.join(logs, name)).read()
        assert "\r" not in text and "\x1b" not in text, name
    assert re.search(r"^\[localhost:0\] epoch=2/2 step=4/4 global_step=8 loss=", finished["output"], re.M)
    assert "\r" not in finished["output"] and "\x1b" not in finished["output"]


@pytest.mark.integration
def test_tensorboard_command_serves_the_job_on_localhost(finished):
    import psutil

    _ok(finished)
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "mscluster_cli", "tensorboard", finished["job"], "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True, text=True)
    try:
        deadline = time.monotonic() + 90
        page = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                page = urllib.request.urlopen(f"http://127.0.0.1:{port}/data/runs", timeout=2).read().decode()
                break
            except OSError:
                time.sleep(0.5)
        assert page is not None, proc.stdout.read() if proc.poll() is not None else "no answer"
        listening = [c.laddr for p in [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
                     for c in p.net_connections("tcp") if c.status == psutil.CONN_LISTEN and c.laddr.port == port]
        assert listening and {a.ip for a in listening} == {"127.0.0.1"}
        deadline = time.monotonic() + 60
        while "rank_1" not in page and time.monotonic() < deadline:  # runs appear once TensorBoard has read them
            time.sleep(1)
            page = urllib.request.urlopen(f"http://127.0.0.1:{port}/data/runs", timeout=5).read().decode()
        assert "rank_0" in page and "rank_1" in page, page
    finally:
        kill_group(proc)
        proc.wait()


@pytest.mark.integration
def test_tensorboard_command_without_tensorboard_prints_the_command(finished):
    code = ("import sys; sys.modules['tensorboard'] = None; from mscluster_cli.main import main; "
            f"sys.exit(main(['tensorboard', {finished['job']!r}]))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "not installed" in proc.stdout
    logdir = os.path.join(finished["job"], "tensorboard")
    assert f"tensorboard --logdir {logdir} --host 127.0.0.1 --port 6006" in proc.stdout


@pytest.fixture(scope="module")
def failed_after_restart(failed_job):
    """The shared failing job (tests/shared_jobs.py): rank 1 fails at step 5; restarts: 1 resumes from the
    step-4 checkpoint; it fails at step 5 again."""
    return {"job": failed_job.job, "returncode": failed_job.returncode, "output": failed_job.output}


@pytest.mark.integration
def test_no_step_twice_or_lost_after_a_restart(failed_after_restart):
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    run = failed_after_restart
    assert run["returncode"] == 1, run["output"][-4000:]
    assert "resumed from" in open(os.path.join(run["job"], "logs", "rank_0.log")).read(), run["output"][-4000:]
    for rank in (0, 1):
        folder = os.path.join(run["job"], "tensorboard", f"rank_{rank}")
        files = sorted(f for f in os.listdir(folder) if ".tfevents." in f)
        assert len(files) == 2, files  # one per attempt
        # the resumed attempt's file tells TensorBoard to drop what attempt 0 wrote past step 4
        starts = [e.step for e in EventFileLoader(os.path.join(folder, files[1])).Load()
                  if e.HasField("session_log") and e.session_log.status == 1]
        assert starts == [5]
        acc = _accumulator(folder)
        for tag in TRAIN_TAGS:
            assert _steps(acc, tag) == [1, 2, 3, 4, 5], (rank, tag)


@pytest.mark.integration
def test_status_of_a_failed_job(failed_after_restart):
    run = failed_after_restart
    assert run["returncode"] == 1, run["output"][-4000:]
    proc = _cli("status", run["job"])
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    assert "state:     failed (attempt 2 of 2)" in text, text
    assert "root cause: rank1 on localhost (exit 3): InjectedFault: debug_fail_step: rank 1 fails at step 5" in text
    states = {l.split()[0]: " ".join(l.split()[2:4]) for l in text.splitlines()
              if l.strip() and l.split()[0] in ("0", "1")}
    assert states["1"] == "failed (exit", text
    assert states["0"].startswith("stopped"), text
    assert "===== mscluster: attempt 1 (restart 1) =====" in _cli("logs", run["job"]).stdout


@pytest.mark.integration
def test_progress_line_is_drawn_in_a_terminal(tmp_path, cifar_dir):
    master, slave = pty.openpty()
    argv = [sys.executable, "-m", "mscluster_cli", "train", "--set", f"data_dir={cifar_dir}", "arch=resnet18",
            "stem=cifar", "width=8", "image_size=32", "batch_size=16", "steps_per_epoch=12", "epochs=1",
            "eval_every_epochs=0", "tensorboard=false", "lr=0.02", f"output_dir={tmp_path / 'out'}"]
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=slave, stderr=slave, cwd=str(tmp_path),
                            start_new_session=True)
    os.close(slave)
    output = b""
    try:
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            output += chunk
        proc.wait(timeout=120)
    finally:
        os.close(master)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    text = output.decode(errors="replace")
    assert proc.returncode == 0, text[-3000:]
    draws = re.findall(r"\repoch 1/1 \[[#.]{20}\] (\d+)/12 loss \d+\.\d{4} img/s [\d.]+ ETA [\d:-]+\x1b\[K", text)
    assert draws and draws[-1] == "12" and len(draws) >= 2, text[-3000:]
    assert "\x1b[K\r\n" in text  # the finished line is kept, the next output starts on a new line
    assert "epoch=1/1 step=" not in text  # no plain lines in a terminal


@pytest.mark.mindspore
def test_a_step_with_the_exchange_on_the_host_reports_its_time_outside_it(monkeypatch):
    """StepMonitor's progress event: compute_s (the straggler scores' time) only where the step timed its exchange."""
    import io

    import mindspore as ms

    from mscluster import events
    from trainer import callbacks
    from trainer.config import from_dict
    from trainer.distributed import RankInfo

    sent = []
    monitor = callbacks.StepMonitor(from_dict({"epochs": 1}), RankInfo(), 4, np.full(4, 0.1, np.float32), None, 0,
                                    stream=io.StringIO())
    monkeypatch.setattr(callbacks, "report", lambda step, **fields: sent.append(fields))

    class Args:
        net_outputs = ms.Tensor(1.5, ms.float32)
        cur_step_num = 0

    class Context:
        args = Args()

        def original_args(self):
            return self.args

    context = Context()
    for exchange_s in (None, 0.0):  # MindSpore's own step (no exchange_s), then a host exchange of no time
        if exchange_s is not None:
            Args.exchange_s = exchange_s
        monitor.on_train_step_begin(context)
        Args.cur_step_num += 1
        monitor.on_train_step_end(context)
    assert events.COMPUTE_S not in sent[0]
    assert sent[1][events.COMPUTE_S] > 0  # the whole step was outside the exchange
