"""A forward (message_forward_recipient) is all or nothing: it runs only with both -A and -R.

With only one of them, removing the recipient without adding the targets would lose the mail
(and adding without removing would deliver twice), so the forward is refused whole, logged once
per rule, and the recipients stay as the MTA sent them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import pwd
from datetime import datetime
from pathlib import Path

import pytest

from milter_agent.cli import main
from milter_agent.pipeline import Decision
from support.engine import make_engine, small_message

FORWARD = """
[Address]
task_name = redirect
message_recipient = "user1@example.com"
message_forward_recipient = "user2@example.com"
add_header_name = "X-Seen"
add_header_value = "yes"
"""
RECIPIENTS = ["<user1@example.com>", "<other@example.com>"]
ME = pwd.getpwuid(os.geteuid()).pw_name  # -u as ourselves: `test` runs filters as -u does


def run_engine(tmp_path: Path, *argv: str, messages: int = 1) -> list[Decision]:
    engine = make_engine(tmp_path, FORWARD, *argv, now=lambda: datetime(2026, 1, 5, 10, 0))
    return [
        asyncio.run(engine.run(small_message(tmp_path / "m.msg", RECIPIENTS)))
        for _ in range(messages)
    ]


@pytest.mark.parametrize(("switches", "missing"), [("-R", "-A"), ("-A", "-R"), ("-H", "-AR")])
def test_engine_refuses_a_half_forward_and_changes_no_recipient(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, switches: str, missing: str
) -> None:
    with caplog.at_level(logging.WARNING, logger="milter_agent.engine"):
        decisions = run_engine(tmp_path, switches, messages=3)
    for decision in decisions:
        assert decision.changes.delete_recipients == []
        assert decision.changes.add_recipients == []
    refusals = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    forward = [text for text in refusals if "forward" in text]
    assert forward == [  # once for the rule, not once per message
        "redirect: forward user1@example.com to user2@example.com refused: "
        f"option {missing} is not given"
    ]
    if switches == "-H":  # the rule's other actions still follow their own switches
        assert decisions[0].changes.add_headers == [("X-Seen", "yes")]


def test_engine_forwards_with_both_switches(tmp_path: Path) -> None:
    (decision,) = run_engine(tmp_path, "-AR")
    assert decision.changes.delete_recipients == ["<user1@example.com>"]
    assert decision.changes.add_recipients == ["<user2@example.com>"]


@pytest.mark.parametrize("switch", ["-R", "-A"])
def test_offline_test_with_one_switch_keeps_the_recipients(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], switch: str
) -> None:
    conf, eml = tmp_path / "c.conf", tmp_path / "m.eml"
    conf.write_text(FORWARD)
    eml.write_bytes(b"From: a@example.org\nSubject: hi\n\nbody\n")
    rcpts = [x for r in RECIPIENTS for x in ("--rcpt", r.strip("<>"))]
    argv = ["test", "-c", str(conf), "-u", ME, "--from", "a@example.org", *rcpts]
    code = main([*argv, switch, "--json", str(eml)])
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and report["verdict"] == "continue"
    assert report["recipients_removed"] == [] and report["recipients_added"] == []
    code = main([*argv, "-AR", str(eml)])
    text = capsys.readouterr().out
    assert code == 0
    assert "recipient removed: <user1@example.com>" in text
    assert "recipient added: <user2@example.com>" in text
