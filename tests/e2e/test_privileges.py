"""-u: root only when asked, the real drop to a user, and a clear failure when that user
cannot read the installation (the 0700-home virtualenv trap)."""

from __future__ import annotations

import os
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.postfix import PostfixInstance
from support.sink import SmtpSink
from support.smtp import build_message, send_message
from support.util import free_port

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
    path = Path(tempfile.mkdtemp(prefix="ma-priv-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


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
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        pytest.fail(f"{SYSTEM_PYTHON} is needed to run the daemon from a path nobody can read")
    site = next(Path(sys.prefix, "lib").glob("python3*/site-packages"))
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": f"{SRC}:{site}"}
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
