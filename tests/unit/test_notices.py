"""Notices: each event found once, and notice_cmd run with the event in its environment."""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from milter_agent.config.options import parse_command_line
from milter_agent.config.reload import ConfigStore
from milter_agent.control.notices import Notice, NoticeWatcher, deliver
from milter_agent.registry import Registry

FILTER = '[Filter]\ntask_name = scan\nexec_cmd = "/bin/true"\n'


def setup(tmp_path: Path, text: str) -> tuple[ConfigStore, Registry, list[float]]:
    """A store, a registry whose "scan" appeared at t=1000, and a clock standing at 1000."""
    conf = tmp_path / "c.conf"
    conf.write_text(text)
    store = ConfigStore(parse_command_line(["-c", str(conf)]))
    registry = Registry()
    registry.configure([("scan", 0)])
    registry.get("scan").since = 1000.0
    return store, registry, [1000.0]


def watcher(store: ConfigStore, registry: Registry, clock: list[float]) -> NoticeWatcher:
    return NoticeWatcher(store, lambda: registry, clock=lambda: clock[0])


def test_filter_switched_off_is_noticed_once_per_switch_off(tmp_path: Path) -> None:
    store, registry, clock = setup(tmp_path, FILTER)
    w = watcher(store, registry, clock)
    assert w.check() == []
    state = registry.get("scan")
    state.record_error("boom", 1)
    (notice,) = w.check()
    assert (notice.event, notice.filter) == ("filter_disabled", "scan")
    assert "threshold 1" in notice.reason
    assert w.check() == []
    state.enable()
    assert w.check() == []
    state.record_error("again", 1)
    assert [n.event for n in w.check()] == ["filter_disabled"]


def test_switched_off_by_hand_gives_no_notice(tmp_path: Path) -> None:
    store, registry, clock = setup(tmp_path, FILTER)
    w = watcher(store, registry, clock)
    registry.get("scan").disable("switched off via the control socket")
    assert w.check() == []
    registry.get("scan").record_error("boom", 1)  # already off: the threshold switches nothing
    assert w.check() == []


def test_refused_reload_is_noticed_with_every_error(tmp_path: Path) -> None:
    store, registry, clock = setup(tmp_path, FILTER)
    w = watcher(store, registry, clock)
    (tmp_path / "c.conf").write_text("[Filter]\ntask_nme = x\nfrobnicate = 1\n")
    assert not store.reload()
    (notice,) = w.check()
    assert notice.event == "reload_failed"
    assert "\n" not in notice.reason
    assert "task_nme" in notice.reason and "frobnicate" in notice.reason, notice.reason
    assert w.check() == []


def test_refused_reload_notice_is_bounded(tmp_path: Path) -> None:
    store, registry, clock = setup(tmp_path, FILTER)
    w = watcher(store, registry, clock)
    (tmp_path / "c.conf").write_text("".join(f"bad_key_{i} = 1\n" for i in range(50)))
    assert not store.reload()
    (notice,) = w.check()
    assert "bad_key_0" in notice.reason and "bad_key_49" not in notice.reason
    assert "more lines)" in notice.reason and len(notice.reason) <= 4000


def test_idle_filter_is_noticed_until_it_runs_again(tmp_path: Path) -> None:
    store, registry, clock = setup(tmp_path, "notice_idle = 60\n" + FILTER)
    w = watcher(store, registry, clock)
    clock[0] = 1059.0
    assert w.check() == []
    clock[0] = 1061.0
    (notice,) = w.check()
    assert (notice.event, notice.filter, notice.reason) == (
        "filter_idle",
        "scan",
        "has not run for 61s",
    )
    assert w.check() == []
    registry.get("scan").last_run = 1062.0
    clock[0] = 1063.0
    assert w.check() == []
    clock[0] = 1130.0
    assert [n.event for n in w.check()] == ["filter_idle"]


def test_idle_is_measured_from_when_the_filter_appeared(tmp_path: Path) -> None:
    """A filter added by a reload at t=1050 is not idle at t=1061, only at t=1110."""
    store, registry, clock = setup(tmp_path, "notice_idle = 60\n" + FILTER)
    registry.get("scan").since = 1050.0
    w = watcher(store, registry, clock)
    clock[0] = 1061.0
    assert w.check() == []
    clock[0] = 1110.0
    assert [n.event for n in w.check()] == ["filter_idle"]


def test_reset_stats_starts_the_idle_time_again(tmp_path: Path) -> None:
    store, registry, _ = setup(tmp_path, "notice_idle = 60\n" + FILTER)
    state = registry.get("scan")
    state.last_run = time.time() - 3600
    state.reset()
    w = NoticeWatcher(store, lambda: registry)  # the real clock, as reset() uses
    assert state.last_run is None and time.time() - state.since < 5
    assert w.check() == []


def test_a_filter_that_keeps_failing_is_not_idle(tmp_path: Path) -> None:
    store, registry, clock = setup(tmp_path, "notice_idle = 60\n" + FILTER)
    w = watcher(store, registry, clock)
    state = registry.get("scan")
    state.record_error("killed by signal SIGSEGV", 0)
    state.last_error_at = 1050.0  # failed at t=1050: ran, though never successfully
    clock[0] = 1100.0
    assert w.check() == []
    clock[0] = 1111.0
    assert [n.reason for n in w.check()] == ["has not run for 61s"]


def test_a_disabled_filter_is_not_idle(tmp_path: Path) -> None:
    store, registry, clock = setup(tmp_path, "notice_idle = 60\n" + FILTER)
    w = watcher(store, registry, clock)
    registry.get("scan").disable("switched off via the control socket")
    clock[0] = 2000.0
    assert w.check() == []


def test_deliver_runs_notice_cmd_with_the_event(tmp_path: Path) -> None:
    out = tmp_path / "env"
    code = "import os, sys; open(sys.argv[1], 'w').write(repr({k: v for k, v in os.environ.items() if k.startswith('MILTER_')}))"
    notice = Notice("filter_disabled", "scan", "3 errors; $(reboot)", 0.0)
    asyncio.run(deliver(notice, (sys.executable, "-c", code, str(out))))
    env = eval(out.read_text())
    assert env["MILTER_NOTICE"] == "filter_disabled"
    assert env["MILTER_NOTICE_FILTER"] == "scan"
    assert env["MILTER_NOTICE_REASON"] == "3 errors; $(reboot)"
    # local time with its offset: the same instant whatever the time zone is
    when = datetime.fromisoformat(env["MILTER_NOTICE_TIME"])
    assert when.utcoffset() is not None and when.timestamp() == 0.0


@pytest.mark.parametrize("zone", ["America/New_York", "Asia/Tokyo", "UTC"])
def test_notice_time_is_unambiguous_in_any_zone(zone: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", zone)
    time.tzset()
    try:
        text = Notice("filter_idle", "scan", "", 0.0).environment()["MILTER_NOTICE_TIME"]
    finally:
        monkeypatch.undo()
        time.tzset()
    when = datetime.fromisoformat(text)
    assert when.timestamp() == 0.0
    expected = {"America/New_York": -5, "Asia/Tokyo": 9, "UTC": 0}[zone]
    assert when.utcoffset() == timedelta(hours=expected), text


def test_deliver_logs_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    asyncio.run(deliver(Notice("filter_idle", "scan", "has not run for 61s", 0.0), None))
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("WARNING", "notice filter_idle: filter scan: has not run for 61s")
    ]


def test_reenabled_by_cooldown_is_noticed(tmp_path: Path) -> None:
    store, registry, clock = setup(tmp_path, FILTER)
    w = watcher(store, registry, clock)
    assert w.check() == []
    registry.get("scan").reenabled_at = 1001.0
    (notice,) = w.check()
    assert (notice.event, notice.filter) == ("filter_reenabled", "scan")
    assert w.check() == []
