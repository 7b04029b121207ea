"""Shared pytest fixtures. Keep them generic: several test modules use them.

The test process trains and evaluates with real MindSpore on CPU, so it caps oneDNN at AVX2 the
way the trainer process does, before anything imports MindSpore (7-28x faster convolutions here).
"""
from __future__ import annotations

import os
import sys

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

from trainer.cpu import configure_cpu_backend  # noqa: E402  (needs REPO_ROOT on sys.path)

configure_cpu_backend()


@pytest.fixture(scope="session")
def repo_root() -> str:
    """The repository's root folder (for scripts/ and ``python -m`` runs)."""
    return REPO_ROOT


@pytest.fixture(scope="session")
def standin_info(tmp_path_factory):
    """A CIFAR-10-format stand-in (scikit-learn digits), written once per session; read-only.

    Returns a ``trainer.standin.StandinInfo``: ``.dir`` holds data_batch_1.bin, test_batch.bin
    (10,000 records each, cycled from 1,438 train / 359 test distinct images) and
    batches.meta.txt naming the classes "0".."9".
    """
    from trainer.standin import make_digits_standin

    return make_digits_standin(str(tmp_path_factory.mktemp("standin")))


@pytest.fixture(scope="session")
def cifar_dir(standin_info) -> str:
    """The folder of the stand-in's .bin files (a valid ``data_dir`` for the trainer); read-only."""
    return standin_info.dir


# Real-sshd and network-namespace fixtures (skip on a user's machine without them; fail in CI).
from sshd_util import sshd  # noqa: F401,E402
from netns_util import netns_hosts  # noqa: F401,E402
