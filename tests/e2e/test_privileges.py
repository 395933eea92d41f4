"""-u: root only when asked, the real drop to a user, and a clear failure when that user
cannot read the installation (the 0700-home virtualenv trap)."""

from __future__ import annotations

import os
import pwd
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from faults.faultkit import MilterClient, proc_ids, unprivileged_daemon
from milter_agent.control import client as control_client
from support.postfix import PostfixInstance
from support.procs import as_user
from support.sink import SmtpSink
from support.smtp import build_message, send_message
from support.util import free_port, pid_alive, public_tmpdir

SRC = Path(__file__).resolve().parents[2] / "src"
SYSTEM_PYTHON = "/usr/bin/python3"


def start(
    python: str, args: list[str], env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [python, "-m", "milter_agent", "-d", "1", *args],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
    )


@pytest.fixture
def public_dir() -> Iterator[Path]:
    """A directory any user can traverse (pytest's own tmp dir is 0700)."""
    with public_tmpdir("ma-priv-") as path:
        yield path


def config(directory: Path, text: str = "log_level = 0\n") -> Path:
    path = directory / "milter-agent.conf"
    path.write_text(text)
    path.chmod(0o644)
    return path


def base_args(directory: Path) -> list[str]:
    return [
        "-c",
        str(config(directory)),
        "-p",
        f"inet:{free_port()}@127.0.0.1",
        "-i",
        f"unix:{directory}/cmd",
        "--spool-dir",
        str(directory / "spool"),
    ]


def test_root_needs_an_explicit_user(public_dir: Path) -> None:
    try:
        pwd.getpwnam("_milter-agent")
        pytest.fail("this test expects no _milter-agent user on the machine")
    except KeyError:
        pass
    out = start(sys.executable, base_args(public_dir))
    assert out.returncode == 1
    assert "user '_milter-agent' does not exist" in out.stderr and "-u root" in out.stderr
    out = start(sys.executable, ["-u", "no_such_user_here", *base_args(public_dir)])
    assert out.returncode == 1 and "user 'no_such_user_here' does not exist" in out.stderr


def test_unreadable_installation_fails_clearly(public_dir: Path) -> None:
    private = public_dir / "private-venv"
    private.mkdir(mode=0o700)
    env = {**os.environ, "PYTHONPATH": f"{SRC}:{private}"}
    out = start(sys.executable, ["-u", "nobody", *base_args(public_dir)], env)
    assert out.returncode == 1
    assert "user nobody cannot read" in out.stderr and str(private) in out.stderr
    assert "0700 home directory is the usual trap" in out.stderr


def test_daemon_runs_as_the_user_and_filters_run_as_it(
    public_dir: Path, postfix: PostfixInstance, sink: SmtpSink
) -> None:
    env = nobody_env()
    nobody = pwd.getpwnam("nobody")
    uid_file = public_dir / "uid"
    conf = config(
        public_dir,
        f"""
[Filter]
task_name = whoami
exec_cmd = "/bin/sh -c 'id -u > {uid_file}'"
""",
    )
    public_dir.chmod(0o777)  # the filter, running as nobody, writes its answer here
    port = free_port()
    proc = subprocess.Popen(
        [
            SYSTEM_PYTHON,
            "-m",
            "milter_agent",
            "-d",
            "1",
            "-u",
            "nobody",
            "-c",
            str(conf),
            "-p",
            f"inet:{port}@127.0.0.1",
            "-i",
            f"unix:{public_dir}/cmd",
            "--spool-dir",
            str(public_dir / "spool"),
        ],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        deadline = time.monotonic() + 30
        for line in proc.stderr:
            if "started" in line or time.monotonic() > deadline:
                break
        status = Path(f"/proc/{proc.pid}/status").read_text()
        uids = next(ln for ln in status.splitlines() if ln.startswith("Uid:")).split()[1:]
        assert uids == [str(nobody.pw_uid)] * 4, status
        spool = public_dir / "spool" / "messages"
        assert (spool.stat().st_uid, stat.S_IMODE(spool.stat().st_mode)) == (nobody.pw_uid, 0o700)
        assert (public_dir / "cmd").stat().st_uid == nobody.pw_uid
        postfix.set_milter(f"inet:127.0.0.1:{port}")
        result = send_message(postfix.address, "a@example.org", ["b@example.net"], build_message())
        assert result.accepted, result
        sink.wait_for(1)
        assert uid_file.read_text().strip() == str(nobody.pw_uid)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def nobody_env() -> dict[str, str]:
    """Run from /usr/bin/python3 with the sources on PYTHONPATH: nobody cannot read the venv
    under /root (the trap test_unreadable_installation_fails_clearly shows)."""
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        pytest.fail(f"{SYSTEM_PYTHON} is needed to run the daemon from a path nobody can read")
    site = next(Path(sys.prefix, "lib").glob("python3*/site-packages"))
    return {"PATH": "/usr/bin:/bin", "PYTHONPATH": f"{SRC}:{site}"}


def test_a_config_the_user_cannot_read_fails_at_start(public_dir: Path) -> None:
    """Every reload reads the file as the user: refuse to start rather than refuse every edit."""
    args = base_args(public_dir)
    Path(args[1]).chmod(0o600)  # root's only
    out = start(SYSTEM_PYTHON, ["-u", "nobody", *args], nobody_env())
    assert out.returncode == 1
    assert f"user nobody cannot read the configuration file {args[1]}" in out.stderr
    assert "chmod 640" in out.stderr


@pytest.mark.parametrize("writable", [False, True], ids=["root-dir", "user-dir"])
def test_pid_file_after_dropping_to_the_user(public_dir: Path, writable: bool) -> None:
    """Written as root and given to the user; at exit removed where the user may write the
    directory, else emptied (never a stale pid left behind)."""
    nobody = pwd.getpwnam("nobody")
    directory = public_dir / "run"
    directory.mkdir(mode=0o755)
    if writable:
        os.chown(directory, nobody.pw_uid, nobody.pw_gid)
    pid_file = directory / "milter-agent.pid"
    out = subprocess.run(
        [
            SYSTEM_PYTHON,
            "-m",
            "milter_agent",
            "-d",
            "0",
            "-u",
            "nobody",
            "--pid-file",
            str(pid_file),
            *base_args(public_dir),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        env=nobody_env(),
    )
    assert out.returncode == 0, out.stderr
    pid = int(pid_file.read_text())
    assert pid_file.stat().st_uid == nobody.pw_uid
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 20
    while pid_alive(pid):  # a zombie counts as gone: its new parent may not reap it
        assert time.monotonic() < deadline
        time.sleep(0.05)
    if writable:
        assert not pid_file.exists()
    else:
        assert pid_file.read_text() == ""


def free_privileged_port() -> int:
    """A port below 1024 that is free on 127.0.0.1 right now."""
    for port in range(600, 1000):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    pytest.fail("no free port in 600-999 on 127.0.0.1")


def bind_tcp(port: int) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


def bind_unix(path: Path) -> None:
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(path))


def test_sockets_only_root_may_make_are_made_before_the_drop(public_dir: Path) -> None:
    """A milter port below 1024 and a control socket in a directory only root may write to:
    nobody can make neither, so a daemon that serves on both as nobody made them before it
    dropped its privileges (and it kept none: no capabilities)."""
    nobody = pwd.getpwnam("nobody")
    unprivileged_from = int(Path("/proc/sys/net/ipv4/ip_unprivileged_port_start").read_text())
    port = free_privileged_port()
    assert port < unprivileged_from, f"ip_unprivileged_port_start is {unprivileged_from}"
    root_only = public_dir / "root-only"
    root_only.mkdir(mode=0o755)  # others may reach the socket, only root may create in it
    control = f"unix:{root_only}/cmd"
    args = ["-c", str(config(public_dir)), "-p", f"inet:{port}@127.0.0.1", "-i", control]
    with unprivileged_daemon(public_dir, [*args, "--spool-dir", str(public_dir / "spool")]) as proc:
        ids = proc_ids(proc.pid)
        assert ids["Uid"] == [nobody.pw_uid] * 4 and ids["Gid"] == [nobody.pw_gid] * 4, ids
        status = Path(f"/proc/{proc.pid}/status").read_text()
        assert "CapEff:\t0000000000000000" in status and "CapPrm:\t0000000000000000" in status
        # what the kernel tells nobody (the port in use makes no difference: the privilege
        # check comes first)
        denied = ("[Errno 13] Permission denied", -1)
        assert as_user(nobody, lambda: bind_tcp(port)) == denied
        assert as_user(nobody, lambda: bind_unix(root_only / "probe")) == denied
        # ... and yet the daemon serves on both
        with MilterClient(f"inet:{port}@127.0.0.1") as mta:
            mta.handshake()
            assert mta.message() == [(b"c", b"")]
        assert control_client.ask(control, "status")["connections_total"] == 1
