"""Reload bookkeeping: which configuration is current, when to look at the file again, and
what went wrong last time.

No signals here: the daemon calls ``poll(now)`` once a second and when a message arrives (the
seed's "detecting the change of the configuration") and reloads with ``reload_in_thread()``,
also on SIGUSR1 and SIGHUP. Reading happens in a worker thread because with -a it may wait up
to ``LOCK_TIMEOUT`` for a writer's lock, which must not stall the event loop; the result is
installed back on the caller's thread. A config with any error is refused whole and the old one
stays; each message keeps the ``Config`` it started with, because configs are immutable and only
the reference here changes.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable

from milter_agent.config.model import Config, FileStamp
from milter_agent.config.options import CommandLine
from milter_agent.config.parser import LOCK_TIMEOUT, ConfigLocked, load_config
from milter_agent.config.problems import ConfigErrors
from milter_agent.errors import ConfigError

#: The file is looked at no more often than this (seconds), however many messages arrive.
CHECK_INTERVAL = 1.0

_log = logging.getLogger("milter_agent.config")

_Outcome = Config | ConfigError


class ConfigStore:
    """Holds the current ``Config`` and replaces it only with a valid one."""

    def __init__(
        self,
        command_line: CommandLine,
        initial: Config | None = None,
        *,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        """Start from ``initial``, or load the file now (a ConfigError here is fatal: there is
        no older configuration to keep)."""
        self._command_line = command_line
        self._wall_clock = wall_clock
        self._current = initial or load_config(command_line.config_path, command_line)
        self._seen: FileStamp | None = self._current.stamp
        self._last_check: float | None = None
        self._reads = 0  # reads started so far; each read's number orders its result
        self._installed_read = 0
        self.generation = 1
        self.last_error: ConfigError | None = None
        self.last_error_time: float | None = None

    @property
    def current(self) -> Config:
        return self._current

    @property
    def path(self) -> str:
        return self._command_line.config_path

    def poll(self, now: float) -> FileStamp | None:
        """With watch_config (-F): at most once per CHECK_INTERVAL of ``now`` (a monotonic
        clock), stat the file; its stamp when its device, inode, size or mtime differ from the
        last file read, else None. Pass the stamp to a reload.

        A broken file is tried once per change, not once per check, so it is logged once; a
        file that was locked (-a) is tried again, since its content was never seen.
        """
        if not self._current.settings.watch_config:
            return None
        if self._last_check is not None and now - self._last_check < CHECK_INTERVAL:
            return None
        self._last_check = now
        try:
            info = os.stat(self.path)
        except OSError as exc:
            if self._seen is not None:  # report a vanished file once, not every second
                self._seen = None
                self._refuse(ConfigError(f"cannot read: {exc.strerror or exc}", path=self.path))
            return None
        stamp = FileStamp(info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)
        return None if stamp == self._seen else stamp

    def maybe_reload(self, now: float) -> bool:
        """``poll``, then reload on this thread if the file changed."""
        stamp = self.poll(now)
        return stamp is not None and self.reload(stamp)

    def reload(self, stamp: FileStamp | None = None) -> bool:
        """Load the file now on this thread (with -a: waiting for a lock); install it if valid.
        True when a new config was installed. ``stamp``: what ``poll`` saw, if it asked."""
        number = self._begin()
        return self._settle(number, self._read(LOCK_TIMEOUT), stamp)

    async def reload_in_thread(self, stamp: FileStamp | None = None) -> bool:
        """``reload``, with the file read and parsed in a worker thread."""
        number = self._begin()
        outcome = await asyncio.to_thread(self._read, LOCK_TIMEOUT)
        return self._settle(number, outcome, stamp)

    def reload_unless_locked(self) -> bool | None:
        """``reload`` without waiting for a lock (-a): None, and nothing recorded, when another
        process holds one; the caller can then wait for it with ``reload_in_thread``."""
        number = self._begin()
        outcome = self._read(0.0)
        return None if isinstance(outcome, ConfigLocked) else self._settle(number, outcome, None)

    def _begin(self) -> int:
        self._reads += 1
        return self._reads

    def _read(self, lock_timeout: float) -> _Outcome:
        """The new config or why there is none; changes nothing, so any thread may call it."""
        try:
            return load_config(
                self.path, self._command_line, lock=self._lock_wanted(), lock_timeout=lock_timeout
            )
        except ConfigError as exc:
            return exc

    def _settle(self, number: int, outcome: _Outcome, stamp: FileStamp | None) -> bool:
        if number < self._installed_read:
            return False  # a read that started later was installed meanwhile: it is newer
        if isinstance(outcome, Config):
            self._installed_read = number
            self._install(outcome)
            return True
        if isinstance(outcome, ConfigLocked):
            self._locked(outcome)  # the stamp is not recorded: the next check reads it again
            return False
        if stamp is not None:
            self._seen = stamp
        self._refuse(outcome)
        return False

    def _lock_wanted(self) -> bool:
        """-a from the command line, or lock_config = yes in the config now in force (the new
        file's own setting cannot apply before it has been read)."""
        return self._current.settings.lock_config

    def _install(self, config: Config) -> None:
        self._current = config
        if config.stamp is not None:
            self._seen = config.stamp
        self.generation += 1
        self.last_error = None
        self.last_error_time = None
        _log.info(
            "configuration %s loaded: %d sections (%d filters)",
            config.path,
            len(config.sections),
            len(config.filters),
        )
        for warning in config.warnings:
            _log.warning("configuration warning: %s", warning)

    def _locked(self, error: ConfigLocked) -> None:
        self.last_error = error
        self.last_error_time = self._wall_clock()
        _log.warning(
            "configuration %s not read: %s; keeping the one loaded at %s",
            self.path,
            error.reason,
            self._loaded_at(),
        )

    def _refuse(self, error: ConfigError) -> None:
        self.last_error = error
        self.last_error_time = self._wall_clock()
        errors = error.errors if isinstance(error, ConfigErrors) else (error,)
        _log.error(
            "configuration %s refused (%d errors), keeping the one loaded at %s",
            self.path,
            len(errors),
            self._loaded_at(),
        )
        for each in errors:
            _log.error("configuration error: %s", each)

    def _loaded_at(self) -> str:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self._current.loaded_at))
