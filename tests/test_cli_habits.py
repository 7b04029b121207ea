"""The habits of torchrun, msrun and sbatch users: --version, did-you-mean, -v anywhere, `--` before a
program, one pair per --set, list indices in --set keys."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mscluster_cli.main import main, version_text

CONFIGS = Path(__file__).resolve().parent.parent / "cluster_configs"
LOCAL = str(CONFIGS / "local_cpu.yaml")
MSCLUSTER = os.path.join(os.path.dirname(sys.executable), "mscluster")


@pytest.fixture(autouse=True)
def _keep_log_levels():
    """main() sets the levels of mscluster's loggers; the other tests in this process keep theirs."""
    import logging

    names = ("trainer", "launcher", "mscluster", "mscluster_cli", "paramiko")
    levels = {name: logging.getLogger(name).level for name in names}
    yield
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


def run(capsys, *argv: str) -> tuple[int, str, str]:
    """``mscluster ARGV`` in this process: its exit code, stdout and stderr."""
    try:
        code = main(list(argv))
    except SystemExit as exc:  # argparse's exits (usage errors, --help, --version)
        code = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    return lines[0]


def test_version_is_the_installed_distributions(capsys):
    import importlib.metadata

    code, out, _ = run(capsys, "--version")
    assert code == 0
    assert out == f"mscluster {importlib.metadata.version('mscluster')}\n" == version_text() + "\n"


def test_version_from_a_checkout_that_is_not_installed(tmp_path):
    """Without the distribution's metadata (a copied checkout on sys.path), setup.cfg's version says it."""
    root = Path(__file__).resolve().parent.parent
    (tmp_path / "mscluster_cli").symlink_to(root / "mscluster_cli")
    (tmp_path / "setup.cfg").write_text("[metadata]\nname = mscluster\nversion = 9.8.7\n")
    code = ("import importlib.metadata as m, sys\n"
            "def missing(name): raise m.PackageNotFoundError(name)\n"
            "m.version = missing\n"
            f"sys.path.insert(0, {str(tmp_path)!r})\n"
            "import mscluster_cli.main as cli\n"
            "print(cli.version_text())\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() in ("mscluster 9.8.7 (not installed: source checkout)",
                                   # the symlink resolves into the real checkout: its own setup.cfg answers
                                   "mscluster 0.1.0 (not installed: source checkout)")


def test_a_mistyped_command_gets_the_nearest_one(capsys):
    code, out, err = run(capsys, "lanuch", "x.yaml")
    assert code == 2 and out == ""
    assert one_line(err) == "mscluster: error: unknown command 'lanuch', did you mean 'launch'?"
    code, _, err = run(capsys, "-v", "stauts", "runs/j")
    assert code == 2 and one_line(err).endswith("did you mean 'status'?")
    code, _, err = run(capsys, "frobnicate")
    assert code == 2 and "unknown command 'frobnicate' (commands: train, " in one_line(err)


def test_a_mistyped_command_exits_2_on_one_line_of_stderr():
    proc = subprocess.run([MSCLUSTER, "lanuch", "x.yaml"], capture_output=True, text=True, timeout=60)
    assert (proc.returncode, proc.stdout) == (2, "")
    assert proc.stderr == "mscluster: error: unknown command 'lanuch', did you mean 'launch'?\n"


@pytest.mark.parametrize("argv", [["-v", "plan", LOCAL], ["plan", "-v", LOCAL], ["plan", LOCAL, "--verbose"]])
def test_verbose_before_or_after_the_command(capsys, argv):
    code, out, err = run(capsys, *argv)
    assert code == 0, err
    assert out.startswith("local-cpu: backend cpu")
    import logging

    assert logging.getLogger("launcher").level == logging.DEBUG  # -v took effect wherever it stood


def test_without_verbose_logging_is_info(capsys):
    import logging

    code, _, err = run(capsys, "plan", LOCAL)
    assert code == 0, err
    assert logging.getLogger("launcher").level == logging.INFO


def test_the_programs_words_without_dashdash_get_the_line_to_type(capsys, tmp_path):
    code, out, err = run(capsys, "launch", "c.yaml", "python", "train.py", "--lr", "0.1")
    assert code == 2 and out == ""
    line = one_line(err)
    assert line.startswith("mscluster launch: error: unrecognized arguments: python train.py --lr 0.1")
    assert "put -- before it: mscluster launch c.yaml -- python train.py --lr 0.1 " in line
    # an option of ours after the program's first word stays the program's, as it was typed
    code, _, err = run(capsys, "launch", "c.yaml", "python", "t.py", "-q", "--epochs", "3")
    assert code == 2 and "mscluster launch c.yaml -- python t.py -q --epochs 3 " in one_line(err)
    code, _, err = run(capsys, "launch", "python", "train.py", "--lr", "0.1")  # the cluster file forgotten
    assert code == 2 and "put -- before it: mscluster launch CLUSTER.yaml -- python train.py --lr 0.1 " in one_line(err)
    code, _, err = run(capsys, "status", "runs/j", "extra")  # no program to run: argparse's message
    assert code == 2 and one_line(err) == ("mscluster status: error: unrecognized arguments: extra "
                                           "(see mscluster status --help)")


def test_set_takes_one_pair_and_leaves_the_cluster_file(capsys):
    code, out, err = run(capsys, "plan", "--set", "train.epochs=7", LOCAL)  # the file after --set is the file
    assert code == 0, err
    assert "epochs 7" in out
    code, out, err = run(capsys, "plan", LOCAL, "--set", "train.epochs=5", "--set", "train.lr=0.2")
    assert code == 0, err
    assert "epochs 5" in out and "lr 0.2" in out


def test_a_second_pair_after_one_set_says_how_to_write_it(capsys, tmp_path, monkeypatch):
    code, _, err = run(capsys, "plan", LOCAL, "--set", "train.epochs=5", "restarts=1")
    assert code == 2
    assert one_line(err) == ("mscluster plan: error: 'restarts=1' is not taken: each --set takes one key=value "
                             "pair, write --set restarts=1 (see mscluster plan --help)")
    monkeypatch.chdir(tmp_path)  # `restarts=1` must not be a file here
    code, _, err = run(capsys, "launch", "--set", "train.epochs=5", "restarts=1", "c.yaml")
    assert code == 2
    assert one_line(err).startswith("mscluster launch: error: 'restarts=1' is taken for the cluster file: "
                                    "each --set takes one key=value pair, write --set restarts=1")


def test_a_bare_word_after_set_is_one_clear_line(capsys):
    code, out, err = run(capsys, "launch", LOCAL, "--set", "epochs")
    assert code == 2 and out == ""
    assert one_line(err) == ("mscluster launch: error: argument --set: expected one key=value pair, "
                             "e.g. --set train.epochs=3, got 'epochs' (see mscluster launch --help)")


def test_training_set_still_takes_several_pairs(capsys):
    """``mscluster train --set a=1 b=2`` is how every rank of the built-in trainer is started: unchanged."""
    from mscluster_cli.main import build_parser
    from trainer.overrides import flatten

    args = build_parser().parse_args(["train", "--set", "epochs=2", "lr=0.1", "--set", "arch=resnet18"])
    assert flatten(args.set) == ["epochs=2", "lr=0.1", "arch=resnet18"]


def test_set_indexes_a_list_of_the_cluster_file(capsys):
    code, out, err = run(capsys, "plan", str(CONFIGS / "cpu_2hosts.yaml"), "--set", "hosts.1.devices=3")
    assert code == 0, err
    assert "5 rank(s) on 2 hosts" in out.splitlines()[0]
    from launcher.config import load_cluster

    spec = load_cluster(str(CONFIGS / "ascend_2x8.yaml"), ("hosts.0.devices=4", "hosts.1.devices=[0, 1, 2, 3]"))
    assert [h.devices for h in spec.hosts] == [(0, 1, 2, 3)] * 2
    assert spec.hosts[0].address == "10.0.0.1"  # the rest of the host's entry stays


@pytest.mark.parametrize("pair, needle", [
    ("hosts.2.devices=4", "--set hosts.2: hosts has 2 entries (0 to 1)"),
    ("hosts.x.devices=4", "--set hosts.x: hosts is a list: give an entry's number, e.g. hosts.0"),
    ("name.0=x", "--set name.0: name is not a list"),
    ("hosts.0.devices.9=1", "--set hosts.0.devices.9: hosts.0.devices is not a list"),
    ("ssh.user.0=x", "--set ssh.user.0: ssh.user is not a list"),
    ("slurm.0.x=1", "--set slurm.0: slurm is not a list (the file has none)"),
])
def test_a_bad_index_is_one_line_naming_the_key(capsys, pair, needle):
    code, out, err = run(capsys, "plan", str(CONFIGS / "cpu_2hosts.yaml"), "--set", pair)
    assert code == 2 and out == ""
    line = one_line(err)
    assert line.startswith("mscluster plan: error: ") and needle in line, line


def test_a_device_ip_is_set_by_its_device_id():
    """In a mapping a number is a key: ``device_ips.3`` is the file's device 3, not a second one."""
    from launcher.config import parse_cluster

    text = ("name: a\nbackend: ascend\nascend: {init: ranktable}\nhosts:\n"
            "  - {address: 10.0.0.1, devices: 4, device_ips: {0: 10.1.0.0, 1: 10.1.0.1, 2: 10.1.0.2, 3: 10.1.0.3}}\n")
    spec = parse_cluster(text, "a.yaml", ("hosts.0.device_ips.3=10.9.9.9",))
    assert dict(spec.hosts[0].device_ips) == {0: "10.1.0.0", 1: "10.1.0.1", 2: "10.1.0.2", 3: "10.9.9.9"}


def test_a_bad_value_at_an_index_names_the_set(capsys):
    code, _, err = run(capsys, "plan", str(CONFIGS / "cpu_2hosts.yaml"), "--set", "hosts.1.devices=-2")
    assert code == 2
    assert "hosts[1].devices (from --set)" in one_line(err)
