"""The daemon's side of a reload, in process: which settings apply at once, which only after a
restart (with a warning), and that the file is read in a worker thread."""

from __future__ import annotations

import asyncio
import logging
import threading
from pathlib import Path

import pytest

from milter_agent.config.options import parse_command_line
from milter_agent.daemon import Daemon
from milter_agent.pipeline import Verdict
from milter_agent.server import MilterServer

STAMP = '[Address]\ntask_name = stamp\nadd_header_name = "X-Stamp"\nadd_header_value = "1"\n'


def make_daemon(tmp_path: Path, text: str) -> Daemon:
    conf = tmp_path / "milter-agent.conf"
    conf.write_text(text)
    daemon = Daemon(parse_command_line(["-c", str(conf), "-H"]), str(tmp_path / "spool"))
    daemon.spool.prepare()
    daemon.server = MilterServer(daemon.spec, daemon.services(), io_timeout=0.0)  # not bound
    return daemon


def test_cheap_settings_apply_at_the_reload(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    daemon = make_daemon(tmp_path, STAMP)
    assert daemon.server is not None
    before = daemon.server.services
    assert (before.default_action, before.progress_interval, before.log_tempfile) == (
        Verdict.TEMPFAIL,
        5.0,
        False,
    )
    (tmp_path / "milter-agent.conf").write_text(
        "default_action = accept\nprogress_interval = 2\nlog_tempfile = yes\nio_timeout = 7\n"
        "kill_grace = 1\nerror_threshold = 3\n" + STAMP
    )
    with caplog.at_level(logging.WARNING, logger="milter_agent.daemon"):
        asyncio.run(daemon.reload())
    after = daemon.server.services
    assert (after.default_action, after.progress_interval, after.log_tempfile) == (
        Verdict.ACCEPT,
        2.0,
        True,
    )
    assert daemon.server.io_timeout == 7.0
    assert daemon.engine.settings.kill_grace == 1.0  # the engine's settings are the new ones
    assert daemon.engine.settings.error_threshold == 3
    assert "takes effect at the next restart" not in caplog.text
    assert before.default_action == Verdict.TEMPFAIL  # connections open already keep theirs


@pytest.mark.parametrize(
    ("line", "key"),
    [
        ("metrics = 127.0.0.1:9464", "metrics"),
        ("admin_group = root", "admin_group"),
        ("pid_file = /run/other.pid", "pid_file"),
        ("log_target = stdout", "log_target"),
        ("log_level = 2", "log_level"),
        ("verbose = yes", "verbose"),
        ("socket_mode = 0600", "socket_mode"),
        ("spool_dir = /var/tmp/elsewhere", "spool_dir"),
    ],
)
def test_restart_only_settings_are_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, line: str, key: str
) -> None:
    daemon = make_daemon(tmp_path, STAMP)
    (tmp_path / "milter-agent.conf").write_text(line + "\n" + STAMP)
    with caplog.at_level(logging.WARNING, logger="milter_agent.daemon"):
        asyncio.run(daemon.reload())
    assert daemon.store.generation == 2
    warnings = [r.getMessage() for r in caplog.records if "next restart" in r.getMessage()]
    assert warnings == [f"setting {key} changed; it takes effect at the next restart"]


def test_the_file_is_read_in_a_worker_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    daemon = make_daemon(tmp_path, STAMP)
    threads: list[str] = []
    read = daemon.store._read

    def spy(lock_timeout: float) -> object:
        threads.append(threading.current_thread().name)
        return read(lock_timeout)

    monkeypatch.setattr(daemon.store, "_read", spy)
    asyncio.run(daemon.reload())
    assert threads and threads[0] != threading.main_thread().name
