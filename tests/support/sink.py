"""A recording SMTP sink on loopback, built on aiosmtpd (its Controller runs in a thread).

Postfix relays everything here (``relayhost = [127.0.0.1]:PORT``); tests assert on the
recorded envelope and the exact message bytes."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.parser import BytesHeaderParser
from email.policy import default as default_policy
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

# Big enough for any test message; Postfix's message_size_limit is set to match.
DATA_SIZE_LIMIT = 64 * 1024 * 1024


def split_message(data: bytes) -> tuple[bytes, bytes]:
    """(header block including its terminating blank line, body) of a CRLF message."""
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        return data, b""
    return head + sep, body


@dataclass
class SinkMessage:
    """One message as the sink received it."""

    mail_from: str
    rcpt_tos: list[str]
    data: bytes  # exact DATA content, dot-unstuffed, CRLF line ends
    mail_options: list[str] = field(default_factory=list)
    rcpt_options: list[str] = field(default_factory=list)
    peer: Any = None
    received_at: float = field(default_factory=time.monotonic)
    headers: EmailMessage = field(init=False, repr=False)

    def __post_init__(self) -> None:
        msg = BytesHeaderParser(policy=default_policy).parsebytes(self.data)
        assert isinstance(msg, EmailMessage)
        self.headers = msg

    @property
    def body(self) -> bytes:
        """Everything after the first empty line, byte for byte."""
        return split_message(self.data)[1]

    @property
    def header_block(self) -> bytes:
        return split_message(self.data)[0]

    def header_values(self, name: str) -> list[str]:
        """All values of header ``name`` in message order."""
        return [str(v) for v in self.headers.get_all(name, [])]


class _Handler:
    def __init__(self, sink: SmtpSink) -> None:
        self.sink = sink

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        reply = self.sink.reply
        if reply is not None:
            return reply
        content = envelope.original_content or b""
        self.sink._record(
            SinkMessage(
                mail_from=envelope.mail_from or "",
                rcpt_tos=list(envelope.rcpt_tos),
                data=bytes(content),
                mail_options=list(envelope.mail_options),
                rcpt_options=list(envelope.rcpt_options),
                peer=session.peer,
            )
        )
        return "250 2.0.0 OK recorded"


class _PreboundController(Controller):
    """Controller that serves on a socket we bound to port 0 ourselves, so the port is
    never raced with anybody else (plain Controller needs a fixed port number)."""

    def __init__(self, handler: Any, sock: socket.socket, **kwargs: Any) -> None:
        self._sock = sock
        host, port = sock.getsockname()[:2]
        super().__init__(handler, hostname=host, port=port, **kwargs)

    def _create_server(self) -> Any:
        return self.loop.create_server(self._factory_invoker, sock=self._sock)


class SmtpSink:
    """Records every message it accepts. Use as a context manager or start()/stop().

    ``reply``: when set (e.g. "451 4.3.0 try later"), DATA is answered with it and
    nothing is recorded; lets a test make Postfix defer or bounce."""

    def __init__(self, host: str = "127.0.0.1", hostname: str = "sink.localdomain") -> None:
        self.host = host
        # Must differ from Postfix's myhostname or Postfix reports a mail loop.
        self.hostname = hostname
        self.port = 0
        self.reply: str | None = None
        self._messages: list[SinkMessage] = []
        self._cond = threading.Condition()
        self._controller: _PreboundController | None = None

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    def start(self) -> None:
        if self._controller is not None:
            return
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, 0))
        self.port = sock.getsockname()[1]
        self._controller = _PreboundController(
            _Handler(self),
            sock,
            loop=asyncio.new_event_loop(),
            server_hostname=self.hostname,
            data_size_limit=DATA_SIZE_LIMIT,
            decode_data=False,  # keep bytes exact; also makes aiosmtpd offer 8BITMIME
            enable_SMTPUTF8=True,
            ready_timeout=10.0,
        )
        self._controller.start()

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def __enter__(self) -> SmtpSink:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- recording ---------------------------------------------------------------------

    def _record(self, msg: SinkMessage) -> None:
        with self._cond:
            self._messages.append(msg)
            self._cond.notify_all()

    @property
    def messages(self) -> list[SinkMessage]:
        """A snapshot of everything received since the last clear()."""
        with self._cond:
            return list(self._messages)

    def clear(self) -> None:
        with self._cond:
            self._messages.clear()
        self.reply = None

    def wait_for(self, count: int, timeout: float = 30.0) -> list[SinkMessage]:
        """Block until at least ``count`` messages are recorded; return them all."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self._messages) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(
                        f"sink got {len(self._messages)} of {count} messages in {timeout:.1f}s"
                    )
                self._cond.wait(left)
            return list(self._messages)

    def wait_for_message(
        self, predicate: Callable[[SinkMessage], bool], timeout: float = 30.0
    ) -> SinkMessage:
        """Block until a recorded message satisfies ``predicate``; return the first such."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for m in self._messages:
                    if predicate(m):
                        return m
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(
                        f"no matching message in {timeout:.1f}s ({len(self._messages)} received)"
                    )
                self._cond.wait(left)

    def assert_quiet(self, duration: float) -> None:
        """Fail if any message arrives within ``duration`` seconds (for 'nothing was
        delivered' checks; prefer wait_drained() on the Postfix side where possible)."""
        with self._cond:
            start = len(self._messages)
            deadline = time.monotonic() + duration
            while len(self._messages) == start:
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                self._cond.wait(left)
            raise AssertionError(f"unexpected message: {self._messages[start]!r}")
