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

if os.environ.get("MSCLUSTER_TEST_FAST"):
    # `make test-fast`: the unit tests, which must not need MindSpore; one that imports it fails loudly
    import importlib.abc

    class _NoMindSpore(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] == "mindspore":
                raise ImportError("make test-fast imports no MindSpore: mark this test "
                                  "@pytest.mark.mindspore (or integration)")
            return None

    sys.meta_path.insert(0, _NoMindSpore())

# modules whose tests all run MindSpore in the test process
MINDSPORE_MODULES = ("test_checkpoint.py", "test_resnet.py", "test_data.py")


def pytest_ignore_collect(collection_path, config):
    """`make test-fast` leaves out the modules that need MindSpore to import."""
    return bool(os.environ.get("MSCLUSTER_TEST_FAST")) and collection_path.name in MINDSPORE_MODULES or None


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.path.name in MINDSPORE_MODULES:
            item.add_marker(pytest.mark.mindspore)


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
from netns_util import fleet_hosts, netns_hosts  # noqa: F401,E402
from slurm_util import slurm_cluster  # noqa: F401,E402
# Small real jobs launched once per session and asserted on by several modules.
from shared_jobs import _shared_launches, failed_job, succeeded_job  # noqa: F401,E402
