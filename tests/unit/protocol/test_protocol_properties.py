"""Property-based tests: hostile streams, 8-bit round trips, reply-text validity."""

from __future__ import annotations

import os
import re
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from milter_wire import OPTNEG_WIRE, SMALL_SESSION, packets, run

from milter_agent.errors import ProtocolError
from milter_agent.protocol import (
    Abort,
    Accept,
    Action,
    AddHeader,
    AddRecipient,
    Body,
    ChangeFrom,
    ChangeHeader,
    Command,
    Connect,
    Continue,
    Data,
    EndOfHeaders,
    EndOfMessage,
    Header,
    Helo,
    InsertHeader,
    Macro,
    Mail,
    MilterConnection,
    OptNeg,
    Policy,
    ProtocolFlag,
    Quit,
    QuitNoClose,
    Rcpt,
    ReplaceBody,
    ReplyCode,
    Response,
    Skip,
    Unknown,
    decode_command,
    decode_text,
    encode_command,
    encode_response,
    encode_text,
    negotiate,
)
from milter_agent.protocol.framing import FrameBuffer


def examples(default: int) -> int:
    """Examples per property: ``default`` in ``make test``; MA_FUZZ_EXAMPLES (``make soak``)
    sets every property here to that number, as it does for the session fuzzing in
    tests/faults/test_fuzz_session.py."""
    return int(os.environ.get("MA_FUZZ_EXAMPLES", default))


FAST = settings(
    max_examples=examples(300), deadline=None, suppress_health_check=[HealthCheck.too_slow]
)

nul_free = st.binary(max_size=40).map(lambda b: b.replace(b"\0", b""))
field = nul_free.map(decode_text)  # what the decoder can produce for a string field
fields = st.lists(field, max_size=4).map(tuple)

commands = st.one_of(
    st.builds(
        OptNeg,
        st.integers(0, 2**32 - 1),
        st.integers(0, 2**32 - 1).map(Action),
        st.integers(0, 2**32 - 1).map(ProtocolFlag),
    ),
    st.builds(Macro, st.binary(min_size=1, max_size=1), st.dictionaries(field, field, max_size=4)),
    st.builds(Connect, field, st.just("U")),
    st.builds(Connect, field, st.sampled_from("L46"), st.integers(0, 65535), field),
    st.builds(Helo, field),
    st.builds(Mail, field, fields),
    st.builds(Rcpt, field, fields),
    st.just(Data()),
    st.builds(Header, field, field),
    st.just(EndOfHeaders()),
    st.builds(Body, st.binary(max_size=300)),
    st.builds(EndOfMessage, st.binary(max_size=50)),
    st.builds(Unknown, field),
    st.sampled_from([Abort(), Quit(), QuitNoClose()]),
)


def decode_wire(wire: bytes) -> Command:
    frames = FrameBuffer()
    frames.feed(wire)
    packet = frames.next_packet()
    assert packet is not None and len(frames) == 0
    return decode_command(*packet)


# --- round trips ---------------------------------------------------------------------------


@FAST
@given(st.binary(max_size=200))
def test_text_round_trip_any_bytes(raw: bytes) -> None:
    assert encode_text(decode_text(raw)) == raw


@FAST
@given(st.text(max_size=100))
def test_text_round_trip_any_str(text: str) -> None:
    assert decode_text(encode_text(text)) == text


@settings(max_examples=examples(500), deadline=None)
@given(commands)
def test_command_round_trip(command: Command) -> None:
    assert decode_wire(encode_command(command)) == command


@FAST
@given(raw=nul_free, args=st.lists(nul_free, max_size=3))
def test_8bit_string_fields_survive_decoding_byte_for_byte(raw: bytes, args: list[bytes]) -> None:
    wire = struct.pack(">I", 2 + len(raw) + sum(len(a) + 1 for a in args)) + b"M" + raw + b"\0"
    wire += b"".join(a + b"\0" for a in args)
    mail = decode_wire(wire)
    assert isinstance(mail, Mail)
    assert encode_text(mail.sender) == raw
    assert [encode_text(a) for a in mail.args] == args
    assert encode_command(mail) == wire


@FAST
@given(raw=nul_free)
def test_8bit_strings_survive_into_actions(raw: bytes) -> None:
    text = decode_text(raw)
    assert packets(encode_response(AddRecipient(text))) == [(b"+", raw + b"\0")]
    assert packets(encode_response(ChangeFrom(text, "A=" + text))) == [
        (b"e", raw + b"\0A=" + raw + b"\0")
    ]


bodies = st.tuples(st.binary(min_size=1, max_size=64), st.integers(0, 200_000)).map(
    lambda t: (t[0] * (t[1] // len(t[0]) + 1))[: t[1]]
)


@settings(max_examples=examples(200), deadline=None)
@given(bodies)
def test_any_body_round_trips(body: bytes) -> None:
    assert decode_wire(encode_command(Body(body))) == Body(body)
    parts = packets(encode_response(ReplaceBody(body)))
    assert all(cmd == b"b" and len(data) <= 65535 for cmd, data in parts)
    assert b"".join(data for _, data in parts) == body


# --- reply texts and header values ---------------------------------------------------------


@st.composite
def reply_codes(draw: st.DrawFn) -> ReplyCode:
    code = draw(st.from_regex(r"[45][0-9]{2}", fullmatch=True))
    enhanced = draw(st.none() | st.from_regex(r"[0-9]{1,3}\.[0-9]{1,3}", fullmatch=True))
    long_line = st.tuples(
        st.sampled_from(["a", "%", "\u00e9", "\udcff", " \r\n"]), st.integers(900, 1100)
    )
    line = st.one_of(
        st.text(max_size=80),
        st.binary(max_size=80).map(decode_text),
        long_line.map(lambda t: t[0] * (t[1] // len(t[0]))),
    )
    lines = draw(st.lists(line, max_size=40))
    return ReplyCode(code, None if enhanced is None else f"{code[0]}.{enhanced}", tuple(lines))


def assert_valid_reply(reply: ReplyCode) -> None:
    """Postfix's milter8.c checks, libmilter's bounds, and SMTP multi-line form."""
    text = reply.text()
    wire = encode_response(reply)
    assert packets(wire) == [(b"y", encode_text(text) + b"\0")]
    lines = text.split("\r\n")
    assert 1 <= len(lines) <= 32
    for i, line in enumerate(lines):
        sep = " " if i == len(lines) - 1 else "-"
        assert line.startswith(reply.code + sep)
        assert line[0] in "45"
        assert "\r" not in line and "\n" not in line and "\0" not in line
        assert not (line[4:5] in set("0123456789") and line[4] != line[0])  # Postfix ISDIGIT
        assert all(len(run) % 2 == 0 for run in re.findall("%+", line))  # % doubled
        assert len(encode_text(line)) <= 980
        if reply.enhanced:
            assert line.startswith(f"{reply.code}{sep}{reply.enhanced} ")


@settings(max_examples=examples(400), deadline=None)
@given(reply_codes())
def test_reply_text_is_always_valid(reply: ReplyCode) -> None:
    assert_valid_reply(reply)


@settings(max_examples=examples(150), deadline=None)
@given(reply_codes())
def test_reply_text_keeps_the_callers_words(reply: ReplyCode) -> None:
    # Short lines of plain text come out whole (after Postfix-style %% unescaping).
    plain = [ln for ln in reply.lines if re.fullmatch(r"[A-Za-z][A-Za-z %.]{0,50}", ln.strip())]
    sent = reply.text().replace("%%", "%")
    for line in plain[:10]:
        if reply.lines.index(line) < 32:
            assert line.strip() in sent


@FAST
@given(name=st.from_regex(r"[!-9;-~]{1,30}", fullmatch=True), value=st.text(max_size=200))
def test_header_values_are_always_safe(name: str, value: str) -> None:
    for action in (
        AddHeader(name, value),
        InsertHeader(3, name, value),
        ChangeHeader(1, name, value),
    ):
        ((_, payload),) = packets(encode_response(action))
        if not isinstance(action, AddHeader):
            payload = payload[4:]
        sent_name, sent_value, rest = payload.split(b"\0")
        assert (sent_name, rest) == (encode_text(name), b"")
        assert b"\r" not in sent_value
        for continuation in sent_value.split(b"\n")[1:]:
            assert continuation[:1] in (b" ", b"\t")  # folding only, never a new header


# --- hostile streams -----------------------------------------------------------------------


def fuzz_responder(conn: MilterConnection, event: Command) -> list[Response]:
    """Answer like a real filter, using only what was negotiated."""
    if isinstance(event, OptNeg):
        policy = Policy(Action(0xFF), ProtocolFlag(0x1FFC80))  # NR_*, SKIP, HDR_LEADSPC...
        return [negotiate(event, policy)]
    if isinstance(event, EndOfMessage):
        extra: list[Response] = [AddHeader("X-Fuzz", "1")] if conn.actions & Action.ADDHDRS else []
        return [*extra, Accept()]
    if isinstance(event, Body) and conn.negotiated and conn.negotiated.protocol & ProtocolFlag.SKIP:
        return [Skip()] if conn.awaiting_reply else []
    return [Continue()] if conn.awaiting_reply else []


def chunked(data: bytes, sizes: list[int]) -> list[bytes]:
    out, i = [], 0
    for size in sizes or [len(data) or 1]:
        out.append(data[i : i + size])
        i += size
    return [*out, data[i:]] if i < len(data) else out


def events_until_error(data: bytes, sizes: list[int]) -> tuple[list[Command], bool]:
    """Events of a stream; True if it ended in ProtocolError. Anything else propagates."""
    collected: list[Command] = []

    def respond(conn: MilterConnection, event: Command) -> list[Response]:
        collected.append(event)
        return fuzz_responder(conn, event)

    try:
        run(chunked(data, sizes), respond)
    except ProtocolError:
        return collected, True
    return collected, False


chunk_sizes = st.lists(st.integers(1, 300), max_size=20)


@settings(max_examples=examples(300), deadline=None)
@given(data=st.binary(max_size=600), sizes=chunk_sizes)
def test_random_bytes_only_ever_raise_protocol_error(data: bytes, sizes: list[int]) -> None:
    events_until_error(data, sizes)


@settings(max_examples=examples(300), deadline=None)
@given(data=st.binary(max_size=600), sizes=chunk_sizes)
def test_random_bytes_after_a_valid_optneg(data: bytes, sizes: list[int]) -> None:
    events, _ = events_until_error(OPTNEG_WIRE + data, sizes)
    assert isinstance(events[0], OptNeg)


FULL_EVENTS, FULL_ERROR = events_until_error(SMALL_SESSION, [])
assert not FULL_ERROR
EDGES = {0}
for _cmd, _payload in packets(SMALL_SESSION):
    EDGES.add(max(EDGES) + 5 + len(_payload))


@settings(max_examples=examples(300), deadline=None)
@given(cut=st.integers(0, len(SMALL_SESSION)), sizes=chunk_sizes)
def test_truncated_session_gives_a_prefix_of_the_events(cut: int, sizes: list[int]) -> None:
    events, error = events_until_error(SMALL_SESSION[:cut], sizes)
    assert events == FULL_EVENTS[: len(events)]
    assert error == (cut not in EDGES)  # EOF between packets is a clean close


mutation = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 10**6), st.integers(0, 255)),
    st.tuples(st.just("delete"), st.integers(0, 10**6), st.integers(1, 8)),
    st.tuples(st.just("insert"), st.integers(0, 10**6), st.binary(min_size=1, max_size=8)),
)


def mutate(data: bytes, steps: list[tuple[str, int, int | bytes]]) -> bytes:
    buf = bytearray(data)
    for kind, where, what in steps:
        i = where % (len(buf) + 1)
        if kind == "flip" and i < len(buf):
            assert isinstance(what, int)
            buf[i] = what
        elif kind == "delete":
            assert isinstance(what, int)
            del buf[i : i + what]
        elif kind == "insert":
            assert isinstance(what, bytes)
            buf[i:i] = what
    return bytes(buf)


@settings(max_examples=examples(400), deadline=None)
@given(steps=st.lists(mutation, min_size=1, max_size=4), sizes=chunk_sizes)
def test_mutated_session_only_ever_raises_protocol_error(
    steps: list[tuple[str, int, int | bytes]], sizes: list[int]
) -> None:
    events_until_error(mutate(SMALL_SESSION, steps), sizes)


@pytest.mark.parametrize("cut", range(0, len(SMALL_SESSION), 7))
def test_every_truncation_point(cut: int) -> None:
    events, error = events_until_error(SMALL_SESSION[:cut], [])
    assert events == FULL_EVENTS[: len(events)]
    assert error == (cut not in EDGES)
