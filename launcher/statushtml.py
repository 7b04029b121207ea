"""A picture of the job: ``<job>/status.html`` from the same data as ``status.json`` (pure).

One self-contained file (inline CSS, no script, nothing fetched): each host a row of device
cells coloured by the process's state (rows side by side as the window allows), each cell
titled with its rank, step and step time; the root cause and the failure table; the attempts and goodput once ``result.json`` has them. Every
string that came from a user (host names, process names, messages, paths) is escaped. A cell is
a few dozen bytes, so 128 hosts x 8 devices stay a few hundred KiB.
"""
from __future__ import annotations

import html
import time
from typing import Any, Mapping, Optional

STATUS_HTML = "status.html"

_CSS = """
body{font:13px/1.4 system-ui,sans-serif;margin:16px;color:#222;background:#fff}
h1{font-size:17px;margin:0 0 4px}h2{font-size:14px;margin:16px 0 4px}
table{border-collapse:collapse}td,th{padding:1px 6px;text-align:left;border-bottom:1px solid #eee}
.grid{display:flex;flex-wrap:wrap;gap:2px 18px}.hostrow{white-space:nowrap}
.host{display:inline-block;width:96px;font-family:monospace;overflow:hidden;text-overflow:ellipsis;vertical-align:top;
line-height:30px}
.cell{display:inline-block;width:42px;height:30px;margin:1px;border-radius:3px;font:10px/1.2 monospace;
text-align:center;overflow:hidden;color:#111;vertical-align:top}
.pending{background:#ddd}.running{background:#8fd18f}.succeeded{background:#4e9be8}
.failed{background:#e5484d;color:#fff}.stopped{background:#f5c451}.lost{background:#a056c5;color:#fff}
.legend span{display:inline-block;padding:0 6px;margin-right:4px;border-radius:3px}
.state{font-weight:bold}.cause{background:#fde8e8;padding:6px;border-left:4px solid #e5484d}
"""

_STATES = ("pending", "running", "succeeded", "failed", "stopped", "lost")


def _e(value: Any) -> str:
    return html.escape("-" if value is None else str(value), quote=True)


def _num(value: Any, spec: str) -> str:
    return format(value, spec) if isinstance(value, (int, float)) and not isinstance(value, bool) else "-"


def _state_class(state: Any) -> str:
    return str(state) if state in _STATES else "pending"  # an unknown word is never a class name


def _cell(name: str, p: Mapping[str, Any]) -> str:
    state = _state_class(p.get("state"))
    rank = p.get("rank")
    label = "s" if rank is None else str(rank)
    title = (f"{name} on {p.get('host')}: {p.get('state')}, step {p.get('global_step')}, "
             f"step time {_num(p.get('step_s'), '.3f')} s")
    if p.get("exit_code") is not None or p.get("signal"):
        title += f", {p.get('signal') or 'exit %s' % p.get('exit_code')}"
    step = p.get("global_step")
    return (f'<span class="cell {state}" data-rank="{_e(label)}" data-state="{_e(p.get("state"))}" '
            f'title="{_e(title)}">{_e(label)}<br>{_e("" if step is None else step)}</span>')


def _failures(status: Mapping[str, Any], result: Optional[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    if result and isinstance(result.get("failures"), list):
        return [f for f in result["failures"] if isinstance(f, dict)]
    return [{"name": n, "host": p.get("host"), "rank": p.get("rank"), "exit_code": p.get("exit_code"),
             "signal": p.get("signal"), "message": None, "attempt": status.get("attempt")}
            for n, p in status.get("processes", {}).items() if p.get("state") == "failed"]


def render_status_html(status: Mapping[str, Any], result: Optional[Mapping[str, Any]] = None,
                       now: Optional[float] = None) -> str:
    """The page for ``status`` (status.json's dict) and, once the job ended, ``result`` (result.json's)."""
    now = time.time() if now is None else now
    processes: Mapping[str, Mapping[str, Any]] = status.get("processes") or {}
    state = (result or {}).get("status") or status.get("state")
    launcher = status.get("launcher") or {}
    out = ['<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">',
           "" if result else '<meta http-equiv="refresh" content="5">',  # a running job's page reloads itself
           f"<title>mscluster job: {_e(state)}</title><style>{_CSS}</style></head><body>",
           f'<h1>job <span class="state" id="job-state">{_e(state)}</span></h1>',
           f"<div>attempt {_e(int(status.get('attempt') or 0) + 1)}, {_e(status.get('world_size'))} rank(s); "
           f"launcher pid {_e(launcher.get('pid'))} on {_e(launcher.get('host'))}; updated "
           f"{_e(time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(status.get('updated_at') or now)))}</div>"]
    counts: dict[str, int] = {}
    for p in processes.values():
        counts[_state_class(p.get("state"))] = counts.get(_state_class(p.get("state")), 0) + 1
    out.append('<p class="legend">' + "".join(f'<span class="{s}">{s} {counts.get(s, 0)}</span>'
                                               for s in _STATES) + "</p>")
    evaluation = (result or {}).get("eval") or status.get("eval") or {}
    if evaluation:
        out.append("<div>last eval: " + ", ".join(f"{_e(k)} {_e(v)}" for k, v in sorted(evaluation.items())) + "</div>")
    root = next((a.get("root_cause") for a in reversed((result or {}).get("attempts") or [])
                 if isinstance(a, dict) and a.get("root_cause")), None)
    if root and (result or {}).get("status") != "succeeded":
        outcome = root.get("signal") or f"exit {root.get('exit_code')}"
        out.append(f'<h2>root cause</h2><div class="cause" id="root-cause">{_e(root.get("name"))} on '
                   f'{_e(root.get("host"))} ({_e(outcome)}): {_e(root.get("message") or "")}</div>')
    # the grid: one row per host, one cell per process, in rank order
    by_host: dict[str, list[tuple[str, Mapping[str, Any]]]] = {}
    for name, p in sorted(processes.items(), key=lambda kv: (kv[1].get("rank") is None, kv[1].get("rank") or 0)):
        by_host.setdefault(str(p.get("host")), []).append((name, p))
    # hosts side by side as the window allows: 128 x 8 fills a few screens, not one long column
    out.append('<h2>hosts</h2><div class="grid" id="grid">')
    for host, procs in by_host.items():
        out.append(f'<div class="hostrow"><span class="host" title="{_e(host)}">{_e(host)}</span>'
                   + "".join(_cell(n, p) for n, p in procs) + "</div>")
    out.append("</div>")
    failures = _failures(status, result)
    if failures:
        out.append('<h2>failures</h2><table id="failures"><tr><th>attempt</th><th>process</th><th>host</th>'
                   "<th>exit</th><th>message</th></tr>")
        for f in failures[:200]:  # a fleet-wide failure lists every rank; the first ones carry the cause
            attempt = f.get("attempt")
            out.append(f"<tr><td>{_e(attempt + 1 if isinstance(attempt, int) else None)}</td><td>{_e(f.get('name'))}"
                       f"</td><td>{_e(f.get('host'))}</td><td>{_e(f.get('signal') or f.get('exit_code'))}</td>"
                       f"<td>{_e((f.get('message') or '').splitlines()[0] if f.get('message') else '')}</td></tr>")
        out.append("</table>")
    attempts = [a for a in (result or {}).get("attempts") or [] if isinstance(a, dict)]
    if attempts:
        out.append('<h2>attempts</h2><table id="attempts"><tr><th>attempt</th><th>ok</th><th>seconds</th>'
                   "<th>detect s</th><th>recover s</th><th>steps lost</th></tr>")
        for a in attempts:
            took = (a["ended_at"] - a["started_at"]) if isinstance(a.get("ended_at"), (int, float)) and \
                isinstance(a.get("started_at"), (int, float)) else None
            out.append(f"<tr><td>{_e(int(a.get('attempt') or 0) + 1)}</td><td>{_e(a.get('ok'))}</td>"
                       f"<td>{_num(took, '.1f')}</td><td>{_num(a.get('detect_s'), '.1f')}</td>"
                       f"<td>{_num(a.get('recover_s'), '.1f')}</td><td>{_e(a.get('steps_lost'))}</td></tr>")
        out.append("</table>")
        ratio = ((result or {}).get("goodput") or {}).get("effective_training_ratio")
        out.append(f'<div id="goodput">goodput (effective training ratio): {_num(ratio, ".1%")}</div>')
    out.append('<h2>ranks</h2><table id="ranks"><tr><th>rank</th><th>host</th><th>state</th><th>pid</th>'
               "<th>step</th><th>step time s</th><th>loss</th></tr>")
    for host, procs in by_host.items():
        for name, p in procs:
            out.append(f'<tr class="{_state_class(p.get("state"))}"><td>{_e(name)}</td><td>{_e(host)}</td>'
                       f"<td>{_e(p.get('state'))}</td><td>{_e(p.get('pid'))}</td><td>{_e(p.get('global_step'))}</td>"
                       f"<td>{_num(p.get('step_s'), '.3f')}</td><td>{_num(p.get('loss'), '.4f')}</td></tr>")
    out.append("</table></body></html>\n")
    return "\n".join(x for x in out if x)
