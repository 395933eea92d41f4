"""MTA -> filter commands: literal wire bytes <-> typed commands, both ways."""

from __future__ import annotations

import pytest

from milter_agent.protocol import (
    Abort,
    Action,
    Body,
    Command,
    Connect,
    Data,
    EndOfHeaders,
    EndOfMessage,
    Header,
    Helo,
    Macro,
    Mail,
    OptNeg,
    ProtocolFlag,
    Quit,
    QuitNoClose,
    Rcpt,
    Unknown,
    decode_command,
    encode_command,
)
from milter_agent.protocol.framing import FrameBuffer

# (wire bytes written out by hand, the command they mean)
CASES: list[tuple[str, bytes, Command]] = [
    (
        "optneg",
        b"\x00\x00\x00\x0dO\x00\x00\x00\x06\x00\x00\x01\xff\x00\x1f\xff\xff",
        OptNeg(6, Action(0x1FF), ProtocolFlag(0x1FFFFF)),
    ),
    (
        "macro",
        b"\x00\x00\x00\x19DCj\x00mx.example\x00v\x00Postfix\x00",
        Macro(b"C", {"j": "mx.example", "v": "Postfix"}),
    ),
    ("macro-no-pairs", b"\x00\x00\x00\x02DM", Macro(b"M", {})),
    (
        "macro-8bit-value",
        b"\x00\x00\x00\x0dDM{x}\x00caf\xc3\xa9\xff\x00",
        Macro(b"M", {"{x}": "caf\u00e9\udcff"}),
    ),
    ("connect-unknown", b"\x00\x00\x00\x0cChost.test\x00U", Connect("host.test", "U")),
    (
        "connect-unix",
        b"\x00\x00\x00\x1aClocalhost\x00L\x00\x00/run/x.sock\x00",
        Connect("localhost", "L", 0, "/run/x.sock"),
    ),
    (
        "connect-ipv4",
        b"\x00\x00\x00\x1fCmail.example.com\x004\x30\x39192.0.2.1\x00",
        Connect("mail.example.com", "4", 12345, "192.0.2.1"),
    ),
    (
        "connect-ipv6",
        b"\x00\x00\x00\x1eC[2001:db8::1]\x006\xc3\x502001:db8::1\x00",
        Connect("[2001:db8::1]", "6", 50000, "2001:db8::1"),
    ),
    ("helo", b"\x00\x00\x00\x10Hclient.example\x00", Helo("client.example")),
    (
        "mail-esmtp-args",
        b"\x00\x00\x00\x29M<a@example.com>\x00SIZE=1234\x00BODY=8BITMIME\x00",
        Mail("<a@example.com>", ("SIZE=1234", "BODY=8BITMIME")),
    ),
    ("mail-null-sender", b"\x00\x00\x00\x04M<>\x00", Mail("<>")),
    (
        "rcpt",
        b"\x00\x00\x00\x1eR<b@example.com>\x00NOTIFY=NEVER\x00",
        Rcpt("<b@example.com>", ("NOTIFY=NEVER",)),
    ),
    ("data", b"\x00\x00\x00\x01T", Data()),
    (
        "header-8bit",
        b"\x00\x00\x00\x14LSubject\x00 caf\xc3\xa9 \xe9t\xe9\x00",
        Header("Subject", " caf\u00e9 \udce9t\udce9"),
    ),
    (
        "header-folded",
        b"\x00\x00\x00\x17LReceived\x00from a\n\tby b\x00",
        Header("Received", "from a\n\tby b"),
    ),
    ("header-empty-value", b"\x00\x00\x00\x0aLX-Empty\x00\x00", Header("X-Empty", "")),
    ("eoh", b"\x00\x00\x00\x01N", EndOfHeaders()),
    ("body", b"\x00\x00\x00\x0fBhello\r\nworld\r\n", Body(b"hello\r\nworld\r\n")),
    ("body-binary", b"\x00\x00\x00\x05B\x00\xff\r\n", Body(b"\x00\xff\r\n")),
    ("bodyeob", b"\x00\x00\x00\x01E", EndOfMessage()),
    ("bodyeob-with-data", b"\x00\x00\x00\x05Etail", EndOfMessage(b"tail")),
    ("unknown", b"\x00\x00\x00\x0aUXFOO bar\x00", Unknown("XFOO bar")),
    ("abort", b"\x00\x00\x00\x01A", Abort()),
    ("quit", b"\x00\x00\x00\x01Q", Quit()),
    ("quit-nc", b"\x00\x00\x00\x01K", QuitNoClose()),
]


def decode_wire(wire: bytes) -> Command:
    frames = FrameBuffer()
    frames.feed(wire)
    packet = frames.next_packet()
    assert packet is not None
    assert len(frames) == 0, "one packet expected"
    return decode_command(*packet)


@pytest.mark.parametrize(("wire", "command"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_decode_literal(wire: bytes, command: Command) -> None:
    assert decode_wire(wire) == command


@pytest.mark.parametrize(("wire", "command"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_encode_literal(wire: bytes, command: Command) -> None:
    assert encode_command(command) == wire


@pytest.mark.parametrize("command", [c[2] for c in CASES], ids=[c[0] for c in CASES])
def test_round_trip(command: Command) -> None:
    assert decode_wire(encode_command(command)) == command


def test_optneg_keeps_unknown_bits_and_ignores_extra_bytes() -> None:
    # Sendmail may add MDS bits; bytes after the 12 are not ours to judge.
    wire = b"\x00\x00\x00\x11O\x00\x00\x00\x06\x00\x00\x01\xff\x30\x1f\xff\xff\xde\xad\xbe\xef"
    assert decode_wire(wire) == OptNeg(6, Action(0x1FF), ProtocolFlag(0x301FFFFF))
    assert decode_wire(wire).protocol & ProtocolFlag.MDS_1M


def test_connect_unknown_family_ignores_trailing_bytes() -> None:
    # libmilter reads nothing after 'U'; a sender that appends a port must not break us.
    assert decode_wire(b"\x00\x00\x00\x0eChost.test\x00U\x00\x00") == Connect("host.test", "U")


def test_commands_without_payload_ignore_stray_bytes() -> None:
    assert decode_wire(b"\x00\x00\x00\x03Txy") == Data()
    assert decode_wire(b"\x00\x00\x00\x02Ax") == Abort()


def test_header_value_keeps_crlf_folding_and_leading_spaces() -> None:
    assert decode_wire(b"\x00\x00\x00\x0bLX\x00  a\r\n\tb\x00") == Header("X", "  a\r\n\tb")
