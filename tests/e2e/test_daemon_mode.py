"""-d 0 detaches (new session, pid file) and SIGTERM stops it cleanly; the starting process
returns only once the daemon is up, or fails with the daemon's reason; --log-target stdout
writes journald priority prefixes."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from milter_agent.control import client as control_client
from support.util import free_port, pid_alive


def wait_for(predicate, timeout: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_detached_daemon_with_pid_file(tmp_path: Path) -> None:
    conf = tmp_path / "c.conf"
    conf.write_text("log_level = 0\n")
    pid_file = tmp_path / "milter-agent.pid"
    out = detached(
        tmp_path,
        "-c",
        str(conf),
        "-p",
        f"inet:{free_port()}@127.0.0.1",
        "--pid-file",
        str(pid_file),
    )
    assert out.returncode == 0, out.stderr  # the parent returns once the daemon is up
    assert pid_file.exists() and (tmp_path / "cmd").exists()  # no waiting needed
    pid = int(pid_file.read_text())
    try:
        # a session of its own (double fork: not its leader, so it can never get a terminal back)
        assert os.getsid(pid) not in (os.getsid(0), pid)
    finally:
        os.kill(pid, signal.SIGTERM)  # stop it whatever happened: it is not our child
    wait_for(lambda: not pid_alive(pid))  # a zombie counts as gone: its parent may not reap
    wait_for(lambda: not pid_file.exists())


def detached(
    tmp_path: Path, *args: str, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Start ``milter-agent -d 0`` and return when its starting process does."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "milter_agent",
            "-d",
            "0",
            "-u",
            "root",
            "-i",
            f"unix:{tmp_path}/cmd",
            "--spool-dir",
            str(tmp_path / "spool"),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=cwd,
    )


def stop(pid: int, pid_file: Path) -> None:
    os.kill(pid, signal.SIGTERM)
    wait_for(lambda: not pid_alive(pid))  # a zombie counts as gone: its parent may not reap
    wait_for(lambda: not pid_file.exists())


def control(tmp_path: Path, command: str) -> dict[str, object]:
    answer = control_client.ask(f"unix:{tmp_path}/cmd", command, timeout=10)
    assert isinstance(answer, dict)
    return answer


def test_a_start_up_failure_reaches_the_caller(tmp_path: Path) -> None:
    """The port is taken: the starting process says so and exits 1 (not 0 and a daemon that is
    gone a moment later, with the reason only in syslog)."""
    conf = tmp_path / "c.conf"
    conf.write_text("log_level = 0\n")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = detached(tmp_path, "-c", str(conf), "-p", f"inet:{port}@127.0.0.1")
    assert out.returncode == 1
    assert out.stderr.startswith("milter-agent: cannot start:"), out.stderr
    assert "address already in use" in out.stderr.lower()
    assert not (tmp_path / "spool" / "milter-agent.pid").exists()


def test_default_pid_file_in_the_spool_directory(tmp_path: Path) -> None:
    conf = tmp_path / "c.conf"
    conf.write_text("log_level = 0\n")
    out = detached(tmp_path, "-c", str(conf), "-p", f"inet:{free_port()}@127.0.0.1")
    assert out.returncode == 0, out.stderr
    pid_file = tmp_path / "spool" / "milter-agent.pid"
    pid = int(pid_file.read_text())
    assert control(tmp_path, "status")["pid"] == pid
    stop(pid, pid_file)


def test_a_relative_config_path_still_reloads_after_detaching(tmp_path: Path) -> None:
    """-d 0 changes to /: -c given relative to where it was started must still be found."""
    (tmp_path / "c.conf").write_text("log_level = 0\n")
    out = detached(tmp_path, "-c", "c.conf", "-p", f"inet:{free_port()}@127.0.0.1", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    pid_file = tmp_path / "spool" / "milter-agent.pid"
    pid = int(pid_file.read_text())
    try:
        assert control(tmp_path, "status")["config"] == str(tmp_path / "c.conf")
        (tmp_path / "c.conf").write_text("log_level = 0\n[Address]\nadd_recipient = x\n")
        os.kill(pid, signal.SIGHUP)
        wait_for(lambda: control(tmp_path, "status")["config_generation"] == 2)
        assert control(tmp_path, "status")["last_reload_error"] is None
    finally:
        stop(pid, pid_file)


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
