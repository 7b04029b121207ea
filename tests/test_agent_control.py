"""Feature: the agent reads the launcher's control lines whole, however its stdin's reads split them.

Description: an ``launcher.agent.Agent`` reads a real pipe as its stdin; the launcher's control
lines (``launcher.protocol.ControlMessage``) are written in pieces between its reads.
Expectation: a ``stop``, ``stacks`` or ``preempt`` split across two reads is acted on once, after
its second half; a line that is no control word is reported on stderr and changes nothing; the
launcher's encoder and the agent's decoder agree on every word.
"""
from __future__ import annotations

import io
import os

import pytest

from launcher.agent import Agent
from launcher.protocol import AgentSpec, ControlMessage, ControlReader, ProtocolError, decode_control, encode_control


class RecordingAgent(Agent):
    """An agent with no processes that records what the control lines made it do."""

    def __init__(self, job_dir: str, stdin_fd: int) -> None:
        super().__init__(AgentSpec(host="h", job_dir=job_dir, processes=()), io.BytesIO(), stdin_fd)
        self.did: list[str] = []

    def forward_preempt(self) -> None:
        self.did.append("preempt")

    def dump_stacks(self) -> None:
        self.did.append("stacks")


@pytest.fixture
def agent_and_pipe(tmp_path):
    read_fd, write_fd = os.pipe()
    agent = RecordingAgent(str(tmp_path / "job"), read_fd)
    yield agent, write_fd
    os.close(read_fd)
    os.close(write_fd)


@pytest.mark.parametrize("word", ["stop", "stacks", "preempt"])
def test_a_control_line_split_across_two_reads_is_acted_on(agent_and_pipe, word):
    agent, write_fd = agent_and_pipe
    line = encode_control(ControlMessage(word)).encode()
    os.write(write_fd, line[:2])
    agent._read_stdin()
    assert agent.did == [] and not agent.stop_requested  # half a word is nothing yet
    os.write(write_fd, line[2:])
    agent._read_stdin()
    if word == "stop":
        assert agent.stop_requested and agent.did == []
    else:
        assert agent.did == [word] and not agent.stop_requested


def test_beats_and_several_lines_in_one_read(agent_and_pipe):
    agent, write_fd = agent_and_pipe
    os.write(write_fd, b"beat\nstacks\nbeat\npre")
    agent._read_stdin()
    assert agent.did == ["stacks"]
    os.write(write_fd, b"empt\n")
    agent._read_stdin()
    assert agent.did == ["stacks", "preempt"] and not agent.stop_requested


def test_an_unknown_line_is_reported_not_acted_on(agent_and_pipe, capsys):
    agent, write_fd = agent_and_pipe
    os.write(write_fd, b"stopp\nplease stop now\n")  # the old substring search stopped on both
    agent._read_stdin()
    assert not agent.stop_requested and agent.did == []
    err = capsys.readouterr().err
    assert "ignored a line from the launcher" in err and "'stopp'" in err


def test_eof_stops(tmp_path):
    read_fd, write_fd = os.pipe()
    agent = RecordingAgent(str(tmp_path / "job"), read_fd)
    agent.selector.register(read_fd, 1, None)
    os.write(write_fd, b"be")
    os.close(write_fd)
    agent._read_stdin()
    assert not agent.stop_requested
    agent._read_stdin()
    assert agent.stop_requested
    os.close(read_fd)


def test_every_control_word_round_trips():
    for msg in ControlMessage:
        assert decode_control(encode_control(msg)) is msg
    with pytest.raises(ProtocolError):
        decode_control("reboot")
    reader = ControlReader()
    assert reader.feed(b"x" * 5000) and reader.feed(b"stop\n") == [ControlMessage.STOP]  # garbage is not kept


@pytest.mark.parametrize("words,removed", [(b"", True), (b"stop\n", False)])
def test_an_eof_without_a_stop_first_means_the_launcher_died_and_removes_the_snapshot(tmp_path, words, removed):
    """A living launcher says ``stop`` before its EOF (a restart follows: the snapshot is kept);
    an EOF alone is its death: the agent removes its host's snapshot folder when its processes are gone."""
    import selectors
    import shutil

    from mscluster.jobfiles import snapshot_dir

    folder = snapshot_dir(str(tmp_path / "job"), "h")
    os.makedirs(folder)
    read_fd, write_fd = os.pipe()
    try:
        agent = Agent(AgentSpec(host="h", job_dir=str(tmp_path / "job"), processes=(), snapshot_dir=folder),
                      io.BytesIO(), read_fd)
        os.write(write_fd, words)
        os.close(write_fd)
        os.set_blocking(read_fd, False)
        agent.selector.register(read_fd, selectors.EVENT_READ, None)
        for _ in range(3):  # the words, then the EOF
            if read_fd in agent.selector.get_map():
                agent._read_stdin()
        assert agent.stop_requested and agent.launcher_gone is removed
        if agent.launcher_gone:  # what run() does once the host's processes are gone
            agent.remove_snapshots()
        assert os.path.isdir(folder) is not removed
    finally:
        os.close(read_fd)
        shutil.rmtree(folder, ignore_errors=True)
