"""Feature: ``<job>/status.html``, the picture of a job the launcher keeps next to status.json.

Description: the StatusWriter is fed the typed agent messages of a job (a rank fails) and writes
status.html with status.json; the pure renderer gets hostile strings and a 1024-rank job; a real
headless Chromium (Debian's ``chromium``) loads the file and its DOM is read back.
Expectation: the failed rank's cell has the failed class in the rendered DOM, nothing is fetched
from the network, user strings are escaped, 128 x 8 ranks stay a reasonable size.
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import time

from launcher.protocol import AgentSpec, Exited, ProcessSpec, Relayed, Started
from launcher.status import StatusWriter, write_status_html
from launcher.statushtml import STATUS_HTML, render_status_html
from mscluster import events


def _writer(tmp_path, hosts=("node-a", "node-b"), per_host=2) -> StatusWriter:
    specs = {}
    for h, host in enumerate(hosts):
        procs = tuple(ProcessSpec(f"rank{h * per_host + i}", ("x",), (), rank=h * per_host + i, device_id=i)
                      for i in range(per_host))
        specs[host] = AgentSpec(host=host, job_dir="/unused", processes=procs)
    return StatusWriter(str(tmp_path), specs, attempt=0)


def _failed_job(tmp_path) -> StatusWriter:
    writer = _writer(tmp_path)
    t0 = time.time()
    for r in range(4):
        host = "node-a" if r < 2 else "node-b"
        writer.on_message(host, Started(name=f"rank{r}", pid=100 + r))
        for step in (1, 2, 3):
            writer.on_message(host, Relayed(name=f"rank{r}", event=events.Progress(step=step, time=t0 + step * 0.25)))
    writer.on_message("node-b", Exited(name="rank3", rank=3, code=7, signal=None, time=time.time()))
    return writer


def test_the_writer_keeps_status_html_with_each_rank_state_step_and_step_time(tmp_path):
    _failed_job(tmp_path)
    page = (tmp_path / STATUS_HTML).read_text()
    cells = {rank: state for state, rank in re.findall(r'class="cell (\w+)" data-rank="(\d+)"', page)}
    assert cells == {"0": "running", "1": "running", "2": "running", "3": "failed"}
    assert "<td>0.250</td>" in page  # step time: 3 steps a quarter second apart
    assert '<span class="host" title="node-b">node-b</span>' in page
    assert "http://" not in page and "https://" not in page and "<script" not in page  # self-contained
    status = json.loads((tmp_path / "status.json").read_text())
    assert status["processes"]["rank0"]["step_s"] == 0.25


def test_the_end_of_the_job_adds_root_cause_attempts_and_goodput(tmp_path):
    _failed_job(tmp_path).attempt_ended(ok=False, interrupted=False)
    (tmp_path / "result.json").write_text(json.dumps({
        "status": "failed", "exit_code": 1, "restarts": 0, "eval": {},
        "failures": [{"name": "rank3", "host": "node-b", "rank": 3, "exit_code": 7, "signal": None,
                      "message": "ValueError: <bad> & worse", "attempt": 0}],
        "attempts": [{"attempt": 0, "ok": False, "started_at": 1.0, "ended_at": 11.0, "detect_s": 0.5,
                      "root_cause": {"name": "rank3", "host": "node-b", "exit_code": 7,
                                     "message": "ValueError: <bad> & worse"}}],
        "goodput": {"effective_training_ratio": 0.5}}))
    write_status_html(str(tmp_path))
    page = (tmp_path / STATUS_HTML).read_text()
    assert 'id="root-cause">rank3 on node-b (exit 7): ValueError: &lt;bad&gt; &amp; worse' in page
    assert 'id="goodput">goodput (effective training ratio): 50.0%' in page
    assert "<td>10.0</td>" in page  # the attempt's seconds
    assert 'http-equiv="refresh"' not in page  # an ended job's page stops reloading


def test_every_user_string_is_escaped():
    evil = '<img src=x onerror=alert(1)>"\''
    status = {"state": "running", "attempt": 0, "world_size": 1, "launcher": {"pid": 1, "host": evil},
              "eval": {evil: 1}, "processes": {evil: {"host": evil, "rank": 0, "state": evil, "signal": evil,
                                                      "exit_code": None}}}
    page = render_status_html(status, {"status": evil, "failures": [{"name": evil, "message": evil}]}, now=0)
    assert "<img" not in page and "onerror=alert(1)>" not in page
    assert 'class="cell pending"' in page  # an unknown state word is never a class name


def test_a_1024_rank_job_renders_in_a_reasonable_size():
    processes = {f"rank{r}": {"host": f"node{r // 8:03d}", "rank": r, "state": "failed" if r == 517 else "running",
                              "pid": 10000 + r, "global_step": 123456, "step_s": 0.123, "loss": 1.2345}
                 for r in range(1024)}
    started = time.perf_counter()
    page = render_status_html({"state": "running", "attempt": 0, "world_size": 1024, "processes": processes}, now=0)
    assert time.perf_counter() - started < 1.0  # rendered every half second at most
    assert len(page) < 400_000, len(page)
    assert page.count('<span class="host"') == 128 and page.count('class="cell ') == 1024


def _chromium():
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        from sshd_util import skip_or_fail

        skip_or_fail("chromium is not installed (scripts/ci_system_deps.sh installs Debian's chromium)")
    return found


def test_a_real_headless_chromium_renders_the_page_and_shows_the_failed_rank_failed(tmp_path):
    chromium = _chromium()
    _failed_job(tmp_path)
    url = f"file://{tmp_path / STATUS_HTML}"
    args = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
            f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([*args, "--dump-dom", url], capture_output=True, text=True, timeout=120).stdout
    assert re.search(r'<span class="cell failed" data-rank="3" data-state="failed"', dom), dom[:2000]
    assert len(re.findall(r'class="cell running"', dom)) == 3
    shot = tmp_path / "shot.png"
    subprocess.run([*args, f"--screenshot={shot}", "--window-size=1000,700", url], capture_output=True, timeout=120)
    assert shot.stat().st_size > 5000  # a page was painted, not an empty frame
