"""The daemon's control-socket handlers, in process: counters across a reload and a
reset-stats with messages in flight, the log target in force, -l 1 detail lines."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

import pytest

from milter_agent.config.options import parse_command_line
from milter_agent.daemon import Daemon, effective_log_target
from milter_agent.logsetup import DETAIL
from milter_agent.message import Client, Message
from milter_agent.pipeline import Decision, StepResult, Verdict

STAMP = """
[Address]
task_name = stamp
add_header_name = "X-Stamp"
add_header_value = "1"
"""


def slow_filter(tmp_path: Path, seconds: float) -> str:
    """A filter holding a lock directory while it runs: a second instance at the same time
    leaves an OVERLAP file behind."""
    lock, overlap = tmp_path / "lock", tmp_path / "OVERLAP"
    return f"""
[Filter]
task_name = slow
run_single_instance = 1
exec_cmd = "/bin/sh -c 'mkdir {lock} || touch {overlap}; sleep {seconds}; rmdir {lock}'"
"""


def make_daemon(tmp_path: Path, text: str, *argv: str) -> Daemon:
    conf = tmp_path / "milter-agent.conf"
    conf.write_text(text)
    daemon = Daemon(parse_command_line(["-c", str(conf), "-HA", *argv]), str(tmp_path / "sp"))
    daemon.spool.prepare()
    return daemon


def message(daemon: Daemon, queue_id: str = "QID1") -> Message:
    path = daemon.spool.new_path("msg")
    data = b"From: <a@example.com>\r\nSubject: hi\r\n\r\nbody\r\n"
    path.write_bytes(data)
    return Message(
        Client("client.example", "192.0.2.1", 25, "4", "helo.example"),
        "<a@example.com>",
        recipients=["<b@example.com>"],
        headers=[("From", " <a@example.com>"), ("Subject", " hi")],
        macros={"i": queue_id},
        spool_path=path,
        size=len(data),
        body_size=6,
    )


def ask(daemon: Daemon, command: str, *args: str) -> Any:
    return daemon.control_handlers()[command](list(args))


async def deliver(daemon: Daemon, queue_id: str = "QID1") -> Decision:
    msg = message(daemon, queue_id)
    started = time.monotonic()
    decision = await daemon.pipeline().run(msg)
    daemon._message_done(msg, decision, time.monotonic() - started)
    return decision


def test_reload_keeps_filter_and_address_rule_counters(tmp_path: Path) -> None:
    daemon = make_daemon(tmp_path, STAMP + slow_filter(tmp_path, 0))

    async def three() -> None:
        for i in range(3):
            await deliver(daemon, f"Q{i}")

    asyncio.run(three())
    filters, addresses = ask(daemon, "filters"), ask(daemon, "addresses")
    assert [(a["matches"], a["changes"]) for a in addresses] == [(3, 3)]
    assert filters[0]["runs"] == 3
    (tmp_path / "milter-agent.conf").write_text(STAMP + slow_filter(tmp_path, 0) + "# edited\n")
    assert ask(daemon, "reload") == {"reloaded": True, "error": None}
    assert ask(daemon, "status")["config_generation"] == 2
    assert ask(daemon, "addresses") == addresses
    assert ask(daemon, "filters") == filters


def test_a_section_left_out_of_the_reload_loses_its_counters(tmp_path: Path) -> None:
    daemon = make_daemon(tmp_path, STAMP)
    asyncio.run(deliver(daemon))
    (tmp_path / "milter-agent.conf").write_text(STAMP.replace("stamp", "stamp2"))
    ask(daemon, "reload")
    (tmp_path / "milter-agent.conf").write_text(STAMP)
    ask(daemon, "reload")
    assert [a["matches"] for a in ask(daemon, "addresses")] == [0]


def test_reset_stats_with_messages_in_flight(tmp_path: Path) -> None:
    """reset-stats while one run holds the only instance and another waits: both still count
    (on the same state), running/waiting stay right, and the two never overlap."""
    daemon = make_daemon(tmp_path, STAMP + slow_filter(tmp_path, 0.5))

    async def go() -> tuple[dict[str, Any], dict[str, Any]]:
        await deliver(daemon, "BEFORE")
        first = asyncio.ensure_future(deliver(daemon, "A"))
        second = asyncio.ensure_future(deliver(daemon, "B"))
        for _ in range(100):  # until A runs and B waits
            (row,) = ask(daemon, "filters")
            if (row["running"], row["waiting"]) == (1, 1):
                break
            await asyncio.sleep(0.02)
        assert ask(daemon, "reset-stats")["reset"] is True
        (during,) = ask(daemon, "filters")
        await asyncio.gather(first, second)
        (after,) = ask(daemon, "filters")
        return during, after

    during, after = asyncio.run(go())
    assert (during["running"], during["waiting"], during["runs"]) == (1, 1, 0)
    assert (after["running"], after["waiting"]) == (0, 0)
    assert (after["runs"], after["verdicts"]) == (2, {"continue": 2})
    assert not (tmp_path / "OVERLAP").exists(), "two instances ran at once"
    (rule,) = ask(daemon, "addresses")
    assert (rule["matches"], rule["changes"]) == (0, 0)  # stamped before the reset
    status = ask(daemon, "status")
    assert (status["messages"], status["verdicts"]) == (2, {"continue": 2})


def test_reset_stats_zeroes_message_and_connection_counts(tmp_path: Path) -> None:
    daemon = make_daemon(tmp_path, STAMP)

    class Server:
        connections_now, connections_total = 1, 7

    daemon.server = Server()  # type: ignore[assignment]
    asyncio.run(deliver(daemon))
    before = ask(daemon, "status")
    assert (before["messages"], before["bytes"] > 0, before["connections_total"]) == (1, True, 7)
    answer = ask(daemon, "reset-stats")
    after = ask(daemon, "status")
    assert (after["messages"], after["verdicts"], after["bytes"]) == (0, {}, 0)
    assert (after["connections_total"], after["connections_now"]) == (0, 1)
    assert after["stats_since"] == answer["stats_since"] >= before["stats_since"]
    Server.connections_total = 9
    assert ask(daemon, "status")["connections_total"] == 2
    assert daemon.snapshot().connections_total == 2


def test_reset_keeps_the_on_off_state(tmp_path: Path) -> None:
    daemon = make_daemon(tmp_path, STAMP + slow_filter(tmp_path, 0))
    assert ask(daemon, "disable", "slow") == {"name": "slow", "disabled": True}
    ask(daemon, "reset-stats")
    (row,) = ask(daemon, "filters")
    assert row["disabled"] and row["disabled_reason"] == "switched off via the control socket"
    assert ask(daemon, "enable", "slow") == {"name": "slow", "disabled": False}


def test_enable_and_disable_know_only_filters(tmp_path: Path) -> None:
    daemon = make_daemon(tmp_path, STAMP + slow_filter(tmp_path, 0))
    for words in (["stamp"], ["nothing"], [], ["slow", "slow"]):
        with pytest.raises(ValueError, match="no filter named"):
            ask(daemon, "disable", *words)


@pytest.mark.parametrize(
    ("file_line", "argv", "expected"),
    [
        ("", ["-d", "1"], "stderr"),
        ("log_target = syslog\n", ["-d", "1"], "syslog"),
        ("log_target = stdout\n", ["-d", "1"], "stdout"),
        ("[Global]\nlog_target = syslog\n", ["-d", "1"], "syslog"),
        ("log_target = syslog\n", ["-d", "1", "--log-target", "stdout"], "stdout"),
        ("", ["-d", "0"], "syslog"),
        ("log_target = stdout\n", ["-d", "0"], "stdout"),
    ],
)
def test_the_log_target_in_force(
    tmp_path: Path, file_line: str, argv: list[str], expected: str
) -> None:
    """-d 1 logs to stderr only when no target was chosen anywhere; ma-client 1 says which."""
    daemon = make_daemon(tmp_path, file_line + STAMP, *argv)
    assert daemon.log_target == expected
    assert effective_log_target(daemon.command_line, daemon.store.current) == expected
    assert ask(daemon, "settings")["log_target"] == expected


def test_settings_report_the_logging_in_force_after_a_reload(tmp_path: Path) -> None:
    daemon = make_daemon(tmp_path, STAMP, "-d", "1")
    (tmp_path / "milter-agent.conf").write_text("log_target = stdout\nlog_level = 2\n" + STAMP)
    ask(daemon, "reload")
    settings = ask(daemon, "settings")
    assert (settings["log_target"], settings["log_level"]) == ("stderr", 0)


def test_level_1_logs_one_detail_line_per_step(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    daemon = make_daemon(tmp_path, STAMP)
    decision = Decision(Verdict.REJECT)
    decision.steps += [
        StepResult("stamp", "+h:X-Stamp"),
        StepResult("scan", "reject", 0.0123, "exit 1 stdout='FOUND'"),
    ]
    caplog.set_level(logging.INFO)
    daemon._message_done(message(daemon, "QIDX"), decision, 0.02)
    assert not [r for r in caplog.records if r.levelno == DETAIL]
    caplog.set_level(DETAIL)
    daemon._message_done(message(daemon, "QIDX"), decision, 0.02)
    assert [(r.levelname, r.getMessage()) for r in caplog.records if r.levelno == DETAIL] == [
        ("DETAIL", "QIDX: step 1/2 stamp: +h:X-Stamp in 0.0ms"),
        ("DETAIL", "QIDX: step 2/2 scan: reject in 12.3ms: exit 1 stdout='FOUND'"),
    ]
