"""Test helpers for the protocol tests: an independent framer/parser and a scripted filter.

Nothing here uses the codec's own encoder, so expected bytes built with :func:`pkt` check the
codec instead of repeating it.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable

from milter_agent.protocol import (
    CLOSED,
    NEED_DATA,
    Action,
    AddHeader,
    Command,
    Continue,
    EndOfMessage,
    MilterConnection,
    OptNeg,
    Policy,
    ProtocolFlag,
    Response,
    negotiate,
)

ALL_ACTIONS = Action(0x1FF)
ALL_PROTOCOL = ProtocolFlag(0x1FFFFF)
#: What Postfix 3.x offers: version 6, every action, every v6 protocol bit.
POSTFIX_OFFER = OptNeg(6, ALL_ACTIONS, ALL_PROTOCOL)
POLICY = Policy(actions=Action(0x1FF) & ~Action.SETSYMLIST)


def pkt(cmd: bytes, payload: bytes = b"") -> bytes:
    """One packet, framed by hand: u32 length (command byte included), command, payload."""
    return struct.pack(">I", len(payload) + 1) + cmd + payload


def z(*texts: bytes) -> bytes:
    """NUL-terminated byte strings."""
    return b"".join(t + b"\0" for t in texts)


def packets(wire: bytes) -> list[tuple[bytes, bytes]]:
    """Split bytes into ``(command, payload)`` packets; the bytes must end on a packet edge."""
    out = []
    while wire:
        (length,) = struct.unpack_from(">I", wire)
        assert length >= 1, wire
        assert len(wire) >= 4 + length, "truncated packet"
        out.append((wire[4:5], wire[5 : 4 + length]))
        wire = wire[4 + length :]
    return out


Responder = Callable[[MilterConnection, Command], Iterable[Response]]


def default_responder(conn: MilterConnection, event: Command) -> list[Response]:
    """Negotiate with :data:`POLICY`; at end of message add a header and continue."""
    if isinstance(event, OptNeg):
        return [negotiate(event, POLICY)]
    if isinstance(event, EndOfMessage):
        return [AddHeader("X-Test", "yes"), Continue()]
    return [Continue()] if conn.awaiting_reply else []


def run(
    chunks: Iterable[bytes],
    respond: Responder = default_responder,
    conn: MilterConnection | None = None,
) -> tuple[list[Command], bytes]:
    """Feed ``chunks`` then EOF, answering each event; return the events and the bytes sent."""
    conn = conn or MilterConnection()
    events: list[Command] = []
    out = bytearray()

    def pump() -> bool:
        while True:
            event = conn.next_event()
            if event is NEED_DATA:
                return True
            if event is CLOSED:
                return False
            assert not isinstance(event, type(NEED_DATA))
            events.append(event)
            for response in respond(conn, event):
                out.extend(conn.send(response))

    for chunk in chunks:
        conn.receive_data(chunk)
        pump()
    conn.receive_data(b"")
    assert pump() is False, "EOF must end the stream"
    return events, bytes(out)


def negotiated(
    policy: Policy = POLICY, offer: OptNeg = POSTFIX_OFFER
) -> tuple[MilterConnection, bytes]:
    """A connection that has answered the OPTNEG ``offer`` with ``negotiate(offer, policy)``."""
    conn = MilterConnection()
    conn.receive_data(pkt(b"O", struct.pack(">III", offer.version, offer.actions, offer.protocol)))
    event = conn.next_event()
    assert event == offer
    return conn, conn.send(negotiate(offer, policy))


def feed(conn: MilterConnection, *wire: bytes) -> list[Command]:
    """Feed packets and return every event they produce (no replies are sent)."""
    conn.receive_data(b"".join(wire))
    events = []
    while (event := conn.next_event()) is not NEED_DATA:
        assert event is not CLOSED
        assert not isinstance(event, type(NEED_DATA))
        events.append(event)
    return events


# --- a Postfix-like session ----------------------------------------------------------------

OPTNEG_WIRE = pkt(b"O", b"\x00\x00\x00\x06\x00\x00\x01\xff\x00\x1f\xff\xff")
CONNECT_WIRE = pkt(b"C", z(b"mail.example.com") + b"4\x30\x39" + z(b"192.0.2.1"))


def message_wire(n: int, body: bytes = b"x" * 100) -> bytes:
    """One message transaction as Postfix sends it, with macros, 8-bit and folded headers."""
    qid = b"QID%d" % n
    return b"".join(
        [
            pkt(b"D", b"M" + z(b"{mail_addr}", b"a@example.com")),
            pkt(b"M", z(b"<a@example.com>", b"SIZE=120", b"BODY=8BITMIME")),
            pkt(b"D", b"R" + z(b"i", qid, b"{rcpt_addr}", b"b@example.com")),
            pkt(b"R", z(b"<b@example.com>")),
            pkt(b"R", z(b"<c@example.com>", b"NOTIFY=NEVER")),
            pkt(b"D", b"T" + z(b"i", qid)),
            pkt(b"T"),
            pkt(b"L", z(b"Subject", b" caf\xc3\xa9 \xe9t\xe9")),
            pkt(b"L", z(b"Received", b" from a\n\tby b")),
            pkt(b"D", b"N" + z(b"i", qid)),
            pkt(b"N"),
            pkt(b"B", b"line 1\r\n\x00\xff 8-bit\r\n"),
            pkt(b"B", body),
            pkt(b"D", b"E" + z(b"i", qid)),
            pkt(b"E"),
        ]
    )


#: OPTNEG, connect, a macro packet without pairs, two HELOs, an ABORT outside a transaction,
#: an UNKNOWN command, two messages (one body chunk of 70000 bytes, as Sendmail with MDS_256K
#: may send), QUIT.
POSTFIX_SESSION = b"".join(
    [
        OPTNEG_WIRE,
        pkt(b"D", b"C" + z(b"j", b"mx.example", b"{daemon_name}", b"smtpd")),
        CONNECT_WIRE,
        pkt(b"D", b"H"),
        pkt(b"H", z(b"client.example")),
        pkt(b"H", z(b"client.example")),
        pkt(b"A"),
        pkt(b"U", z(b"XFOO bar")),
        message_wire(1, b"x" * 70000),
        message_wire(2),
        pkt(b"Q"),
    ]
)
#: The same without the big chunk, for the fuzz tests.
SMALL_SESSION = POSTFIX_SESSION.replace(pkt(b"B", b"x" * 70000), pkt(b"B", b"x" * 100))
