"""-d 0's start-up report and pid file, without forking a daemon (tests/e2e/test_daemon_mode.py
does the real thing)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from milter_agent import detach
from milter_agent.detach import Readiness, remove_pid_file, write_pid_file


def exited_child() -> int:
    """A child process that is gone already, as the intermediate fork of ``detach`` is."""
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    return pid


def report(say: bytes, *, keep_open: bool = False) -> tuple[int, int]:
    """(status of the starting process, write end or -1) after the daemon said ``say``."""
    read_end, write_end = os.pipe()
    os.write(write_end, say)
    if not keep_open:
        os.close(write_end)
        write_end = -1
    try:
        return detach._wait_for_start(read_end, exited_child()), write_end
    finally:
        os.close(read_end)


def test_ready_even_while_someone_still_holds_the_pipe() -> None:
    """A module worker forked after start-up inherits the pipe: the first line decides."""
    code, write_end = report(b"ready\n", keep_open=True)
    try:
        assert code == 0
    finally:
        os.close(write_end)


def test_a_failure_is_printed_and_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    assert report(b"cannot start: address in use\n")[0] == 1
    assert capsys.readouterr().err == "milter-agent: cannot start: address in use\n"


def test_a_daemon_that_died_silently_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    assert report(b"")[0] == 1
    assert "the daemon exited during start-up (see the log)" in capsys.readouterr().err


def test_readiness_says_one_thing_once() -> None:
    read_end, write_end = os.pipe()
    readiness = Readiness(write_end)
    readiness.failed("first\nline")
    readiness.ready()  # after the pipe is closed: nothing, no error
    assert os.read(read_end, 100) == b"first line\n"
    assert os.read(read_end, 100) == b""  # closed
    os.close(read_end)


def test_pid_file_is_written_with_its_directory_and_removed(tmp_path: Path) -> None:
    path = tmp_path / "run" / "milter-agent.pid"
    write_pid_file(str(path), None)
    assert path.read_text() == f"{os.getpid()}\n"
    remove_pid_file(str(path))
    assert not path.exists()
    remove_pid_file(str(path))  # gone already: fine


def test_a_pid_file_that_cannot_be_removed_is_emptied(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "milter-agent.pid"
    write_pid_file(str(path), None)

    def refuse(_path: str) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(detach.os, "unlink", refuse)
    remove_pid_file(str(path))
    assert path.read_text() == ""
