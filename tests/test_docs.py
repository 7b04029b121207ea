"""The documentation site builds strictly, and a visitor finds the 2 x 8 quick start from the README.

Feature: the site (``mkdocs.yml``, ``docs/``) and the README's links into it.
Description: ``mkdocs build --strict`` into a temporary folder (a broken link or anchor, or a page
    left out of the navigation, fails it); the README links to the quick start page, which holds the
    commands that plan and launch the shipped 2 x 8 file; every relative link in the README resolves.
Expectation: the build exits 0 with the quick start rendered; the links and commands are there.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

from sshd_util import skip_or_fail

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
QUICK_START = "docs/get-started/two-servers.md"
LAUNCH_2X8 = "mscluster launch cluster_configs/ascend_2x8.yaml"
PLAN_2X8 = "mscluster plan cluster_configs/ascend_2x8.yaml"
BUILD_TIMEOUT_S = 300


def _relative_links(markdown: str) -> list[str]:
    """The targets of the Markdown links that are not URLs or in-page anchors, without their anchors."""
    targets = re.findall(r"\]\(([^)\s]+)\)", markdown)
    return [t.split("#", 1)[0] for t in targets if not re.match(r"[a-z]+:|#", t)]


def test_readme_links_to_the_quick_start_which_plans_and_launches_the_2x8_file():
    links = _relative_links(README.read_text(encoding="utf-8"))
    assert QUICK_START in links, f"README.md does not link to {QUICK_START}"
    page = (ROOT / QUICK_START).read_text(encoding="utf-8")
    assert LAUNCH_2X8 in page
    assert PLAN_2X8 in page
    assert (ROOT / "cluster_configs/ascend_2x8.yaml").is_file()


def test_every_relative_link_of_the_readme_resolves():
    missing = [t for t in _relative_links(README.read_text(encoding="utf-8")) if not (ROOT / t).exists()]
    assert not missing, f"README.md links to files that do not exist: {missing}"


@pytest.mark.integration
def test_site_builds_strictly(tmp_path):
    absent = [name for name in ("mkdocs", "material") if importlib.util.find_spec(name) is None]
    if absent:
        skip_or_fail(f"{' and '.join(absent)} not installed (pip install mkdocs mkdocs-material)")
    site = tmp_path / "site"
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(ROOT / "mkdocs.yml"),
         "--site-dir", str(site)],
        cwd=ROOT, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "NO_MKDOCS_2_WARNING": "1"},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    quick_start = site / "get-started" / "two-servers" / "index.html"
    assert quick_start.is_file(), sorted(p.name for p in site.iterdir())
    text = re.sub(r"<[^>]+>", "", quick_start.read_text(encoding="utf-8"))  # code blocks are split into spans
    assert LAUNCH_2X8 in text
