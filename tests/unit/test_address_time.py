"""run_time / skip_time on [Address] rules: a rule outside its time changes nothing."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from milter_agent.engine import Engine
from milter_agent.filters.address import apply_address_rule
from milter_agent.message import Message
from milter_agent.registry import Registry
from milter_agent.spool import Spool
from milter_agent.work import MessageWork
from support.engine import make_engine, parse, small_message

OFFICE_HOURS = """
[Address]
task_name = office
run_time = "* 8-17 * * mon-fri"
skip_time = "0-29 12 * * *"
add_recipient = "watcher@example.com"
"""


def message(tmp_path: Path) -> Message:
    return small_message(tmp_path / "m.msg")


def added_at(tmp_path: Path, when: datetime) -> list[str]:
    config = parse(OFFICE_HOURS, "-A")
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
    decision = asyncio.run(make_engine(tmp_path, text, "-A", now=now).run(message(tmp_path)))
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
    config = parse(OFFICE_HOURS, "-A")
    spool = Spool(tmp_path / "spool")
    for now, added in ((monday_9, ["<watcher@example.com>"]), (sunday_9, [])):
        decision = Engine(config, Registry(), spool, now=lambda when=now: when).decide_now(
            message(tmp_path)
        )
        assert decision is not None and decision.changes.add_recipients == added
