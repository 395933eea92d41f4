"""Notices: each event found once, and notice_cmd run with the event in its environment."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from milter_agent.config.options import parse_command_line
from milter_agent.config.reload import ConfigStore
from milter_agent.control.notices import Notice, NoticeWatcher, deliver
from milter_agent.registry import Registry

FILTER = '[Filter]\ntask_name = scan\nexec_cmd = "/bin/true"\n'


def setup(tmp_path: Path, text: str) -> tuple[ConfigStore, Registry, list[float]]:
    conf = tmp_path / "c.conf"
    conf.write_text(text)
    store = ConfigStore(parse_command_line(["-c", str(conf)]))
    registry = Registry()
    registry.configure([("scan", 0)])
    return store, registry, [1000.0]


def watcher(store: ConfigStore, registry: Registry, clock: list[float]) -> NoticeWatcher:
    return NoticeWatcher(store, lambda: registry, started=1000.0, clock=lambda: clock[0])


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


def test_refused_reload_is_noticed(tmp_path: Path) -> None:
    store, registry, clock = setup(tmp_path, FILTER)
    w = watcher(store, registry, clock)
    (tmp_path / "c.conf").write_text("[Filter]\ntask_nme = x\n")
    assert not store.reload()
    (notice,) = w.check()
    assert notice.event == "reload_failed" and "c.conf" in notice.reason
    assert w.check() == []


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


def test_deliver_runs_notice_cmd_with_the_event(tmp_path: Path) -> None:
    out = tmp_path / "env"
    code = "import os, sys; open(sys.argv[1], 'w').write(repr({k: v for k, v in os.environ.items() if k.startswith('MILTER_')}))"
    notice = Notice("filter_disabled", "scan", "3 errors; $(reboot)", 0.0)
    asyncio.run(deliver(notice, (sys.executable, "-c", code, str(out))))
    env = eval(out.read_text())
    assert env["MILTER_NOTICE"] == "filter_disabled"
    assert env["MILTER_NOTICE_FILTER"] == "scan"
    assert env["MILTER_NOTICE_REASON"] == "3 errors; $(reboot)"
    assert env["MILTER_NOTICE_TIME"].startswith("1970-01-01T")


def test_reenabled_by_cooldown_is_noticed(tmp_path: Path) -> None:
    store, registry, clock = setup(tmp_path, FILTER)
    w = watcher(store, registry, clock)
    assert w.check() == []
    registry.get("scan").reenabled_at = 1001.0
    (notice,) = w.check()
    assert (notice.event, notice.filter) == ("filter_reenabled", "scan")
    assert w.check() == []
