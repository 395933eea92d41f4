"""What a filter sees of one message: envelope, macros, headers, the spool file, its size.

Built by the session as the MTA sends the message; read by the pipeline at end of message.
Text is ``str`` decoded losslessly (UTF-8 with surrogateescape), so any 8-bit byte survives.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

_FOLD = re.compile(r"\r?\n[ \t]*")


def strip_brackets(address: str) -> str:
    """``<user@example.com>`` -> ``user@example.com``; surrounding space removed."""
    address = address.strip()
    if address.startswith("<") and address.endswith(">"):
        return address[1:-1].strip()
    return address


def header_text(raw_value: str) -> str:
    """A header's value as a person reads it: unfolded, without surrounding space."""
    return _FOLD.sub(" ", raw_value).strip()


@dataclass(slots=True)
class Client:
    """The SMTP client of a connection (from CONNECT and HELO)."""

    hostname: str = ""
    address: str = ""
    port: int = 0
    family: str = "U"
    helo: str = ""

    def __str__(self) -> str:
        return f"{self.hostname or 'unknown'}[{self.address or 'unknown'}]"


@dataclass(slots=True)
class Message:
    """One message transaction, MAIL FROM to end of message.

    ``recipients`` and ``headers`` hold what the MTA sent; the pipeline records its changes
    elsewhere (see :mod:`milter_agent.pipeline`). Header values are ``raw``: everything after
    the colon, as it stands in the message (the spool file holds ``name:raw``).
    ``header_size`` counts them as the spool file does (``name:raw`` and CRLF each).
    """

    client: Client
    sender: str
    sender_args: tuple[str, ...] = ()
    recipients: list[str] = field(default_factory=list)
    recipient_args: list[tuple[str, ...]] = field(default_factory=list)
    headers: list[tuple[str, str]] = field(default_factory=list)
    macros: dict[str, str] = field(default_factory=dict)
    spool_path: Path | None = None
    size: int = 0
    header_size: int = 0
    body_size: int = 0

    @property
    def queue_id(self) -> str:
        return self.macros.get("i", "")

    @property
    def sender_address(self) -> str:
        return strip_brackets(self.sender)

    @property
    def recipient_addresses(self) -> list[str]:
        return [strip_brackets(r) for r in self.recipients]

    def header(self, name: str) -> str | None:
        """The first header called ``name`` (case-insensitive), as text; None if absent."""
        lname = name.lower()
        for hname, raw in self.headers:
            if hname.lower() == lname:
                return header_text(raw)
        return None

    @property
    def subject(self) -> str:
        return self.header("Subject") or ""
