"""YAML as users write it: ``1e-3`` is a number, ``03`` for ``O3`` gets a hint, a syntax error names the line to fix."""
from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from launcher.config import load_cluster
from launcher.errors import ConfigError
from trainer.errors import ConfigError as TrainConfigError
from trainer import config as train_config


def write(tmp_path: Path, text: str, name: str = "cluster.yaml") -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return str(path)


def test_exponent_without_a_dot_is_a_number_in_the_file_and_in_set(tmp_path):
    path = write(tmp_path, """
        name: a
        hosts:
          - {address: localhost, devices: 1}
        train:
          lr: 1e-3
          weight_decay: 5E-5
        """)
    train = load_cluster(path).train_dict()
    assert train["lr"] == pytest.approx(0.001) and train["weight_decay"] == pytest.approx(5e-5)
    assert train_config.load(None, ["lr=2e-2"]).lr == pytest.approx(0.02)
    assert load_cluster(path, ("train.lr=1.5e-1",)).train_dict()["lr"] == pytest.approx(0.15)


def test_words_that_only_look_like_numbers_stay_words(tmp_path):
    path = write(tmp_path, """
        name: e5
        hosts:
          - {address: localhost, devices: 1}
        """)
    assert load_cluster(path).name == "e5"


@pytest.mark.parametrize("typed", ["03", "o3", "3"])
def test_a_zero_for_the_letter_o_gets_a_hint(tmp_path, typed):
    path = write(tmp_path, f"""
        name: a
        hosts:
          - {{address: localhost, devices: 1}}
        train:
          amp_level: {typed}
        """)
    with pytest.raises(ConfigError) as info:
        load_cluster(path)
    assert "did you mean 'O3', with the letter O?" in str(info.value)
    assert "\n" not in str(info.value)


# (the file, the line the user must fix, a fragment of the reason); test_cluster_config has more
SYNTAX = [
    ("a key without its colon", "name: a\nhosts\n  - {address: localhost, devices: 1}\n", 2, "no ':' after it"),
    ("a quote never closed", 'name: a\ncommand: ["python, x.py]\nrestarts: 1\nhosts:\n  - {address: localhost}\n',
     2, "quote opened on this line"),
    ("a bracket never closed", "name: a\ncommand: [python, x.py\nrestarts: 1\n", 2, "opened on this line"),
    ("a value with a second colon", "name: a\nrestarts: a: b\n", 2, "mapping values"),
]


@pytest.mark.parametrize("what,text,line,reason", SYNTAX, ids=[s[0] for s in SYNTAX])
def test_a_syntax_error_names_the_line_to_fix(tmp_path, what, text, line, reason):
    path = tmp_path / "cluster.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_cluster(str(path))
    message = str(info.value)
    assert message.startswith(f"{path}:{line}: not valid YAML"), message
    assert reason in message and "\n" not in message


def test_a_settings_file_names_the_same_line(tmp_path):
    path = write(tmp_path, "epochs: 1\nlr\n  batch_size: 4\n", name="train.yaml")
    with pytest.raises(TrainConfigError) as info:
        train_config.load(path)
    assert "line 2:" in str(info.value) and "no ':' after it" in str(info.value)
