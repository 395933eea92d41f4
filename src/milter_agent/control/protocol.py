"""The control socket's wire format: one JSON object per line each way.

Request:  ``{"version": 1, "command": "filters", "args": []}``
Response: ``{"version": 1, "ok": true, "data": ...}`` or ``{"version": 1, "ok": false,
"code": "...", "error": "..."}``. Commands: status, settings, filters, addresses, reload,
enable NAME, disable NAME, reset-stats. Unknown fields are ignored, so both sides can grow.
Times are seconds since the epoch (clients show them with :func:`local_time`).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

VERSION = 1
MAX_LINE = 64 * 1024
COMMANDS = (
    "status",
    "settings",
    "filters",
    "addresses",
    "reload",
    "enable",
    "disable",
    "reset-stats",
)

# The ``code`` of an answer with ``ok: false``: what a client may act on (the ``error`` text
# is for people).
BAD_REQUEST = "bad_request"  # not a JSON object on one line, or malformed fields
UNKNOWN_COMMAND = "unknown_command"
REFUSED = "refused"  # the command was understood and refused, e.g. no filter of that name
PERMISSION_DENIED = "permission_denied"
INTERNAL_ERROR = "internal_error"  # the daemon failed while answering (see its log)


def encode(obj: dict[str, Any]) -> bytes:
    return json.dumps({"version": VERSION, **obj}, default=str).encode() + b"\n"


def request(command: str, *args: str) -> bytes:
    return encode({"command": command, "args": list(args)})


def decode(line: bytes) -> dict[str, Any]:
    """One line to an object; ValueError if it is not a JSON object."""
    obj = json.loads(line)
    if not isinstance(obj, dict):
        raise ValueError("not a JSON object")
    return obj


def error(code: str, text: str) -> dict[str, Any]:
    return {"ok": False, "code": code, "error": text}


def local_time(when: float) -> str:
    """ISO 8601 local time with its UTC offset, e.g. ``2026-11-25T10:00:00+01:00``: the offset
    keeps the text unambiguous wherever it is read."""
    return datetime.fromtimestamp(when, UTC).astimezone().isoformat(timespec="seconds")


def one_line(text: str, max_lines: int | None = None) -> str:
    """A multi-line text (a refused configuration lists every problem) as one line, with at
    most ``max_lines`` of its lines."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    shown = ""
    for line in lines[:max_lines]:
        # "3 errors:" introduces the next line; the others are items of a list
        shown += ("" if not shown else " " if shown.endswith(":") else "; ") + line
    if max_lines is not None and len(lines) > max_lines:
        shown += f"; ... ({len(lines) - max_lines} more lines)"
    return shown
