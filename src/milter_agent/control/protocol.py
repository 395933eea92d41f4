"""The control socket's wire format: one JSON object per line each way.

Request:  ``{"version": 1, "command": "filters", "args": []}``
Response: ``{"version": 1, "ok": true, "data": ...}`` or ``{"version": 1, "ok": false,
"error": "..."}``. Commands: status, settings, filters, addresses, reload, enable NAME,
disable NAME, reset-stats. Unknown fields are ignored, so both sides can grow.
"""

from __future__ import annotations

import json
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
