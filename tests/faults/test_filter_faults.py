"""A filter program misbehaves: killed by SIGKILL, hangs (with and without -T), leaves a
grandchild holding its stdout, writes 100 MB, exits before reading its stdin. Through the real
Postfix: each message ends in a definite answer at the SMTP client, the next message is
filtered correctly, and the daemon is back to its baseline (faultkit.settle)."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from faults.faultkit import (
    Packet,
    baseline,
    children,
    filters,
    peak_rss_kb,
    reset_peak_rss,
    settle,
    status,
    write_script,
)
from milter_agent import procs
from support.daemon import MilterAgentDaemon
from support.postfix import PostfixInstance
from support.sink import SmtpSink
from support.smtp import SmtpResult, build_message, send_message
from support.util import pid_alive, wait_until

Agent = Callable[..., MilterAgentDaemon]

FAULTY = """#!/bin/sh
# $1 = the message, $2 = the header file, $3 = where to say our pid
case "$(grep -m1 '^Subject:' "$1")" in
  *sigkill*) echo $$ > "$3.tmp"; mv "$3.tmp" "$3"; exec sleep 30 ;;
  *hang*) sleep 30 ;;
  *grandchild*) (sleep 1.5; echo late) & echo early ;;
  *flood*) head -c 100000000 /dev/zero ;;
  *nostdin*) exit 0 ;;
  *reject*) echo "rejected by the test filter"; exit 1 ;;
esac
echo "X-Checked: yes" > "$2"
"""


def start(
    tmp_path: Path, postfix: PostfixInstance, milter_agent: Agent, *, kill: bool, timeout: str
) -> MilterAgentDaemon:
    script = write_script(tmp_path / "faulty.sh", FAULTY)
    agent = milter_agent(
        f"""
kill_grace = 1
[Filter]
task_name = faulty
reject_exit_codes = "1"
task_timeout = {timeout}
stdin = message
exec_cmd = "{script} %f %h {tmp_path / "pid"}"
""",
        extra_args=["-H", "-E", *(["-T"] if kill else [])],
    )
    postfix.set_milter(agent.postfix_spec)
    return agent


def send(postfix: PostfixInstance, subject: str, body_size: int = 1024) -> SmtpResult:
    data = build_message(subject=subject, body_size=body_size)
    return send_message(postfix.address, "a@example.org", ["b@example.net"], data, timeout=60)


def delivered(sink: SmtpSink, subject: str) -> list[str]:
    """The X-Checked headers of the message with ``subject`` once the sink has it."""
    msg = sink.wait_for_message(lambda m: str(m.headers["Subject"]) == subject, timeout=30)
    return msg.header_values("X-Checked")


def normal_message_is_filtered(postfix: PostfixInstance, sink: SmtpSink, n: int) -> None:
    result = send(postfix, f"normal {n}")
    assert result.accepted, result
    assert delivered(sink, f"normal {n}") == ["yes"]


def checked(got: list[Packet]) -> bool:
    """A message straight to the milter socket, as settle sends it: filtered as usual."""
    return got == [(b"h", b"X-Checked\0 yes\0"), (b"c", b"")]


def kill_when_started(pid_file: Path) -> None:
    wait_until(pid_file.exists, 10, interval=0.01)
    os.kill(int(pid_file.read_text()), signal.SIGKILL)


#: How far the daemon's peak memory may rise during one faulty message: the 64 KiB it keeps of
#: a program's output and allocator noise, far from the 100 MB of the flood.
PEAK_SLACK_KB = 8 * 1024

#: fault -> (SMTP code, X-Checked headers of the delivered message or None, most seconds)
FAULTS = {
    "sigkill": (451, None, 5),
    "hang": (451, None, 5),  # task_timeout 1 + kill_grace 1
    "grandchild": (250, ["yes"], 1.4),  # answered before the grandchild (1.5 s) is gone
    "flood": (250, ["yes"], 10),
    "nostdin": (250, [], 10),
    "reject": (550, None, 5),
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_filter_fault_ends_in_a_definite_answer(
    tmp_path: Path,
    postfix: PostfixInstance,
    sink: SmtpSink,
    milter_agent: Agent,
    fault: str,
) -> None:
    agent = start(tmp_path, postfix, milter_agent, kill=True, timeout="1")
    normal_message_is_filtered(postfix, sink, 0)
    base = baseline(agent, checked)
    killer = None
    if fault == "sigkill":
        killer = threading.Thread(target=kill_when_started, args=(tmp_path / "pid",))
        killer.start()
    reset_peak_rss(agent.pid)
    rss_before = agent.rss_kb()
    started = time.monotonic()
    # nostdin: a message far bigger than a pipe buffer, on a stdin the filter never reads
    result = send(postfix, fault, body_size=4_000_000 if fault == "nostdin" else 1024)
    took = time.monotonic() - started
    # flood: 100 MB went through the daemon's pipe, never into its memory, not even briefly
    assert peak_rss_kb(agent.pid) - rss_before < PEAK_SLACK_KB
    if killer is not None:
        killer.join(10)
    code, headers, most = FAULTS[fault]
    assert result.code == code, result
    if code == 451:
        assert result.text.startswith("4.7.1"), result
    if headers is not None:
        assert delivered(sink, fault) == headers
    assert took < most, f"{fault}: the answer took {took:.1f}s"
    settle(agent, base, timeout=10)  # the grandchild outlives the filter, then is reaped
    normal_message_is_filtered(postfix, sink, 1)
    settle(agent, base)
    stats = filters(agent)[0]
    log = agent.log_text()
    assert "Traceback" not in log
    if fault == "sigkill":
        assert "filter faulty failed: killed by signal SIGKILL" in log
        assert stats["errors"] == 1
    elif fault == "hang":
        assert "filter faulty failed: timed out after 1s and was killed" in log
        assert (stats["timeouts"], stats["kills"]) == (1, 1)
    else:
        assert stats["errors"] == 0, stats
    postfix.wait_drained()
    expected_delivered = {"normal 0", "normal 1"} | ({fault} if code == 250 else set())
    assert {str(m.headers["Subject"]) for m in sink.messages} == expected_delivered


def test_hang_without_kill_is_left_running_then_reaped(
    tmp_path: Path, postfix: PostfixInstance, sink: SmtpSink, milter_agent: Agent
) -> None:
    """Without -T a timed-out program is left to run (the original's behaviour): the message is
    answered at the timeout, the program is reaped when it ends, no zombie stays."""
    agent = start(tmp_path, postfix, milter_agent, kill=False, timeout="1")
    normal_message_is_filtered(postfix, sink, 0)
    base = baseline(agent, checked)
    script = tmp_path / "faulty.sh"
    script.write_text(FAULTY.replace("*hang*) sleep 30 ;;", "*hang*) exec sleep 2.5 ;;"))
    started = time.monotonic()
    result = send(postfix, "hang")
    assert result.code == 451 and time.monotonic() - started < 2.4, result
    assert [c.command for c in children(agent.pid)] == ["sleep"]  # still running
    settle(agent, base, timeout=10)
    assert "left running after its timeout has now exited" in agent.log_text()
    normal_message_is_filtered(postfix, sink, 1)
    stats = filters(agent)[0]
    assert (stats["timeouts"], stats["kills"]) == (1, 0)
    # through Postfix: normal 0, hang, normal 1; directly: the warm-up and settle's message
    assert status(agent)["verdicts"] == {"continue": 4, "tempfail": 1}


def test_left_running_program_writing_late_leaves_no_spool_file(
    tmp_path: Path, postfix: PostfixInstance, sink: SmtpSink, milter_agent: Agent
) -> None:
    agent = start(tmp_path, postfix, milter_agent, kill=False, timeout="1")
    normal_message_is_filtered(postfix, sink, 0)
    base = baseline(agent, checked)
    script = tmp_path / "faulty.sh"
    script.write_text(FAULTY.replace("*hang*) sleep 30 ;;", "*hang*) sleep 1.5 ;;"))
    assert send(postfix, "hang").code == 451
    # the program writes its header file after 1.5 s, then ends and is reaped: the file goes
    settle(agent, base, timeout=5)
    assert "left running after its timeout has now exited" in agent.log_text()
    normal_message_is_filtered(postfix, sink, 1)
    settle(agent, base)
    postfix.wait_drained()
    assert {str(m.headers["Subject"]) for m in sink.messages} == {"normal 0", "normal 1"}


def test_a_flood_of_output_keeps_exactly_the_limit_and_costs_no_memory() -> None:
    """What run_program keeps of 100 MB on stdout and 100 MB on stderr: exactly the first 64 KiB
    of each; the rest is read and dropped as it comes, so this process's peak memory hardly
    moves."""
    flood = "head -c 100000000 /dev/zero; head -c 100000000 /dev/zero | tr '\\0' e >&2"
    reset_peak_rss(os.getpid())
    rss_before = peak_rss_kb(os.getpid())
    result = asyncio.run(
        procs.run_program(["/bin/sh", "-c", flood], env={"PATH": "/usr/bin:/bin"}, timeout=60)
    )
    assert result.returncode == 0
    assert procs.OUTPUT_LIMIT == 64 * 1024
    assert result.stdout == b"\0" * procs.OUTPUT_LIMIT
    assert result.stderr == b"e" * procs.OUTPUT_LIMIT
    assert peak_rss_kb(os.getpid()) - rss_before < PEAK_SLACK_KB


# --- run_program when nobody waits for it any more -------------------------------------------


def pipe_fds() -> int:
    return sum(1 for fd in os.listdir("/proc/self/fd") if "pipe:" in _link(fd))


def _link(fd: str) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return ""


@pytest.mark.parametrize("kill", [True, False], ids=["kill", "no-kill"])
def test_cancelled_program_is_ended_or_reaped_and_its_pipes_closed(
    tmp_path: Path, kill: bool
) -> None:
    """What the session does when the MTA hangs up during a filter: cancel run_program. With
    -T the program is terminated at once; without, it runs to its end; either way it is reaped
    and its pipes are closed."""
    pid_file = tmp_path / "pid"

    async def go() -> None:
        before = pipe_fds()
        task = asyncio.ensure_future(
            procs.run_program(
                ["/bin/sh", "-c", f"echo $$ > {pid_file}; sleep {30 if kill else 0.5}; echo x"],
                env={"PATH": "/usr/bin:/bin"},
                timeout=60,
                kill=kill,
                kill_grace=1,
            )
        )
        for _ in range(200):
            await asyncio.sleep(0.01)
            if pid_file.exists() and pid_file.read_text().strip():
                break
        pid = int(pid_file.read_text())
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        for _ in range(300):
            if not pid_alive(pid) and pipe_fds() == before and not procs._background:
                break
            await asyncio.sleep(0.01)
        assert not pid_alive(pid)
        assert pipe_fds() == before
        assert pid not in procs._children

    started = time.monotonic()
    asyncio.run(go())
    assert time.monotonic() - started < (3 if kill else 4)
