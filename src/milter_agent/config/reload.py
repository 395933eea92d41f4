"""Reload bookkeeping: which configuration is current, when to look at the file again, and
what went wrong last time.

No signals and no asyncio here: the daemon calls ``maybe_reload(now)`` when a message arrives
(the seed's "detecting the change of the configuration") and ``reload()`` on SIGUSR1. A config
with any error is refused whole and the old one stays; each message keeps the ``Config`` it
started with, because configs are immutable and only the reference here changes.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable

from milter_agent.config.model import Config, FileStamp
from milter_agent.config.options import CommandLine
from milter_agent.config.parser import load_config
from milter_agent.config.problems import ConfigErrors
from milter_agent.errors import ConfigError

#: The file is looked at no more often than this (seconds), however many messages arrive.
CHECK_INTERVAL = 1.0

_log = logging.getLogger("milter_agent.config")


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
        self.generation = 1
        self.last_error: ConfigError | None = None
        self.last_error_time: float | None = None

    @property
    def current(self) -> Config:
        return self._current

    @property
    def path(self) -> str:
        return self._command_line.config_path

    def maybe_reload(self, now: float) -> bool:
        """With watch_config (-F): at most once per CHECK_INTERVAL of ``now`` (a monotonic
        clock), stat the file and reload it if its device, inode, size or mtime changed.

        A broken file is tried once per change, not once per check, so it is logged once.
        """
        if not self._current.settings.watch_config:
            return False
        if self._last_check is not None and now - self._last_check < CHECK_INTERVAL:
            return False
        self._last_check = now
        try:
            info = os.stat(self.path)
        except OSError as exc:
            if self._seen is not None:  # report a vanished file once, not every second
                self._seen = None
                self._refuse(ConfigError(f"cannot read: {exc.strerror or exc}", path=self.path))
            return False
        stamp = FileStamp(info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)
        if stamp == self._seen:
            return False
        self._seen = stamp
        return self.reload()

    def reload(self) -> bool:
        """Load the file now; install it if valid. True when a new config was installed."""
        try:
            config = load_config(self.path, self._command_line, lock=self._lock_wanted())
        except ConfigError as exc:
            self._refuse(exc)
            return False
        self._install(config)
        return True

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

    def _refuse(self, error: ConfigError) -> None:
        self.last_error = error
        self.last_error_time = self._wall_clock()
        errors = error.errors if isinstance(error, ConfigErrors) else (error,)
        _log.error(
            "configuration %s refused (%d errors), keeping the one loaded at %s",
            self.path,
            len(errors),
            time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self._current.loaded_at)),
        )
        for each in errors:
            _log.error("configuration error: %s", each)
