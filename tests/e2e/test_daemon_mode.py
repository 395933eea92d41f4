"""-d 0 detaches (new session, pid file) and SIGTERM stops it cleanly; --log-target stdout
writes journald priority prefixes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from support.util import free_port


def wait_for(predicate, timeout: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_detached_daemon_with_pid_file(tmp_path: Path) -> None:
    conf = tmp_path / "c.conf"
    conf.write_text("log_level = 0\n")
    pid_file = tmp_path / "milter-agent.pid"
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "milter_agent",
            "-d",
            "0",
            "-u",
            "root",
            "-c",
            str(conf),
            "-p",
            f"inet:{free_port()}@127.0.0.1",
            "-i",
            f"unix:{tmp_path}/cmd",
            "--spool-dir",
            str(tmp_path / "spool"),
            "--pid-file",
            str(pid_file),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr  # the parent returns at once
    wait_for(lambda: pid_file.exists() and (tmp_path / "cmd").exists())
    pid = int(pid_file.read_text())
    try:
        # a session of its own (double fork: not its leader, so it can never get a terminal back)
        assert os.getsid(pid) not in (os.getsid(0), pid)
    finally:
        os.kill(pid, signal.SIGTERM)  # stop it whatever happened: it is not our child
    wait_for(lambda: not Path(f"/proc/{pid}").exists())
    wait_for(lambda: not pid_file.exists())


def test_stdout_target_uses_journald_priorities(tmp_path: Path) -> None:
    conf = tmp_path / "c.conf"
    conf.write_text("log_level = 0\n")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "milter_agent",
            "-d",
            "1",
            "-u",
            "root",
            "-c",
            str(conf),
            "--log-target",
            "stdout",
            "-p",
            f"inet:{free_port()}@127.0.0.1",
            "-i",
            f"unix:{tmp_path}/cmd",
            "--spool-dir",
            str(tmp_path / "spool"),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    first = proc.stdout.readline()
    proc.terminate()
    proc.wait(timeout=30)
    assert first.startswith("<6>listening on inet:")
