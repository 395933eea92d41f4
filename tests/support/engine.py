"""A message in the spool and an engine for it, for the unit tests of the configured
pipeline (address rules, program and module filters)."""

from __future__ import annotations

import textwrap
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from pathlib import Path

from milter_agent.config.model import Config
from milter_agent.config.options import parse_command_line
from milter_agent.config.parser import parse_config_text
from milter_agent.engine import Engine
from milter_agent.message import Client, Message
from milter_agent.registry import Registry
from milter_agent.spool import Spool

CLIENT = Client("client.example", "192.0.2.1", 25, "4", "helo.example")

#: The headers and body of the tests' usual message.
HEADERS = [("From", " <a@example.com>"), ("To", " <b@example.com>"), ("Subject", " Hello there")]
BODY = b"body line\r\n"


def spooled_message(
    spool_file: Path,
    sender: str,
    recipients: Sequence[str],
    headers: Sequence[tuple[str, str]],
    body: bytes,
    macros: Mapping[str, str] | None = None,
) -> Message:
    """Write the message to ``spool_file`` and describe it as the MTA would."""
    head = b"".join(f"{n}:{v}\r\n".encode() for n, v in headers)
    spool_file.write_bytes(head + b"\r\n" + body)
    return Message(
        CLIENT,
        sender,
        recipients=list(recipients),
        headers=list(headers),
        macros=dict(macros or {}),
        spool_path=spool_file,
        size=len(head) + 2 + len(body),
        body_size=len(body),
    )


def small_message(spool_file: Path, recipients: Sequence[str] = ("<b@example.com>",)) -> Message:
    """From <a@example.org>, a Subject and one line of body."""
    return spooled_message(
        spool_file, "<a@example.org>", recipients, [("Subject", " hi")], b"body\r\n"
    )


def parse(text: str, *argv: str) -> Config:
    """Parse dedented ``text`` with the given command-line options."""
    return parse_config_text(textwrap.dedent(text), "/t.conf", parse_command_line(list(argv)))


def make_engine(
    tmp_path: Path,
    text: str,
    *argv: str,
    now: Callable[[], datetime] = lambda: datetime(2026, 11, 25, 10, 0),
) -> Engine:
    """An engine for the configuration ``text``, with a fresh spool under ``tmp_path``."""
    config = parse(text, *argv)
    spool = Spool(tmp_path / "spool")
    spool.prepare()
    registry = Registry()
    registry.configure((f.name, f.single_instance) for f in config.filters)
    return Engine(config, registry, spool, now=now)
