"""run_time / skip_time on [Address] rules: a rule outside its time changes nothing."""

from __future__ import annotations

import asyncio
import textwrap
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from milter_agent.config.options import parse_command_line
from milter_agent.config.parser import parse_config_text
from milter_agent.engine import Engine
from milter_agent.filters.address import apply_address_rule
from milter_agent.message import Client, Message
from milter_agent.registry import Registry
from milter_agent.spool import Spool
from milter_agent.work import MessageWork

OFFICE_HOURS = """
[Address]
task_name = office
run_time = "* 8-17 * * mon-fri"
skip_time = "0-29 12 * * *"
add_recipient = "watcher@example.com"
"""


def message(tmp_path: Path) -> Message:
    spool_file = tmp_path / "m.msg"
    spool_file.write_bytes(b"Subject: hi\r\n\r\nbody\r\n")
    return Message(
        Client("client.example", "192.0.2.1", 25, "4", "helo.example"),
        "<a@example.org>",
        recipients=["<b@example.com>"],
        headers=[("Subject", " hi")],
        spool_path=spool_file,
        size=21,
        body_size=6,
    )


def added_at(tmp_path: Path, when: datetime) -> list[str]:
    config = parse_config_text(textwrap.dedent(OFFICE_HOURS), "/t.conf", parse_command_line(["-A"]))
    (rule,) = config.address_rules
    work = MessageWork(message(tmp_path), Spool(tmp_path / "spool"), config.settings)
    done = apply_address_rule(rule, work, dict, lambda what, switch: None, when)
    return [change for change in done if change.startswith("+")]


def test_the_rule_applies_only_in_its_time(tmp_path: Path) -> None:
    monday = datetime(2026, 1, 5)
    assert added_at(tmp_path, monday.replace(hour=9)) == ["+watcher@example.com"]
    assert added_at(tmp_path, monday.replace(hour=7, minute=59)) == []  # before run_time
    assert added_at(tmp_path, monday.replace(hour=12, minute=15)) == []  # in skip_time
    assert added_at(tmp_path, monday.replace(hour=12, minute=30)) == ["+watcher@example.com"]
    assert added_at(tmp_path, datetime(2026, 1, 4, 9)) == []  # a Sunday


def run_engine(tmp_path: Path, text: str, now: Callable[[], datetime] = datetime.now) -> list[str]:
    config = parse_config_text(textwrap.dedent(text), "/t.conf", parse_command_line(["-A"]))
    spool = Spool(tmp_path / "spool")
    spool.prepare()
    decision = asyncio.run(Engine(config, Registry(), spool, now).run(message(tmp_path)))
    return decision.changes.add_recipients


def test_through_the_engine_with_the_current_time(tmp_path: Path) -> None:
    """Without a clock of its own the engine uses the current local time, so "every minute"
    always holds and skipping "every minute" never does."""
    rule = '[Address]\n{key} = "* * * * *"\nadd_recipient = "watcher@example.com"\n'
    assert run_engine(tmp_path, rule.format(key="run_time")) == ["<watcher@example.com>"]
    assert run_engine(tmp_path, rule.format(key="skip_time")) == []


def test_through_the_engine_with_its_clock(tmp_path: Path) -> None:
    """The rule is evaluated at the engine's clock, as filters' conditions are; with address
    rules only the engine decides at once (decide_now), by the same clock."""
    monday_9, sunday_9 = datetime(2026, 1, 5, 9), datetime(2026, 1, 4, 9)
    lunch = monday_9.replace(hour=12, minute=10)
    assert run_engine(tmp_path, OFFICE_HOURS, lambda: monday_9) == ["<watcher@example.com>"]
    assert run_engine(tmp_path, OFFICE_HOURS, lambda: sunday_9) == []
    assert run_engine(tmp_path, OFFICE_HOURS, lambda: lunch) == []
    config = parse_config_text(OFFICE_HOURS, "/t.conf", parse_command_line(["-A"]))
    spool = Spool(tmp_path / "spool")
    for now, added in ((monday_9, ["<watcher@example.com>"]), (sunday_9, [])):
        decision = Engine(config, Registry(), spool, now=lambda when=now: when).decide_now(
            message(tmp_path)
        )
        assert decision is not None and decision.changes.add_recipients == added
