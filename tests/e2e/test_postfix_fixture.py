"""Proof that the end-to-end infrastructure works: real Postfix, the sink, the SMTP helpers,
and a Unix-socket milter in a pytest tmp dir. No milter-agent code is involved."""

from __future__ import annotations

import asyncio
import contextlib
import os
import struct
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from support.postfix import PostfixInstance
from support.sink import SmtpSink, split_message
from support.smtp import build_message, send_message
from support.util import check_unix_path

pytestmark = pytest.mark.e2e

SENDER = "alice@example.org"


@pytest.mark.parametrize(
    ("body_size", "eight_bit", "rcpts"),
    [
        (1024, False, ["bob@example.net"]),
        (300 * 1024, True, ["bob@example.net", "carol@example.com"]),
    ],
    ids=["1k-ascii", "300k-8bit-2rcpt"],
)
def test_no_milter_message_reaches_sink_exactly(
    postfix: PostfixInstance, sink: SmtpSink, body_size: int, eight_bit: bool, rcpts: list[str]
) -> None:
    msg = build_message(mail_from=SENDER, to=rcpts, body_size=body_size, eight_bit=eight_bit)
    result = send_message(postfix.address, SENDER, rcpts, msg)

    assert result.accepted, result
    assert result.code == 250 and result.queue_id
    (got,) = sink.wait_for(1, timeout=30)
    postfix.wait_drained(timeout=30)
    assert got.mail_from == SENDER
    assert sorted(got.rcpt_tos) == sorted(rcpts)
    # Body byte for byte; headers are ours plus Postfix's Received: line on top.
    assert got.body == split_message(msg)[1]
    assert got.header_block.endswith(split_message(msg)[0])
    received = got.header_values("Received")
    assert len(received) == 1 and result.queue_id in received[0]
    assert got.headers["Subject"] == "test message"
    if eight_bit:
        assert "BODY=8BITMIME" in got.mail_options  # Postfix relayed it as 8-bit, unconverted
    assert len(sink.messages) == 1


def test_unreachable_milter_tempfails_at_mail(
    postfix: PostfixInstance, sink: SmtpSink, free_port: Callable[[], int]
) -> None:
    port = free_port()  # nothing listens there
    mark = postfix.log_mark()
    postfix.set_milter(f"inet:127.0.0.1:{port}")

    result = send_message(
        postfix.address, SENDER, ["bob@example.net"], build_message(mail_from=SENDER)
    )

    # Measured: Postfix 3.7 still sends its 220 banner and accepts EHLO; the milter's
    # connect-time tempfail (milter_default_action = tempfail) is answered at MAIL FROM.
    assert result.ehlo_text, "EHLO should have been accepted"
    assert (result.stage, result.code) == ("mail", 451), result
    assert result.text == "4.7.1 Service unavailable - try again later"
    postfix.wait_for_log(
        rf"connect to Milter service inet:127\.0\.0\.1:{port}: Connection refused", since=mark
    )
    postfix.wait_for_log(r"milter-reject: CONNECT from localhost\[127\.0\.0\.1\]: 451", since=mark)
    assert postfix.queue_count(include_hold=True) == 0
    assert sink.messages == []


class MiniMilter:
    """The smallest milter that lets mail through: OPTNEG -> version 6, no actions, no
    protocol flags (so Postfix sends every event and waits for each reply); 'c' to every
    command that needs a reply. Runs an asyncio Unix-socket server in its own thread and
    records the command letters of each session."""

    NEEDS_REPLY = frozenset(b"CHMRTLNBEU")

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sessions: list[list[str]] = []
        self._done = threading.Condition()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.AbstractServer | None = None

    def start(self) -> None:
        check_unix_path(self.path)
        self._thread.start()
        fut = asyncio.run_coroutine_threadsafe(
            asyncio.start_unix_server(self._session, path=str(self.path)), self._loop
        )
        self._server = fut.result(timeout=10)
        # Postfix's smtpd runs as user postfix and needs write permission to connect.
        os.chmod(self.path, 0o666)

    def stop(self) -> None:
        async def close() -> None:
            if self._server is not None:
                self._server.close()
                await self._server.wait_closed()

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(close(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen: list[str] = []

        def reply(cmd: bytes, payload: bytes = b"") -> None:
            writer.write(struct.pack(">I", len(cmd) + len(payload)) + cmd + payload)

        try:
            while True:
                (length,) = struct.unpack(">I", await reader.readexactly(4))
                packet = await reader.readexactly(length)
                cmd = packet[0]
                seen.append(chr(cmd))
                if cmd == ord("O"):
                    reply(b"O", struct.pack(">III", 6, 0, 0))
                elif cmd in self.NEEDS_REPLY:
                    reply(b"c")
                elif cmd == ord("Q"):
                    break
                await writer.drain()  # D (macros) and A (abort) need no reply
        except asyncio.IncompleteReadError:
            pass
        finally:
            writer.close()
            with self._done:
                self.sessions.append(seen)
                self._done.notify_all()

    def wait_sessions(self, n: int, timeout: float) -> list[list[str]]:
        with self._done:
            if not self._done.wait_for(lambda: len(self.sessions) >= n, timeout):
                raise TimeoutError(f"{len(self.sessions)} of {n} milter sessions ended")
            return list(self.sessions)


def test_unix_socket_milter_in_tmp_dir_passes_mail(
    postfix: PostfixInstance, sink: SmtpSink, tmp_path: Path
) -> None:
    sock_dir = tmp_path / "milter"
    sock_dir.mkdir(mode=0o755)
    milter = MiniMilter(sock_dir / "m.sock")
    milter.start()
    try:
        mark = postfix.log_mark()
        # set_milter makes the directories along the path searchable for user postfix:
        # pytest's base temp dir is 0700.
        postfix.set_milter(f"unix:{milter.path}")
        msg = build_message(mail_from=SENDER, to=["bob@example.net"], body_size=100 * 1024)

        result = send_message(postfix.address, SENDER, ["bob@example.net"], msg)

        assert result.accepted, result
        (got,) = sink.wait_for(1, timeout=30)
        assert got.body == split_message(msg)[1]
        (session,) = milter.wait_sessions(1, timeout=30)
    finally:
        milter.stop()
    # Postfix really went through the milter, and every stage of the message was offered.
    assert session[0] == "O" and session[-1] == "Q", session
    for stage in "CHMRTLNBE":
        assert stage in session, (stage, session)
    assert session.count("B") >= 2  # 100 KiB body arrives in chunks of <= 65535 bytes
    log = postfix.log_text(mark)
    assert "warning" not in log.lower(), log
    assert "milter-reject" not in log, log


def test_sink_tempfail_defers_and_retry_delivers(postfix: PostfixInstance, sink: SmtpSink) -> None:
    sink.reply = "451 4.3.0 sink says try later"
    mark = postfix.log_mark()
    msg = build_message(mail_from=SENDER)

    result = send_message(postfix.address, SENDER, ["bob@example.net"], msg)

    assert result.accepted, result
    postfix.wait_for_log(r"status=deferred .*451 4\.3\.0 sink says try later", since=mark)
    assert postfix.queue_count() == 1 and sink.messages == []
    sink.reply = None
    postfix.deliver_deferred()
    got = sink.wait_for_message(lambda m: m.body == split_message(msg)[1], timeout=30)
    postfix.wait_drained(timeout=30)
    assert got.rcpt_tos == ["bob@example.net"] and len(sink.messages) == 1
