"""The error tree of milter-agent.

MilterAgentError
├── ProtocolError        the MTA sent something we cannot accept: close that one connection
├── ConfigError          a configuration file or option is wrong: refuse it, keep the old one
├── SpoolError           the message could not be written to disk: tempfail that message
└── FilterError          a filter failed (exit by signal, missing program, timeout, exception):
                         becomes the configured verdict (tempfail by default), never a crash
"""

from __future__ import annotations


class MilterAgentError(Exception):
    """Base of every error milter-agent raises on purpose."""


class ProtocolError(MilterAgentError):
    """The milter byte stream is malformed or out of order; the connection must be closed."""


class ConfigError(MilterAgentError):
    """A configuration is invalid. ``str()`` names the place: ``file:line: key: what is wrong``."""

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None) -> None:
        self.path = path
        self.line = line
        self.reason = message
        where = path or ""
        if path and line is not None:
            where = f"{path}:{line}"
        super().__init__(f"{where}: {message}" if where else message)


class SpoolError(MilterAgentError):
    """Writing or reading the spooled message failed (disk full, permissions)."""


class FilterError(MilterAgentError):
    """A filter could not give a verdict."""
