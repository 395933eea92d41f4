"""The spool directory fills up or becomes unwritable under a running daemon.

A small tmpfs is mounted over the daemon's spool directory (we are root). Where mounting is not
allowed (a container without CAP_SYS_ADMIN, or MA_FAULTS_NO_MOUNT=1) the same faults are made
another way: RLIMIT_FSIZE on the daemon for "full" (writes past the limit fail with EFBIG;
Python ignores SIGXFSZ), and a regular file in place of the directory for "unwritable". Either
way the message in progress is tempfailed with a logged reason, its partial file is removed,
and the next message, once there is room again, is filtered as before."""

from __future__ import annotations

import contextlib
import os
import resource
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

from faults.faultkit import (
    MilterClient,
    Packet,
    baseline,
    message_commands,
    settle,
    spool_files,
    status,
    write_script,
)
from milter_agent import protocol as p
from support.daemon import MilterAgentDaemon

Agent = Callable[..., MilterAgentDaemon]
SIZE = 256 * 1024


def checked(got: list[Packet]) -> bool:
    return got == [(b"h", b"X-Checked\0 yes\0"), (b"c", b"")]


def start(tmp_path: Path, milter_agent: Agent) -> MilterAgentDaemon:
    script = write_script(tmp_path / "check.sh", '#!/bin/sh\necho "X-Checked: yes" > "$2"\n')
    agent = milter_agent(
        f'[Filter]\ntask_name = check\nexec_cmd = "{script} %f %h"\n', extra_args=["-H"]
    )
    return agent


def mount_allowed() -> bool:
    return os.environ.get("MA_FAULTS_NO_MOUNT", "") != "1"


def run(*argv: str) -> bool:
    return subprocess.run(argv, capture_output=True, timeout=30, check=False).returncode == 0


@contextlib.contextmanager
def small_tmpfs(directory: Path) -> Iterator[bool]:
    """Mount a 256 KiB tmpfs over ``directory``; yields False if mounting is not possible."""
    if not (
        mount_allowed()
        and run("mount", "-t", "tmpfs", "-o", "size=256k,mode=0700", "tmpfs", str(directory))
    ):
        yield False
        return
    try:
        yield True
    finally:
        run("umount", "-l", str(directory))


def big_message(size: int, subject: str = "big") -> list[p.Command]:
    commands = message_commands(subject=subject)
    i = commands.index(p.Body(b"hello\r\n"))
    line = b"x" * 998 + b"\r\n"
    chunk = line * 60  # 60 KB per BODY packet, as Postfix sends at most 64 KB
    commands[i : i + 1] = [p.Body(chunk) for _ in range(size // len(chunk) + 1)]
    return commands


def send(agent: MilterAgentDaemon, commands: list[p.Command]) -> list[Packet]:
    with MilterClient(agent.socket_spec) as mta:
        mta.handshake()
        return mta.message(commands)


def test_spool_full(tmp_path: Path, milter_agent: Agent) -> None:
    agent = start(tmp_path, milter_agent)
    spool = agent.spool_dir / "messages"
    limit = resource.prlimit(agent.pid, resource.RLIMIT_FSIZE)
    with small_tmpfs(spool) as mounted:
        if not mounted:  # the soft limit only: raising it back needs no privilege
            resource.prlimit(agent.pid, resource.RLIMIT_FSIZE, (SIZE, limit[1]))
        base = baseline(agent, checked)
        # 1. a message bigger than the room left: tempfailed while its body arrives
        assert send(agent, big_message(1024 * 1024)) == [(b"t", b"")]
        settle(agent, base)
        reason = "File too large" if not mounted else "No space left on device"
        assert f"{reason}; message tempfailed" in agent.log_text()
        # 2. a message that fits is filtered as before
        assert send(agent, big_message(100 * 1024)) == [(b"h", b"X-Checked\0 yes\0"), (b"c", b"")]
        settle(agent, base)
        if mounted:
            # 3. the disk fills up under a small message: the flush at end of message fails
            with contextlib.suppress(OSError), open(spool / "filler", "wb") as filler:
                filler.write(b"\0" * SIZE)
            assert send(agent, message_commands()) == [(b"t", b"")]
            assert spool_files(agent) == ["filler"]
            (spool / "filler").unlink()
            settle(agent, base)
    if not mounted:
        resource.prlimit(agent.pid, resource.RLIMIT_FSIZE, limit)
    verdicts = status(agent)["verdicts"]
    # the warm-up, message 2 and the fresh message of each settle
    expected = {"continue": 5, "tempfail": 2} if mounted else {"continue": 4, "tempfail": 1}
    assert verdicts == expected, verdicts


def test_spool_unwritable(tmp_path: Path, milter_agent: Agent) -> None:
    agent = start(tmp_path, milter_agent)
    spool = agent.spool_dir / "messages"
    with small_tmpfs(spool) as mounted:
        base = baseline(agent, checked)
        if mounted:
            assert run("mount", "-o", "remount,ro", str(spool))
        else:
            spool.rename(spool.with_suffix(".away"))
            spool.write_text("not a directory")
        # the file is created at DATA: the message is tempfailed right there
        assert send(agent, message_commands()) == [(b"t", b"")]
        reason = "Read-only file system" if mounted else "Not a directory"
        assert f"cannot create a file in {spool}: [Errno" in agent.log_text()
        assert reason in agent.log_text()
        assert send(agent, message_commands()) == [(b"t", b"")]  # and the next, while it lasts
        if mounted:
            assert run("mount", "-o", "remount,rw", str(spool))
        else:
            spool.unlink()
            spool.with_suffix(".away").rename(spool)
        settle(agent, base)
    assert status(agent)["verdicts"] == {"continue": 2, "tempfail": 2}
