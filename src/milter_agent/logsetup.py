"""Where log lines go and how detailed they are.

Targets: ``stderr`` (terminal, with time stamps), ``stdout`` (journald and other collectors add
their own time stamps; lines carry an ``<N>`` sd-daemon priority prefix), ``syslog`` (mail
facility, via /dev/log). Levels follow the seed's ``-l``: 0 = notices, warnings and the one line
per message; 1 = more detail per filter; 2 and up = debugging; ``-v`` adds one.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import sys

_SD_PRIORITY = {
    logging.DEBUG: 7,
    logging.INFO: 6,
    logging.WARNING: 4,
    logging.ERROR: 3,
    logging.CRITICAL: 2,
}


class JournalFormatter(logging.Formatter):
    """``<6>message`` lines, the sd-daemon convention journald reads from stdout."""

    def format(self, record: logging.LogRecord) -> str:
        prio = _SD_PRIORITY.get(record.levelno, 6)
        return f"<{prio}>{super().format(record)}"


def level_for(log_level: int, verbose: bool = False) -> int:
    detail = log_level + (1 if verbose else 0)
    if detail <= 0:
        return logging.INFO
    if detail == 1:
        return logging.INFO - 1  # filter detail: still "info" to syslog, but opt-in
    return logging.DEBUG


def setup_logging(target: str = "stderr", log_level: int = 0, verbose: bool = False) -> None:
    """Install one handler on the root logger (replacing earlier ones, so reconfiguring works)."""
    handler: logging.Handler
    if target == "syslog":
        address = "/dev/log" if os.path.exists("/dev/log") else ("localhost", 514)
        handler = logging.handlers.SysLogHandler(
            address=address, facility=logging.handlers.SysLogHandler.LOG_MAIL
        )
        handler.setFormatter(logging.Formatter("milter-agent[%(process)d]: %(message)s"))
    elif target == "stdout":
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(JournalFormatter("%(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(
            logging.Formatter("%(asctime)s milter-agent[%(process)d] %(levelname)s: %(message)s")
        )
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(level_for(log_level, verbose))
