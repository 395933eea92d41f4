"""SMTP client helpers: send one message step by step and report where it ended, and build
deterministic test messages."""

from __future__ import annotations

import re
import smtplib
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime, make_msgid
from typing import Literal

Stage = Literal["connect", "helo", "mail", "rcpt", "data", "eom", "accepted"]

_QUEUE_ID = re.compile(r"queued as ([0-9A-Za-z]+)")


@dataclass
class SmtpResult:
    """Outcome of one SMTP transaction.

    ``stage`` is where it ended: "accepted" (250 after the message), or the stage whose
    reply refused it: "connect" (banner), "helo", "mail", "rcpt" (every recipient
    refused), "data" (the DATA command itself), "eom" (the reply after the message).
    ``code``/``text`` are that final reply. ``rcpt_replies`` has each RCPT's reply, so a
    partly refused recipient list is visible even when the message was accepted."""

    stage: Stage
    code: int
    text: str
    queue_id: str | None = None
    rcpt_replies: dict[str, tuple[int, str]] = field(default_factory=dict)
    ehlo_text: str = ""

    @property
    def accepted(self) -> bool:
        return self.stage == "accepted"

    @property
    def enhanced(self) -> str | None:
        """The enhanced status code at the start of the text (e.g. "4.7.1"), if any."""
        m = re.match(r"([245]\.\d{1,3}\.\d{1,3})\b", self.text)
        return m.group(1) if m else None

    def __str__(self) -> str:
        return f"{self.stage}: {self.code} {self.text}"


def _text(resp: bytes | str) -> str:
    if isinstance(resp, bytes):
        return resp.decode("utf-8", errors="replace")
    return resp


def send_message(
    address: tuple[str, int],
    mail_from: str,
    rcpt_tos: Sequence[str],
    data: bytes,
    *,
    helo: str = "client.example.test",
    mail_options: Sequence[str] = (),
    rcpt_options: Sequence[str] = (),
    timeout: float = 60.0,
) -> SmtpResult:
    """Send one message over SMTP and return where it ended (never raises for SMTP
    replies; raises OSError only if the connection cannot be made or breaks).

    ``data`` must use CRLF line ends; it is sent as is (smtplib adds dot-stuffing).
    BODY=8BITMIME is added to ``mail_options`` automatically for 8-bit data."""
    host, port = address
    client = smtplib.SMTP(timeout=timeout)
    try:
        try:
            client.connect(host, port)
        except smtplib.SMTPConnectError as e:
            return SmtpResult("connect", e.smtp_code, _text(e.smtp_error))
        code, resp = client.ehlo(helo)
        if code != 250:
            code, resp = client.helo(helo)
            if code != 250:
                return SmtpResult("helo", code, _text(resp))
        ehlo_text = _text(resp)
        options = list(mail_options)
        if any(b > 0x7F for b in data) and not any(o.upper().startswith("BODY=") for o in options):
            options.append("BODY=8BITMIME")
        code, resp = client.mail(mail_from, options)
        if code != 250:
            return SmtpResult("mail", code, _text(resp), ehlo_text=ehlo_text)
        replies: dict[str, tuple[int, str]] = {}
        last: tuple[int, str] = (0, "")
        for rcpt in rcpt_tos:
            code, resp = client.rcpt(rcpt, list(rcpt_options))
            last = replies[rcpt] = (code, _text(resp))
        if not any(c in (250, 251) for c, _ in replies.values()):
            return SmtpResult("rcpt", *last, rcpt_replies=replies, ehlo_text=ehlo_text)
        try:
            code, resp = client.data(data)
        except smtplib.SMTPDataError as e:
            # smtplib raises when DATA itself is not answered with 354.
            return SmtpResult(
                "data",
                e.smtp_code,
                _text(e.smtp_error),
                rcpt_replies=replies,
                ehlo_text=ehlo_text,
            )
        text = _text(resp)
        if code != 250:
            return SmtpResult("eom", code, text, rcpt_replies=replies, ehlo_text=ehlo_text)
        m = _QUEUE_ID.search(text)
        return SmtpResult(
            "accepted",
            code,
            text,
            queue_id=m.group(1) if m else None,
            rcpt_replies=replies,
            ehlo_text=ehlo_text,
        )
    except smtplib.SMTPServerDisconnected as e:
        # Postfix may answer 421 and hang up (e.g. milter_default_action = shutdown).
        raise ConnectionError(f"server disconnected: {e}") from e
    finally:
        try:
            client.quit()
        except (smtplib.SMTPException, OSError):
            client.close()


_TEXT = "The quick brown fox jumps over the lazy dog 0123456789. "
_TEXT_8BIT = "Grüße aus Köln \u2013 naïve façade, smørbrød, Ærø. "  # 2- and 3-byte UTF-8


def _line(offset: int, n: int, unit: str) -> bytes:
    """``n`` bytes of ``unit`` (cycled, from char ``offset``), never splitting a UTF-8
    sequence and never starting with "." (so dot-stuffing cannot matter)."""
    text = (unit * (n // max(1, len(unit)) + 2))[offset % len(unit) :]
    out = bytearray(text.encode()[:n])
    while out and out[-1] >= 0x80:  # cut back to an ASCII byte: never half a character
        out.pop()
    out += b"x" * (n - len(out))
    if out.startswith(b"."):
        out[0:1] = b"x"
    return bytes(out)


def make_body(size: int, *, eight_bit: bool = False, line_length: int = 76) -> bytes:
    """A deterministic body of exactly ``size`` bytes (0 or >= 2) made of CRLF-terminated
    lines of at most ``line_length`` bytes (Postfix folds lines over 998 bytes). With
    ``eight_bit`` it contains UTF-8 text; otherwise pure ASCII. Fast for big sizes."""
    if size == 0:
        return b""
    if size < 2:
        raise ValueError("a body ends with CRLF, so size must be 0 or >= 2")
    unit = _TEXT_8BIT + _TEXT if eight_bit else _TEXT
    variants = [_line(i * 7, line_length, unit) + b"\r\n" for i in range(16)]
    full = line_length + 2
    n_full, rest = divmod(size, full)
    if rest == 1:  # a 1-byte remainder cannot be a line: shorten one full line instead
        n_full -= 1
        rest += full
    parts = [variants[i % 16] for i in range(n_full)]
    while rest:
        n = min(line_length, rest - 2)
        if rest - (n + 2) == 1:
            n -= 1
        parts.append(_line(len(parts) * 7, n, unit) + b"\r\n")
        rest -= n + 2
    return b"".join(parts)


def build_message(
    *,
    mail_from: str = "sender@example.org",
    to: Sequence[str] = ("rcpt@example.net",),
    subject: str = "test message",
    body: bytes | None = None,
    body_size: int = 1024,
    eight_bit: bool = False,
    headers: Sequence[tuple[str, str]] = (),
    message_id: str | None = None,
) -> bytes:
    """A complete CRLF message. It carries Date, Message-ID, From and To so that Postfix
    (which treats loopback clients as local) has nothing to add but its Received: line.
    ``body`` wins over ``body_size``; ``headers`` are appended after the standard ones."""
    if body is None:
        body = make_body(body_size, eight_bit=eight_bit)
    lines = [
        ("From", f"<{mail_from}>"),
        ("To", ", ".join(f"<{t}>" for t in to)),
        ("Subject", subject),
        ("Date", format_datetime_fixed()),
        ("Message-ID", message_id or make_msgid(domain="example.org")),
        ("MIME-Version", "1.0"),
    ]
    if any(b > 0x7F for b in body):
        lines += [
            ("Content-Type", "text/plain; charset=utf-8"),
            ("Content-Transfer-Encoding", "8bit"),
        ]
    else:
        lines.append(("Content-Type", "text/plain; charset=us-ascii"))
    lines += list(headers)
    head = b"".join(f"{k}: {v}".encode() + b"\r\n" for k, v in lines)
    return head + b"\r\n" + body


def format_datetime_fixed() -> str:
    """A fixed RFC 5322 date, so that messages are reproducible byte for byte."""
    return format_datetime(datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC))
