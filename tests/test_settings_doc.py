"""The cluster file's reference page is generated from the table the validator reads, and cannot drift.

Feature: docs/reference/cluster-file.md (``python -m launcher.settings_doc``) from launcher/settings.py.
Description: the committed page is the generator's output; the keys of each section on the page are
    the keys the validator accepts (its lists, and asked key by key: a page key is never "unknown",
    a key next to it is); each section of the table has the fields of the dataclass it fills; every
    training setting has its one-line meaning.
Expectation: equal pages, equal key sets, no key without a row or a meaning.
"""
from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from launcher import config, settings, settings_doc
from launcher.config import parse_cluster
from launcher.errors import ConfigError
from launcher.spec import (AscendSpec, ClusterSpec, ElasticSpec, ExclusionSpec, HostSpec, SlurmSpec, SSHSpec,
                           StragglerSpec, WatchdogSpec)
from trainer import config as train_config

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "reference" / "cluster-file.md"
REGENERATE = "python -m launcher.settings_doc > docs/reference/cluster-file.md"

# each section of the page: the validator's list of its keys, and a file that puts a key into it
HOST = {"address": "localhost", "devices": 1}
SECTIONS = {
    "Top level": (config.TOP_KEYS, lambda key, value: {"name": "t", "hosts": [HOST], key: value}),
    "hosts": (config.HOST_KEYS, lambda key, value: {"name": "t", "hosts": [{**HOST, key: value}]}),
    "ssh": (config.SSH_KEYS, lambda key, value: {"name": "t", "hosts": [HOST], "ssh": {key: value}}),
    "ascend": (config.ASCEND_KEYS, lambda key, value: {"name": "t", "backend": "ascend", "hosts": [HOST],
                                                       "ascend": {key: value}}),
    "slurm": (config.SLURM_KEYS, lambda key, value: {"name": "t", "scheduler": "slurm", "slurm": {key: value}}),
    "watchdog": (config.WATCHDOG_KEYS, lambda key, value: {"name": "t", "hosts": [HOST], "watchdog": {key: value}}),
    "stragglers": (config.STRAGGLER_KEYS, lambda key, value: {"name": "t", "hosts": [HOST],
                                                               "stragglers": {key: value}}),
    "exclusion": (config.EXCLUSION_KEYS, lambda key, value: {"name": "t", "hosts": [HOST],
                                                             "exclusion": {key: value}}),
    "elastic": (config.ELASTIC_KEYS, lambda key, value: {"name": "t", "hosts": [HOST], "restarts": 1,
                                                         "elastic": {key: value}}),
    "train": (config.TRAIN_KEYS, lambda key, value: {"name": "t", "hosts": [HOST], "train": {key: value}}),
}


def page_keys(page: str) -> dict[str, list[str]]:
    """The keys in the first column of each ``## section``'s table."""
    keys: dict[str, list[str]] = {}
    section = None
    for line in page.splitlines():
        if line.startswith("## "):
            section = line[3:].strip()
        match = re.match(r"\| `([^`]+)` \|", line)
        if match and section is not None:
            keys.setdefault(section, []).append(match.group(1))
    return keys


def validator_error(data: dict) -> str:
    """The validator's message for ``data`` written as a cluster file, or "" when it accepts it."""
    try:
        parse_cluster(yaml.safe_dump(data), "probe.yaml")
    except ConfigError as exc:
        return str(exc)
    return ""


def test_the_committed_page_is_the_generated_one():
    generated = settings_doc.render(settings_doc.TEMPLATE.read_text(encoding="utf-8"))
    assert PAGE.read_text(encoding="utf-8") == generated, f"the reference page is out of date: run {REGENERATE}"


def test_the_generator_prints_the_page():
    done = subprocess.run([sys.executable, "-m", "launcher.settings_doc"], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout == PAGE.read_text(encoding="utf-8")


def test_every_key_the_validator_accepts_is_on_the_page_and_no_other():
    on_page = page_keys(PAGE.read_text(encoding="utf-8"))
    for section, (accepted, _) in SECTIONS.items():
        assert set(on_page.get(section, ())) == set(accepted), section
    assert set(on_page) == set(SECTIONS)


@pytest.mark.parametrize("section", sorted(SECTIONS))
def test_each_key_on_the_page_is_known_to_the_validator_and_a_misspelt_one_is_not(section):
    _, make = SECTIONS[section]
    keys = page_keys(PAGE.read_text(encoding="utf-8"))[section]
    for key in keys:  # a value may be refused (null is not every key's), the key itself never
        assert "unknown" not in validator_error(make(key, None)), (section, key)
        typo = validator_error(make(key + "x", None))
        assert f"unknown {'training setting' if section == 'train' else 'key'} '{key}x'" in typo, typo


@pytest.mark.parametrize("section, spec, not_in_file", [
    (settings.TOP, ClusterSpec, {"source", "train_config"}),
    (settings.HOST, HostSpec, {"node"}),
    (settings.SSH, SSHSpec, set()),
    (settings.ASCEND, AscendSpec, set()),
    (settings.SLURM, SlurmSpec, set()),
    (settings.WATCHDOG, WatchdogSpec, set()),
    (settings.STRAGGLERS, StragglerSpec, set()),
    (settings.EXCLUSION, ExclusionSpec, set()),
    (settings.ELASTIC, ElasticSpec, set()),
    (settings.TRAIN, train_config.TrainConfig, set()),
])
def test_each_section_of_the_table_has_the_fields_of_its_dataclass(section, spec, not_in_file):
    fields = {f.name for f in dataclasses.fields(spec)} - not_in_file
    missing = fields - set(section.keys())
    assert not missing, f"{spec.__name__} has {sorted(missing)}: add a Setting to launcher/settings.py's " \
                        f"{section.name or 'TOP'} section"
    assert set(section.keys()) <= fields


def test_every_training_setting_has_its_meaning():
    missing = [f.name for f in dataclasses.fields(train_config.TrainConfig) if not train_config.DOCS.get(f.name)]
    assert not missing, f"trainer/config.py's DOCS has no line for {missing}"
    assert set(train_config.DOCS) <= {f.name for f in dataclasses.fields(train_config.TrainConfig)}


def test_the_page_names_each_default_the_validator_applies():
    spec = parse_cluster("name: t\nhosts: [{address: localhost, devices: 1}]\n", "minimal.yaml")
    rows = {}
    for line in PAGE.read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip().strip("|"))]
        if len(cells) == 4 and cells[0].startswith("`"):
            rows.setdefault(cells[0].strip("`"), cells[2])
    assert rows["workdir"] == f"`{spec.workdir}`"
    assert rows["restarts"] == f"`{spec.restarts}`"
    assert rows["backend"] == f"`{spec.backend}`" and rows["scheduler"] == f"`{spec.scheduler}`"
    assert rows["console"] == f"`{list(spec.console)}`"
    assert rows["port"] == f"`{spec.ssh.port}`"
    assert rows["stall_timeout"] == "`auto`" and spec.watchdog.auto  # None in the spec: learned from the job
    assert rows["batch_size"] == f"`{spec.train_config.batch_size}`"
