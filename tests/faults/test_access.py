"""Access: what the daemon lets others see and do.

- Running as an unprivileged user (nobody): every identity of the process is that user's
  (real, effective, saved, file-system uid and gid; no supplementary root group), the spool
  directory is 0700 and every message and result file 0600, all owned by that user, and the
  filter runs as that user too. The daemon runs from /usr/bin/python3 with PYTHONPATH, as in
  tests/e2e/test_privileges.py, because the venv's interpreter lives under /root (0700).
- The control socket refuses other users even when the file system would let them in.
- Nothing of a message's content reaches the log, at any log level.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from faults.faultkit import MilterClient, answers, message_commands, write_script
from milter_agent import protocol as p
from milter_agent.control import client as control_client
from support.daemon import MilterAgentDaemon
from support.util import free_port, wait_until

Agent = Callable[..., MilterAgentDaemon]
SRC = Path(__file__).resolve().parents[2] / "src"
SYSTEM_PYTHON = "/usr/bin/python3"
NOBODY = pwd.getpwnam("nobody")

STAT_FILES = """
import json, os, sys
out = sys.argv[1]
def describe(path):
    st = os.stat(path)
    return {"path": path, "mode": st.st_mode & 0o7777, "uid": st.st_uid, "gid": st.st_gid}
json.dump({
    "files": [describe(p) for p in sys.argv[2:]],
    "cwd": describe("."),
    "uid": os.getuid(), "euid": os.geteuid(), "gid": os.getgid(), "groups": os.getgroups(),
}, open(out, "w"))
"""


@pytest.fixture
def public_dir() -> Iterator[Path]:
    """A directory nobody can use (pytest's own tmp dir is 0700)."""
    path = Path(tempfile.mkdtemp(prefix="ma-access-", dir="/tmp"))
    path.chmod(0o777)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def proc_ids(pid: int) -> dict[str, list[int]]:
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {
        key: [int(v) for v in line.split()[1:]]
        for line in status
        for key in ("Uid", "Gid", "Groups")
        if line.startswith(key + ":")
    }


def test_unprivileged_daemon_spool_and_filter_files(public_dir: Path) -> None:
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        pytest.fail(f"{SYSTEM_PYTHON} is needed to run the daemon from a path nobody can read")
    site = next(Path(sys.prefix, "lib").glob("python3*/site-packages"))
    script = write_script(public_dir / "stat.py", STAT_FILES)
    out = public_dir / "seen.json"
    conf = public_dir / "milter-agent.conf"
    conf.write_text(
        f"""
[Filter]
task_name = stat
exec_cmd = "{SYSTEM_PYTHON} {script} {out} %f %r %n %h"
"""
    )
    conf.chmod(0o644)
    port = free_port()
    log = public_dir / "daemon.log"
    with open(log, "wb") as err:
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
            env={"PATH": "/usr/bin:/bin", "PYTHONPATH": f"{SRC}:{site}"},
            stderr=err,
        )
    try:
        wait_until(lambda: "started" in log.read_text() or proc.poll() is not None, 30)
        assert proc.poll() is None, log.read_text()
        ids = proc_ids(proc.pid)
        assert ids["Uid"] == [NOBODY.pw_uid] * 4, ids
        assert ids["Gid"] == [NOBODY.pw_gid] * 4, ids
        assert 0 not in ids["Groups"], ids
        spool = public_dir / "spool" / "messages"
        info = spool.stat()
        assert (info.st_uid, stat.S_IMODE(info.st_mode)) == (NOBODY.pw_uid, 0o700)
        with MilterClient(f"inet:{port}@127.0.0.1") as mta:
            mta.handshake()
            assert mta.message() == [(b"c", b"")]
        seen = json.loads(out.read_text())
        assert (seen["uid"], seen["euid"], seen["gid"]) == (NOBODY.pw_uid,) * 2 + (NOBODY.pw_gid,)
        assert 0 not in seen["groups"]
        assert seen["cwd"]["mode"] == 0o700 and seen["cwd"]["uid"] == NOBODY.pw_uid
        for described in seen["files"]:
            assert Path(described["path"]).parent == spool
            assert (described["mode"], described["uid"]) == (0o600, NOBODY.pw_uid), described
        assert os.listdir(spool) == []
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def as_user(user: pwd.struct_passwd, action: Callable[[], object]) -> tuple[str, int]:
    """Run ``action`` in a child process as ``user``; (its answer or error text, exit code)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.setgroups([])
            os.setgid(user.pw_gid)
            os.setuid(user.pw_uid)
            try:
                answer, code = json.dumps(action()), 0
            except control_client.ClientError as exc:
                answer, code = str(exc), exc.code
            except OSError as exc:
                answer, code = str(exc), -1
            os.write(write_end, json.dumps([answer, code]).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    os.waitpid(pid, 0)
    with os.fdopen(read_end, "rb") as pipe:
        answer, code = json.loads(pipe.read())
    return answer, code


def test_control_socket_refuses_other_users(tmp_path: Path, milter_agent: Agent) -> None:
    agent = milter_agent("log_level = 0\n")
    path = control_client.socket_path(agent.control_spec)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o660
    # let the file system allow it, so that the peer-credential check is what refuses
    os.chmod(path, 0o666)
    for directory in (Path(path).parent, *Path(path).parents):
        directory.chmod(directory.stat().st_mode | 0o001)
    for words in (("status",), ("disable", "x"), ("reload",)):
        answer, code = as_user(NOBODY, lambda w=words: control_client.ask(agent.control_spec, *w))
        assert (answer, code) == ("permission denied", control_client.EXIT_DENIED), words
    assert agent.log_text().count("control socket: refused pid") == 3
    assert f"uid {NOBODY.pw_uid}" in agent.log_text()
    served = control_client.ask(agent.control_spec, "filters")  # root is served; nothing changed
    assert control_client.ask(agent.control_spec, "status")["config_generation"] == 1
    assert served == []


SECRETS = ("BODY-SECRET-7f3a", "HEADER-SECRET-91c2", "RCPT-ARG-SECRET-44d1")


@pytest.mark.parametrize("level", ["0", "9"])
def test_message_content_never_reaches_the_log(
    tmp_path: Path, milter_agent: Agent, level: str
) -> None:
    script = write_script(tmp_path / "ok.sh", '#!/bin/sh\necho "X-Checked: yes" > "$2"\n')
    agent = milter_agent(
        f'[Filter]\ntask_name = ok\nexec_cmd = "{script} %f %h"\n',
        extra_args=["-H", "-l", level, *(["-v", "-I"] if level != "0" else [])],
    )
    commands = message_commands(
        headers=[("X-Token", f" {SECRETS[1]}"), ("Authorization", f" Bearer {SECRETS[1]}")],
        body=f"{SECRETS[0]}\r\n".encode() * 10,
    )
    commands[1] = p.Rcpt("<b@example.net>", (f"ORCPT=rfc822;{SECRETS[2]}",))
    with MilterClient(agent.socket_spec) as mta:
        mta.handshake()
        assert mta.message(commands)[-1] == (b"c", b"")
    answers(agent, lambda got: got[-1] == (b"c", b""))
    time.sleep(0.2)
    log = agent.log_text()
    assert "decision=continue" in log
    for secret in SECRETS:
        assert secret not in log, secret
