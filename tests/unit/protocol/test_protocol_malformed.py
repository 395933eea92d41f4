"""Malformed input: each case raises ProtocolError (nothing else) and poisons the connection."""

from __future__ import annotations

import tracemalloc

import pytest
from milter_wire import CONNECT_WIRE, negotiated, pkt, z

from milter_agent.errors import ProtocolError
from milter_agent.protocol import NEED_DATA, Continue, MilterConnection
from milter_agent.protocol.framing import FrameBuffer

BAD_PACKETS = {
    "length-0": b"\x00\x00\x00\x00",
    "length-over-cap": b"\x00\x10\x00\x01" + b"B" + b"x" * 64,
    "length-2**31": b"\x80\x00\x00\x00B",
    "length-2**32-1": b"\xff\xff\xff\xff",
    "unknown-command": pkt(b"Z"),
    "unknown-command-lowercase": pkt(b"c"),
    "helo-missing-nul": pkt(b"H", b"client.example"),
    "helo-empty": pkt(b"H"),
    "helo-two-strings": pkt(b"H", z(b"a", b"b")),
    "mail-empty": pkt(b"M"),
    "rcpt-missing-nul": pkt(b"R", b"<b@example.com>"),
    "header-name-only": pkt(b"L", z(b"Subject")),
    "header-value-missing-nul": pkt(b"L", b"Subject\0value"),
    "unknown-missing-nul": pkt(b"U", b"XFOO"),
    "connect-empty": pkt(b"C"),
    "connect-no-nul": pkt(b"C", b"host"),
    "connect-cut-before-family": pkt(b"C", z(b"host")),
    "connect-cut-before-port": pkt(b"C", z(b"host") + b"4"),
    "connect-cut-in-port": pkt(b"C", z(b"host") + b"4\x30"),
    "connect-cut-before-address": pkt(b"C", z(b"host") + b"4\x30\x39"),
    "connect-address-missing-nul": pkt(b"C", z(b"host") + b"4\x30\x39192.0.2.1"),
    "connect-bad-family": pkt(b"C", z(b"host") + b"X\x30\x39" + z(b"192.0.2.1")),
    "connect-8bit-family": pkt(b"C", z(b"host") + b"\xb4\x30\x39" + z(b"192.0.2.1")),
    "optneg-11-bytes": pkt(b"O", b"\x00" * 11),
    "optneg-empty": pkt(b"O"),
    "macro-empty": pkt(b"D"),
    "macro-odd-pairs": pkt(b"D", b"C" + z(b"j")),
    "macro-odd-pairs-3": pkt(b"D", b"C" + z(b"j", b"mx", b"v")),
    "macro-value-missing-nul": pkt(b"D", b"Cj\0mx"),
}


def poisoned(conn: MilterConnection) -> None:
    """Every later call raises ProtocolError again."""
    with pytest.raises(ProtocolError):
        conn.next_event()
    with pytest.raises(ProtocolError):
        conn.send(Continue())
    with pytest.raises(ProtocolError):
        conn.receive_data(pkt(b"Q"))


@pytest.mark.parametrize("wire", BAD_PACKETS.values(), ids=BAD_PACKETS.keys())
def test_bad_packet_on_a_fresh_connection(wire: bytes) -> None:
    conn = MilterConnection()
    conn.receive_data(wire)
    with pytest.raises(ProtocolError):
        conn.next_event()
    poisoned(conn)


@pytest.mark.parametrize("wire", BAD_PACKETS.values(), ids=BAD_PACKETS.keys())
def test_bad_packet_while_a_reply_is_pending(wire: bytes) -> None:
    conn, _ = negotiated()
    conn.receive_data(CONNECT_WIRE)
    conn.next_event()
    assert conn.awaiting_reply
    conn.receive_data(wire)
    with pytest.raises(ProtocolError):
        conn.next_event()
    poisoned(conn)  # in particular, no late CONTINUE for the pending CONNECT


@pytest.mark.parametrize("cut", [1, 3, 4, 5, 10, len(CONNECT_WIRE) - 1])
def test_eof_mid_packet(cut: int) -> None:
    conn, _ = negotiated()
    conn.receive_data(CONNECT_WIRE[:cut])
    assert conn.next_event() is NEED_DATA
    conn.receive_data(b"")
    with pytest.raises(ProtocolError, match="middle of a packet"):
        conn.next_event()
    poisoned(conn)


def test_oversized_length_is_refused_from_the_header_alone() -> None:
    frames = FrameBuffer()
    frames.feed(b"\x80\x00\x00\x00")  # claims 2 GiB: refused before any payload arrives
    with pytest.raises(ProtocolError, match="exceeds"):
        frames.next_packet()
    assert len(frames) == 4


def test_oversized_length_does_not_allocate() -> None:
    conn = MilterConnection()
    tracemalloc.start()
    try:
        conn.receive_data(b"\x80\x00\x00\x00B" + b"x" * 1000)
        with pytest.raises(ProtocolError):
            conn.next_event()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 256 * 1024


def test_cap_is_inclusive_and_configurable() -> None:
    frames = FrameBuffer(max_packet=10)
    frames.feed(pkt(b"B", b"x" * 9))  # length 10: allowed
    assert frames.next_packet() == (b"B", b"x" * 9)
    frames.feed(pkt(b"B", b"x" * 10))  # length 11: refused
    with pytest.raises(ProtocolError):
        frames.next_packet()


def test_default_cap_allows_sendmail_1mib_packets() -> None:
    conn, _ = negotiated()
    body = b"x" * (1024 * 1024 - 1)
    conn.receive_data(CONNECT_WIRE)
    conn.next_event()
    conn.send(Continue())
    conn.receive_data(pkt(b"M", z(b"<>")))
    conn.next_event()
    conn.send(Continue())
    conn.receive_data(pkt(b"B", body))
    event = conn.next_event()
    assert getattr(event, "chunk", None) == body
