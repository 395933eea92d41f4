"""Process running: exit codes, signals, timeouts, bounded output, no hang, no zombie."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from milter_agent import procs

ENV = {"PATH": "/usr/bin:/bin"}


def run(argv: list[str], **kw: object) -> procs.ProcessResult:
    return asyncio.run(procs.run_program(argv, env=ENV, **kw))  # type: ignore[arg-type]


def sh(script: str, **kw: object) -> procs.ProcessResult:
    return run(["/bin/sh", "-c", script], **kw)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def zombies_of_us() -> list[str]:
    me = str(os.getpid())
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[0] == "Z" and fields[1] == me:
                out.append(entry.name)
    return out


def test_exit_code_and_output() -> None:
    result = sh("echo out; echo err >&2; exit 3")
    assert (result.returncode, result.stdout, result.stderr) == (3, b"out\n", b"err\n")
    assert result.signal is None and not result.timed_out


def test_argument_with_shell_metacharacters_stays_one_inert_argument(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    evil = f"a;touch {marker}@x $(touch {marker}) `touch {marker}`"
    result = run([sys.executable, "-c", "import sys; print(repr(sys.argv[1:]))", evil])
    assert result.stdout.decode().strip() == repr([evil])
    assert not marker.exists()


def test_death_by_signal_is_reported() -> None:
    result = sh("kill -KILL $$")
    assert result.signal == signal.SIGKILL


def test_missing_program_is_a_spawn_error() -> None:
    with pytest.raises(procs.SpawnError, match="cannot run"):
        run(["/nonexistent/filter"])


def test_timeout_with_kill_terminates_the_whole_group(tmp_path: Path) -> None:
    pidfile = tmp_path / "grandchild"
    started = time.monotonic()
    result = sh(f"sleep 60 & echo $! > {pidfile}; wait", timeout=0.3, kill=True, kill_grace=1)
    assert result.timed_out and result.killed
    assert time.monotonic() - started < 10
    grandchild = int(pidfile.read_text())
    deadline = time.monotonic() + 5
    while alive(grandchild) and time.monotonic() < deadline:
        procs.reap_orphans()
        time.sleep(0.05)
    assert not alive(grandchild)


def test_timeout_with_term_ignored_escalates_to_kill() -> None:
    result = sh("trap '' TERM; sleep 30", timeout=0.2, kill=True, kill_grace=0.3)
    assert result.killed and result.signal == signal.SIGKILL


def test_timeout_without_kill_leaves_it_running_then_reaps_it(tmp_path: Path) -> None:
    async def go() -> None:
        result = await procs.run_program(
            ["/bin/sh", "-c", "sleep 0.6"], env=ENV, timeout=0.1, kill=False
        )
        assert result.timed_out and not result.killed and result.returncode is None
        await asyncio.sleep(1.2)  # the background waiter reaps it

    asyncio.run(go())
    assert zombies_of_us() == []


def test_huge_output_is_bounded_and_does_not_block() -> None:
    result = sh("head -c 100000000 /dev/zero", output_limit=1000, timeout=60)
    assert result.returncode == 0 and len(result.stdout) == 1000


def test_grandchild_holding_stdout_does_not_hang() -> None:
    started = time.monotonic()
    result = sh("(sleep 5; echo late) & echo early; exit 0", timeout=30)
    assert result.returncode == 0 and result.stdout == b"early\n"
    assert time.monotonic() - started < 4


def test_stdin_from_file_and_exit_before_reading(tmp_path: Path) -> None:
    message = tmp_path / "m"
    message.write_bytes(b"x" * 1_000_000)
    assert sh("wc -c", stdin_path=str(message)).stdout.strip() == b"1000000"
    assert sh("exit 0", stdin_path=str(message)).returncode == 0


def test_orphans_are_reaped_as_subreaper() -> None:
    assert procs.become_subreaper()
    result = sh("(sleep 0.2) & exit 0")
    assert result.returncode == 0
    time.sleep(0.5)  # the orphaned sleep exits and becomes our zombie
    deadline = time.monotonic() + 5
    while zombies_of_us() and time.monotonic() < deadline:
        procs.reap_orphans()
        time.sleep(0.05)
    assert zombies_of_us() == []
