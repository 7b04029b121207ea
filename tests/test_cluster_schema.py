"""``mscluster schema``: the cluster file's JSON Schema, which editors use, agrees with the validator.

Feature: launcher/schema.py (from launcher/settings.py) and the ``schema`` subcommand.
Description: the printed schema is a valid draft 2020-12 schema; every shipped cluster file
    (cluster_configs/*.yaml; kubernetes/ holds kubectl manifests) passes both the schema and the
    validator; a misspelt key at any level is refused by both (additionalProperties false, "did you
    mean"); a set of good and bad files gets the same verdict from both.
Expectation: no schema error for the shipped files; the same accept/refuse answer as the validator.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from launcher.config import load_cluster, parse_cluster
from launcher.errors import ConfigError
from launcher.schema import cluster_schema
from mscluster import safeyaml
from mscluster_cli.main import main
from sshd_util import skip_or_fail

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = sorted((ROOT / "cluster_configs").glob("*.yaml"))
HOST = {"address": "localhost", "devices": 2}
BASE = {"name": "t", "hosts": [HOST]}


@pytest.fixture(scope="module")
def schema_validator():
    try:
        from jsonschema import Draft202012Validator
    except ImportError:
        skip_or_fail("jsonschema not installed (pip install jsonschema; it is in the test extra)")
    schema = cluster_schema()
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


def verdicts(validator, text: str) -> tuple[str, list[str]]:
    """The validator's message ("" if it accepts) and the schema's errors for one file's text."""
    try:
        parse_cluster(text, "cluster.yaml")
        message = ""
    except ConfigError as exc:
        message = str(exc)
    data = safeyaml.safe_load(text)  # the same reading as the validator's (1e-3 is a number)
    return message, [f"{list(e.absolute_path)}: {e.message}" for e in _leaves(validator.iter_errors(data))]


def _leaves(errors):
    """Each error, and inside an anyOf (``watchdog``: a mapping or false) the errors of its choices."""
    for error in errors:
        yield error
        yield from _leaves(error.context or ())


def test_mscluster_schema_prints_the_schema(capsys):
    assert main(["schema"]) == 0
    assert json.loads(capsys.readouterr().out) == cluster_schema()


def test_the_schema_is_a_valid_draft_2020_12_schema(schema_validator):
    assert schema_validator.schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema_validator.schema["additionalProperties"] is False


def test_every_shipped_cluster_file_passes_the_schema_and_the_validator(schema_validator):
    assert len(SHIPPED) >= 5, SHIPPED
    for path in SHIPPED:
        load_cluster(str(path))
        errors = [f"{list(e.absolute_path)}: {e.message}"
                  for e in schema_validator.iter_errors(safeyaml.safe_load(path.read_text(encoding="utf-8")))]
        assert not errors, (path.name, errors)


TYPOS = [  # (a file with one misspelt key, the validator's hint)
    ({**BASE, "restart": 1}, "did you mean 'restarts'?"),
    ({**BASE, "ssh": {"prot": 22}}, "did you mean 'port'?"),
    ({"name": "t", "hosts": [{"address": "localhost", "device": 2}]}, "did you mean 'devices'?"),
    ({**BASE, "train": {"epoch": 3}}, "did you mean 'epochs'?"),
    ({**BASE, "watchdog": {"stall_timout": 60}}, "did you mean 'stall_timeout'?"),
    ({"name": "t", "scheduler": "slurm", "slurm": {"node": 2}}, "did you mean 'nodes'?"),
    ({**BASE, "backend": "ascend", "ascend": {"int": "dynamic"}}, "did you mean 'init'?"),
]


@pytest.mark.parametrize("data, hint", TYPOS, ids=[hint.split("'")[1] for _, hint in TYPOS])
def test_a_misspelt_key_is_refused_by_the_validator_and_the_schema(schema_validator, data, hint):
    message, errors = verdicts(schema_validator, yaml.safe_dump(data))
    assert hint in message
    assert any("Additional properties are not allowed" in error for error in errors), errors


GOOD = [
    BASE,
    {**BASE, "restarts": 100, "console": "all", "watchdog": False, "env": {"A": "1", "B": 2}},
    {**BASE, "hosts": [{"address": "localhost", "devices": [0, 3]}], "console": [1]},
    {**BASE, "ssh": {"user": "me", "port": 2222, "connect_timeout": 0.5, "keepalive_interval": 0.2}},
    {**BASE, "watchdog": {"stall_timeout": 60, "beat_interval": 1, "stacks": "faulthandler"}},
    {**BASE, "stragglers": {"action": "off", "threshold": 0.6, "window_steps": 20}},
    {**BASE, "train": {"lr": 1e-3, "momentum": 0.95, "steps_per_epoch": None, "amp_level": "O2"}},
    {**BASE, "command": ["python", "train.py", "--lr", 0.1], "cwd": "/srv/project"},
    {"name": "t", "scheduler": "slurm", "slurm": {"nodes": 2, "time": 90, "sbatch_options": ["--qos=high"]}},
    {"name": "t", "hosts": [{"address": "10.0.0.1", "devices": 2}, {"address": "10.0.0.2", "devices": 2}],
     "spares": [{"address": "10.0.0.3", "devices": 2}], "restarts": 2, "elastic": {"min_hosts": 1},
     "exclusion": {"after": 3, "cooldown": 60}, "stragglers": {"action": "exclude"}},
    {"name": "t", "scheduler": "slurm", "restarts": 1, "slurm": {"nodes": 2, "spares": 1}},
    {"name": "t", "backend": "ascend", "hosts": [{"address": "localhost", "devices": 8}],
     "ascend": {"init": "ranktable", "rank_table_version": "1.0"}},
]
BAD = [
    {"hosts": [HOST]},  # no name
    {"name": "t"},  # no hosts
    {**BASE, "name": "a b"},
    {**BASE, "backend": "gpu"},
    {**BASE, "restarts": 101},
    {**BASE, "restarts": "1"},
    {**BASE, "bind_cores": "yes"},
    {**BASE, "console": []},
    {**BASE, "ssh": {"port": 0}},
    {**BASE, "ssh": {"keepalive_count": 101}},
    {"name": "t", "hosts": [{"address": "localhost", "devices": 0}]},
    {"name": "t", "hosts": [{"address": "localhost", "devices": [1, 1]}]},
    {"name": "t", "hosts": [{"address": "localhost", "devices": 257}]},
    {**BASE, "watchdog": True},
    {**BASE, "watchdog": {"stall_timeout": 4}},
    {**BASE, "watchdog": {"stacks": "gdb"}},
    {**BASE, "stragglers": {"action": "evict"}},
    {**BASE, "stragglers": {"action": "exclude"}},  # without restarts: nothing could replace the host
    {**BASE, "elastic": {"min_hosts": 1}},
    {**BASE, "restarts": 1, "elastic": {}},
    {"name": "t", "scheduler": "slurm", "slurm": {"nodes": 2, "spares": 1}},
    {**BASE, "restarts": 1, "exclusion": {"after": 0}},
    {**BASE, "restarts": 1, "exclusion": {"cooldown": -1}},
    {**BASE, "stragglers": {"threshold": 1}},
    {**BASE, "stragglers": {"window_steps": 2}},
    {**BASE, "stragglers": "warn"},
    {**BASE, "env": {"1A": "x"}},
    {**BASE, "env": {"A": True}},
    {**BASE, "train": {"amp_level": "O4"}},
    {**BASE, "train": {"momentum": 1}},
    {**BASE, "train": {"batch_size": 0}},
    {**BASE, "train": {"epochs": 1.5}},
    {**BASE, "command": []},
    {**BASE, "command": ["python", "t.py"], "train": {"epochs": 1}},
    {**BASE, "cwd": "/srv"},  # only with command:
    {**BASE, "slurm": {"nodes": 2}},  # only with scheduler: slurm
    {**BASE, "ascend": {"init": "dynamic"}},  # only with backend: ascend
    {"name": "t", "scheduler": "slurm", "hosts": [HOST]},
    {"name": "t", "scheduler": "slurm", "slurm": {"nodes": 0}},
    {"name": "t", "scheduler": "slurm", "slurm": {"time": "an hour"}},
    {"name": "t", "scheduler": "slurm", "slurm": {"sbatch_options": ["qos=high"]}},
]


@pytest.mark.parametrize("data", GOOD, ids=range(len(GOOD)))
def test_files_the_validator_accepts_pass_the_schema(schema_validator, data):
    message, errors = verdicts(schema_validator, yaml.safe_dump(data))
    assert message == "" and errors == [], (message, errors)


@pytest.mark.parametrize("data", BAD, ids=range(len(BAD)))
def test_files_the_validator_refuses_fail_the_schema(schema_validator, data):
    message, errors = verdicts(schema_validator, yaml.safe_dump(data))
    assert message and errors, (message, errors)
