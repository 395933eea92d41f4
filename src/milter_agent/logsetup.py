"""Where log lines go and how detailed they are.

Targets: ``stderr`` (terminal, with time stamps), ``stdout`` (journald and other collectors add
their own time stamps; lines carry an ``<N>`` sd-daemon priority prefix), ``syslog`` (mail
facility, via /dev/log). Levels follow the seed's ``-l`` (``-v`` adds one):

- 0: INFO and up: start, stop, configuration loads, warnings, notices, errors, and the one line
  per message;
- 1: DETAIL and up: also one line per filter and address rule per message (outcome, time, exit
  status and output);
- 2 and up: DEBUG, everything.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import re
import sys
from typing import ClassVar

#: Between DEBUG and INFO: per-step detail that ``-l 1`` asks for. Named, so that formatters
#: print "DETAIL" and syslog gets "info" (an unnamed level would go out as "warning").
DETAIL = 15
logging.addLevelName(DETAIL, "DETAIL")

_SD_PRIORITY = {
    logging.DEBUG: 7,
    DETAIL: 6,
    logging.INFO: 6,
    logging.WARNING: 4,
    logging.ERROR: 3,
    logging.CRITICAL: 2,
}


#: What never reaches a log line raw. Log lines carry MTA-supplied values (queue id, client
#: name, sender, recipients, a program's stderr): CR and LF would let a sender end our record
#: and forge one of its own, other C0, DEL and C1 (NEL) controls confuse terminals and log
#: readers, and U+2028/U+2029 are line breaks to some. Lone surrogates are raw bytes that were
#: not UTF-8 (surrogateescape); a strict stream (stdout to journald) cannot encode them and
#: would drop the whole record. The backslash is escaped too, so an escape reads back one way.
_UNSAFE = re.compile(r"[\\\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
_NAMED = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape_one(match: re.Match[str]) -> str:
    char = match.group()
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    if 0xDC80 <= code <= 0xDCFF:  # the raw byte surrogateescape stood in for
        return f"\\x{code - 0xDC00:02x}"
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def escape_controls(text: str) -> str:
    """``text`` as one printable line: control characters and backslashes escaped."""
    return _UNSAFE.sub(_escape_one, text)


class SafeFormatter(logging.Formatter):
    """Formats as usual, then escapes the whole line (message, arguments and any traceback), so
    that every record is exactly one line whatever the values in it. Every handler the daemon
    installs (stderr, stdout for journald, syslog) formats with it."""

    def format(self, record: logging.LogRecord) -> str:
        return escape_controls(super().format(record))


class JournalFormatter(SafeFormatter):
    """``<6>message`` lines, the sd-daemon convention journald reads from stdout."""

    def format(self, record: logging.LogRecord) -> str:
        prio = _SD_PRIORITY.get(record.levelno, 6)
        return f"<{prio}>{super().format(record)}"


class MailSysLogHandler(logging.handlers.SysLogHandler):
    """The mail facility, with DETAIL sent as info."""

    priority_map: ClassVar[dict[str, str]] = {
        **logging.handlers.SysLogHandler.priority_map,
        "DETAIL": "info",
    }

    def __init__(self, address: str | tuple[str, int]) -> None:
        super().__init__(address=address, facility=logging.handlers.SysLogHandler.LOG_MAIL)
        self.setFormatter(SafeFormatter("milter-agent[%(process)d]: %(message)s"))


def level_for(log_level: int, verbose: bool = False) -> int:
    detail = log_level + (1 if verbose else 0)
    if detail <= 0:
        return logging.INFO
    if detail == 1:
        return DETAIL
    return logging.DEBUG


def make_handler(
    target: str, syslog_address: str | tuple[str, int] | None = None
) -> logging.Handler:
    """The handler for a target; ``syslog_address`` defaults to /dev/log (or UDP localhost:514
    where there is none)."""
    if target == "syslog":
        if syslog_address is None:
            syslog_address = "/dev/log" if os.path.exists("/dev/log") else ("localhost", 514)
        return MailSysLogHandler(syslog_address)
    handler = logging.StreamHandler(sys.stdout if target == "stdout" else sys.stderr)
    if target == "stdout":
        handler.setFormatter(JournalFormatter("%(message)s"))
    else:
        handler.setFormatter(
            SafeFormatter("%(asctime)s milter-agent[%(process)d] %(levelname)s: %(message)s")
        )
    return handler


def setup_logging(
    target: str = "stderr",
    log_level: int = 0,
    verbose: bool = False,
    syslog_address: str | tuple[str, int] | None = None,
) -> None:
    """Install one handler on the root logger (replacing earlier ones, so reconfiguring works)."""
    handler = make_handler(target, syslog_address)
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(level_for(log_level, verbose))
