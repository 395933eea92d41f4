"""Notices for the postmaster: a filter switched off by its error threshold, switched on again
by ``error_cooldown``, a configuration refused on reload, a filter that has not run for
``notice_idle`` seconds.

A watcher looks at the registry and the config store once a second (nothing on the message
path), logs a warning per event and, if ``notice_cmd`` is set, runs it as an argv (never a
shell) with the event in its environment: ``MILTER_NOTICE`` (filter_disabled, filter_reenabled,
reload_failed, filter_idle), ``MILTER_NOTICE_FILTER``, ``MILTER_NOTICE_REASON``,
``MILTER_NOTICE_TIME``.
Each event is noticed once: again only after the filter was switched on, ran, or a later
reload failed. A filter switched off by hand (``ma-client disable``) gives no notice: whoever
did it knows, and it is logged.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from milter_agent import procs
from milter_agent.config.model import Config
from milter_agent.config.reload import ConfigStore
from milter_agent.control.protocol import local_time, one_line
from milter_agent.registry import FilterState, Registry

log = logging.getLogger("milter_agent.notices")

_NOTICE_TIMEOUT = 30.0
#: A refused configuration can list many problems; the notice carries this many of them.
_MAX_REASON_LINES = 20
_MAX_REASON_CHARS = 4000


@dataclass(frozen=True, slots=True)
class Notice:
    event: str
    filter: str
    reason: str
    when: float

    def environment(self) -> dict[str, str]:
        return {
            "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "LANG": "C",
            "MILTER_NOTICE": self.event,
            "MILTER_NOTICE_FILTER": self.filter,
            "MILTER_NOTICE_REASON": self.reason,
            "MILTER_NOTICE_TIME": local_time(self.when),
        }


class NoticeWatcher:
    """Finds new events; :meth:`check` is cheap and safe to call often."""

    def __init__(
        self,
        store: ConfigStore,
        registry: Callable[[], Registry],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.registry = registry
        self.clock = clock
        self._disabled: set[str] = set()
        self._reenabled: dict[str, float | None] = {}
        self._idle: set[str] = set()
        self._reload_error_time: float | None = None

    def check(self) -> list[Notice]:
        config, now = self.store.current, self.clock()
        found = self._disabled_filters(now) + self._idle_filters(config, now)
        error_time = self.store.last_error_time
        if error_time is not None and error_time != self._reload_error_time:
            found.append(
                Notice("reload_failed", "", error_lines(str(self.store.last_error)), error_time)
            )
        self._reload_error_time = error_time
        return found

    def _disabled_filters(self, now: float) -> list[Notice]:
        found = []
        states = self.registry().states
        # only the threshold's switch-offs: a manual disable is not news to the postmaster
        by_threshold = {name for name, state in states.items() if state.by_threshold}
        for name in sorted(by_threshold - self._disabled):
            reason = states[name].disabled_reason or ""
            found.append(Notice("filter_disabled", name, reason, now))
        self._disabled = by_threshold
        for name, state in states.items():
            seen = self._reenabled.get(
                name, state.reenabled_at if name in self._reenabled else None
            )
            if state.reenabled_at is not None and state.reenabled_at != seen:
                found.append(Notice("filter_reenabled", name, "error_cooldown is over", now))
            self._reenabled[name] = state.reenabled_at
        return found

    def _idle_filters(self, config: Config, now: float) -> list[Notice]:
        idle_after = config.settings.notice_idle
        if idle_after <= 0:
            return []
        found = []
        idle_now = set()
        for spec in config.filters:
            state = self.registry().get(spec.name)
            if state.disabled:  # not running is expected; switching off had its own notice
                continue
            last = last_activity(state)
            if now - last >= idle_after:
                idle_now.add(spec.name)
                if spec.name not in self._idle:
                    reason = f"has not run for {now - last:.0f}s"
                    found.append(Notice("filter_idle", spec.name, reason, now))
        self._idle = idle_now
        return found


def last_activity(state: FilterState) -> float:
    """When the filter last did anything: ran, failed (a failing filter is not idle: it ran,
    and its failures are logged and switch it off at the threshold), or appeared or had its
    statistics reset."""
    return max(state.last_run or 0.0, state.last_error_at or 0.0, state.since)


def error_lines(text: str) -> str:
    """Every line of a (multi-line) error on one line, bounded: a refused configuration lists
    each problem, and the postmaster needs all of them, not the first."""
    shown = one_line(text, _MAX_REASON_LINES)
    if len(shown) > _MAX_REASON_CHARS:
        shown = shown[: _MAX_REASON_CHARS - 3] + "..."
    return shown


async def deliver(notice: Notice, command: tuple[str, ...] | None) -> None:
    """Log the notice and run ``notice_cmd`` with it, if configured."""
    subject = f"filter {notice.filter}: " if notice.filter else ""
    log.warning("notice %s: %s%s", notice.event, subject, notice.reason)
    if not command:
        return
    try:
        result = await procs.run_program(
            command, env=notice.environment(), timeout=_NOTICE_TIMEOUT, kill=True, kill_grace=2
        )
    except procs.SpawnError as exc:
        log.error("notice_cmd failed: %s", exc)
        return
    if result.returncode != 0:
        log.error("notice_cmd %s ended with %s", command[0], result.returncode)


async def watch(watcher: NoticeWatcher, command: Callable[[], tuple[str, ...] | None]) -> None:
    """Run forever: check once a second, deliver what is new."""
    while True:
        await asyncio.sleep(1.0)
        for notice in watcher.check():
            await deliver(notice, command())
