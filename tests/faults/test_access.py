"""Access: what the daemon lets others see and do.

- Running as an unprivileged user (nobody): every identity of the process is that user's
  (real, effective, saved, file-system uid and gid; no supplementary root group), the spool
  directory is 0700 and every message and result file 0600, all owned by that user, and the
  filter runs as that user too. The daemon runs from /usr/bin/python3 with PYTHONPATH, as in
  tests/e2e/test_privileges.py, because the venv's interpreter lives under /root (0700).
- The control socket refuses other users even when the file system would let them in, with
  the daemon running as root and as nobody.
- Nothing of a message's content, and no ESMTP argument, reaches the log, at any log level.
"""

from __future__ import annotations

import json
import os
import pwd
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from faults.faultkit import (
    SYSTEM_PYTHON,
    MilterClient,
    answers,
    message_commands,
    proc_ids,
    unprivileged_daemon,
    write_script,
)
from milter_agent import protocol as p
from milter_agent.control import client as control_client
from support.daemon import MilterAgentDaemon
from support.procs import as_user
from support.util import free_port, public_tmpdir

Agent = Callable[..., MilterAgentDaemon]
NOBODY = pwd.getpwnam("nobody")
#: A third user, neither root nor the daemon's: an existing system account.
THIRD = pwd.getpwnam("daemon")

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
    with public_tmpdir("ma-access-", 0o777) as path:
        yield path


def nobody_args(directory: Path, conf: Path, port: int) -> list[str]:
    return [
        "-c",
        str(conf),
        "-p",
        f"inet:{port}@127.0.0.1",
        "-i",
        f"unix:{directory}/cmd",
        "--spool-dir",
        str(directory / "spool"),
    ]


def test_unprivileged_daemon_spool_and_filter_files(public_dir: Path) -> None:
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
    with unprivileged_daemon(public_dir, nobody_args(public_dir, conf, port)) as proc:
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


def open_to_everyone(control_spec: str) -> None:
    """Let the file system allow anyone in, so that the peer-credential check is what
    refuses."""
    path = control_client.socket_path(control_spec)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o660
    os.chmod(path, 0o666)
    for directory in (Path(path).parent, *Path(path).parents):
        directory.chmod(directory.stat().st_mode | 0o001)


def assert_refused(control_spec: str, user: pwd.struct_passwd) -> None:
    """Reading and commands alike: ``permission denied`` (exit 4)."""
    for words in (("status",), ("disable", "x"), ("reload",)):
        answer, code = as_user(user, lambda w=words: control_client.ask(control_spec, *w))
        assert (answer, code) == ("permission denied", control_client.EXIT_DENIED), words


def test_control_socket_refuses_other_users(tmp_path: Path, milter_agent: Agent) -> None:
    agent = milter_agent("log_level = 0\n")
    open_to_everyone(agent.control_spec)
    assert_refused(agent.control_spec, NOBODY)
    assert agent.log_text().count("control socket: refused pid") == 3
    assert f"uid {NOBODY.pw_uid}" in agent.log_text()
    served = control_client.ask(agent.control_spec, "filters")  # root is served; nothing changed
    assert control_client.ask(agent.control_spec, "status")["config_generation"] == 1
    assert served == []


def test_control_socket_of_an_unprivileged_daemon_refuses_a_third_user(public_dir: Path) -> None:
    """The daemon as nobody: nobody (its own user) and root are served, the system user
    ``daemon`` is not."""
    conf = public_dir / "milter-agent.conf"
    conf.write_text("log_level = 0\n")
    conf.chmod(0o644)
    control = f"unix:{public_dir}/cmd"
    with unprivileged_daemon(public_dir, nobody_args(public_dir, conf, free_port())):
        assert os.stat(public_dir / "cmd").st_uid == NOBODY.pw_uid
        open_to_everyone(control)
        assert_refused(control, THIRD)
        answer, code = as_user(NOBODY, lambda: control_client.ask(control, "status"))
        assert code == 0 and json.loads(answer)["config_generation"] == 1, answer
        assert control_client.ask(control, "status")["config_generation"] == 1  # root
        log = (public_dir / "daemon.log").read_text()
    assert log.count("control socket: refused pid") == 3
    assert f"uid {THIRD.pw_uid} gid {THIRD.pw_gid}" in log


#: What no log line may carry, at any level: the body, header values, and the ESMTP arguments
#: of MAIL and RCPT (AUTH= names the authenticated sender, ORCPT the original recipient).
#: {auth_authen}, the SMTP AUTH login name, is no secret in itself (Postfix logs it as
#: sasl_username), but milter-agent has no use for it in a log line, so it must not show up
#: either. A password never reaches a milter: the MTA does the SASL exchange and passes only
#: the macros {auth_type}, {auth_authen}, {auth_author} and {auth_ssf}.
SECRETS = {
    "body": "BODY-SECRET-7f3a",
    "header": "HEADER-SECRET-91c2",
    "rcpt-arg": "RCPT-ARG-SECRET-44d1",
    "mail-arg": "MAIL-ARG-SECRET-0b5e",
    "auth_authen": "AUTH-USER-SECRET-d20c",
}


def secret_message() -> list[p.Command]:
    commands = message_commands(
        headers=[
            ("X-Token", f" {SECRETS['header']}"),
            ("Authorization", f" Bearer {SECRETS['header']}"),
        ],
        body=f"{SECRETS['body']}\r\n".encode() * 10,
    )
    mail_args = (f"AUTH=<{SECRETS['mail-arg']}@example.org>", "SIZE=1234", "BODY=8BITMIME")
    auth = {"{auth_type}": "PLAIN", "{auth_authen}": SECRETS["auth_authen"]}
    commands[0:1] = [p.Macro(b"M", auth), p.Mail("<a@example.org>", mail_args)]
    commands[2] = p.Rcpt("<b@example.net>", (f"ORCPT=rfc822;{SECRETS['rcpt-arg']}",))
    return commands


@pytest.mark.parametrize("level", ["0", "1", "9"])
def test_message_content_never_reaches_the_log(
    tmp_path: Path, milter_agent: Agent, level: str
) -> None:
    script = write_script(tmp_path / "ok.sh", '#!/bin/sh\necho "X-Checked: yes" > "$2"\n')
    agent = milter_agent(
        f'[Filter]\ntask_name = ok\nexec_cmd = "{script} %f %h"\n',
        extra_args=["-H", "-l", level, *(["-v", "-I"] if level == "9" else [])],
    )
    with MilterClient(agent.socket_spec) as mta:
        mta.handshake()
        assert mta.message(secret_message())[-1] == (b"c", b"")
    answers(agent, lambda got: got[-1] == (b"c", b""))
    time.sleep(0.2)
    log = agent.log_text()
    assert "decision=continue" in log
    for what, secret in SECRETS.items():
        assert secret not in log, what
