"""Filter -> MTA responses and actions: literal wire bytes, reply-text rules, body splitting."""

from __future__ import annotations

import re

import pytest
from milter_wire import packets

from milter_agent.protocol import (
    Accept,
    Action,
    AddHeader,
    AddRecipient,
    AddRecipientPar,
    ChangeFrom,
    ChangeHeader,
    Continue,
    DeleteRecipient,
    Discard,
    InsertHeader,
    MacroStage,
    OptNegReply,
    Progress,
    ProtocolFlag,
    Quarantine,
    Reject,
    ReplaceBody,
    ReplyCode,
    Response,
    Shutdown,
    Skip,
    Tempfail,
    encode_response,
)

CASES: list[tuple[str, Response, bytes]] = [
    ("continue", Continue(), b"\x00\x00\x00\x01c"),
    ("accept", Accept(), b"\x00\x00\x00\x01a"),
    ("reject", Reject(), b"\x00\x00\x00\x01r"),
    ("tempfail", Tempfail(), b"\x00\x00\x00\x01t"),
    ("discard", Discard(), b"\x00\x00\x00\x01d"),
    ("skip", Skip(), b"\x00\x00\x00\x01s"),
    ("progress", Progress(), b"\x00\x00\x00\x01p"),
    ("shutdown", Shutdown(), b"\x00\x00\x00\x014"),
    (
        "replycode",
        ReplyCode("550", "5.7.1", ("Blocked",)),
        b"\x00\x00\x00\x13y550 5.7.1 Blocked\x00",
    ),
    (
        "replycode-multiline",
        ReplyCode("451", "4.7.1", ("greylisted", "try later")),
        b"\x00\x00\x00\x2by451-4.7.1 greylisted\r\n451 4.7.1 try later\x00",
    ),
    (
        "replycode-percent",
        ReplyCode("550", "5.7.1", ("100% spam",)),
        b"\x00\x00\x00\x16y550 5.7.1 100%% spam\x00",
    ),
    ("replycode-no-enhanced", ReplyCode("554", None, ("No",)), b"\x00\x00\x00\x08y554 No\x00"),
    ("addheader", AddHeader("X-Spam", "yes"), b"\x00\x00\x00\x0chX-Spam\x00yes\x00"),
    # libmilter: folds are LF + whitespace, "the MTA adds the CR"
    ("addheader-folded", AddHeader("X-Long", "a\r\nb"), b"\x00\x00\x00\x0dhX-Long\x00a\n b\x00"),
    (
        "addheader-8bit",
        AddHeader("X-8", "caf\u00e9\udcff"),
        b"\x00\x00\x00\x0chX-8\x00caf\xc3\xa9\xff\x00",
    ),
    (
        "insheader",
        InsertHeader(0, "X-First", "1"),
        b"\x00\x00\x00\x0fi\x00\x00\x00\x00X-First\x001\x00",
    ),
    (
        "chgheader",
        ChangeHeader(2, "Subject", "new"),
        b"\x00\x00\x00\x11m\x00\x00\x00\x02Subject\x00new\x00",
    ),
    (
        "chgheader-delete",
        ChangeHeader(1, "X-Spam", ""),
        b"\x00\x00\x00\x0dm\x00\x00\x00\x01X-Spam\x00\x00",
    ),
    ("replbody", ReplaceBody(b"new\r\n"), b"\x00\x00\x00\x06bnew\r\n"),
    ("replbody-empty", ReplaceBody(b""), b"\x00\x00\x00\x01b"),
    ("addrcpt", AddRecipient("<c@example.com>"), b"\x00\x00\x00\x11+<c@example.com>\x00"),
    (
        "addrcpt-par",
        AddRecipientPar("<c@example.com>", "NOTIFY=NEVER"),
        b"\x00\x00\x00\x1e2<c@example.com>\x00NOTIFY=NEVER\x00",
    ),
    ("delrcpt", DeleteRecipient("<b@example.com>"), b"\x00\x00\x00\x11-<b@example.com>\x00"),
    ("chgfrom", ChangeFrom("<s@example.com>"), b"\x00\x00\x00\x11e<s@example.com>\x00"),
    (
        "chgfrom-args",
        ChangeFrom("<s@example.com>", "RET=HDRS"),
        b"\x00\x00\x00\x1ae<s@example.com>\x00RET=HDRS\x00",
    ),
    ("quarantine", Quarantine("held"), b"\x00\x00\x00\x06qheld\x00"),
    (
        "optneg",
        OptNegReply(2, Action.NONE, ProtocolFlag.NONE),
        b"\x00\x00\x00\x0dO\x00\x00\x00\x02\x00\x00\x00\x00\x00\x00\x00\x00",
    ),
    (
        "optneg-macros",
        OptNegReply(
            6,
            Action.ADDHDRS | Action.SETSYMLIST,
            ProtocolFlag.HDR_LEADSPC,
            ((MacroStage.CONNECT, "j {client_addr}"), (MacroStage.EOM, "i")),
        ),
        b"\x00\x00\x00\x27O\x00\x00\x00\x06\x00\x00\x01\x01\x00\x10\x00\x00"
        b"\x00\x00\x00\x00j {client_addr}\x00\x00\x00\x00\x05i\x00",
    ),
]


@pytest.mark.parametrize(("response", "wire"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_encode_literal(response: Response, wire: bytes) -> None:
    assert encode_response(response) == wire


# --- ReplyCode ---------------------------------------------------------------------------------


def reply_lines(reply: ReplyCode) -> list[str]:
    return reply.text().split("\r\n")


def test_replycode_multiline_markers() -> None:
    lines = reply_lines(ReplyCode("550", "5.7.1", ("one", "two", "three")))
    assert lines == ["550-5.7.1 one", "550-5.7.1 two", "550 5.7.1 three"]


def test_replycode_strips_cr_lf_nul_and_controls() -> None:
    reply = ReplyCode("554", "5.7.1", ("bad\r\nline\0x\x07y",))
    assert reply.text() == "554 5.7.1 bad  line x y"


def test_replycode_drops_empty_lines_and_falls_back_to_default_text() -> None:
    assert reply_lines(ReplyCode("550", "5.7.1", ("", " ", "only"))) == ["550 5.7.1 only"]
    assert ReplyCode("451", None, ()).text() == "451 Try again later"
    assert ReplyCode("550", "5.7.1", ("\r\n",)).text() == "550 5.7.1 Message rejected"


def test_replycode_at_most_32_lines() -> None:
    lines = reply_lines(ReplyCode("550", "5.7.1", tuple(f"line {i}" for i in range(40))))
    assert len(lines) == 32
    assert all(ln.startswith("550-") for ln in lines[:-1])
    assert lines[-1] == "550 5.7.1 line 31"


@pytest.mark.parametrize("text", ["a" * 2000, "%" * 2000, "\u00e9" * 2000, "\udcff" * 2000])
def test_replycode_line_at_most_980_bytes_as_sent(text: str) -> None:
    (line,) = reply_lines(ReplyCode("550", "5.7.1", (text,)))
    wire = encode_response(ReplyCode("550", "5.7.1", (text,)))
    assert len(wire) <= 5 + 980 + 1
    assert len(line.encode("utf-8", "surrogateescape")) <= 980
    assert all(len(run) % 2 == 0 for run in re.findall("%+", line))  # no % cut in half


def test_replycode_digit_after_code_must_repeat_class() -> None:
    # Postfix milter8.c: "550 4 apples" is a malformed reply (4th char digit != '5').
    assert ReplyCode("550", None, ("4 apples",)).text() == "550 5.0.0 4 apples"
    assert ReplyCode("451", None, ("ok", "5 more")).text() == "451-4.0.0 ok\r\n451 4.0.0 5 more"
    assert ReplyCode("550", None, ("5 apples",)).text() == "550 5 apples"
    assert ReplyCode("550", "5.7.1", ("4 apples",)).text() == "550 5.7.1 4 apples"


@pytest.mark.parametrize(
    ("code", "enhanced"),
    [
        ("250", None),
        ("550 ", None),
        ("55", None),
        ("5500", None),
        ("650", None),
        ("5x0", None),
        ("", None),
        ("550", "4.7.1"),
        ("451", "5.7.1"),
        ("550", "5.7"),
        ("550", "5.7.1 "),
        ("550", "5.1000.1"),
        ("550", "x.7.1"),
    ],
)
def test_replycode_refuses_bad_codes(code: str, enhanced: str | None) -> None:
    with pytest.raises(ValueError):
        ReplyCode(code, enhanced, ("text",))


# --- headers, body ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["", "X Spam", "X:Spam", "X-\u00e9", "X\nY", "X\0"])
def test_header_actions_refuse_bad_names(name: str) -> None:
    for action in (AddHeader(name, "v"), InsertHeader(0, name, "v"), ChangeHeader(1, name, "v")):
        with pytest.raises(ValueError):
            encode_response(action)


def test_header_value_never_carries_nul_or_empty_continuation_lines() -> None:
    ((_, payload),) = packets(encode_response(AddHeader("X", "a\0b\r\n\r\nc\nd\r\n\te\r")))
    assert payload == b"X\x00ab\n c\n d\n\te\x00"


@pytest.mark.parametrize("response", [AddRecipient("a\0b"), Quarantine("x"), ChangeFrom("a\0")])
def test_nul_inside_a_string_is_refused_or_removed(response: Response) -> None:
    try:
        wire = encode_response(response)
    except ValueError:
        return
    ((_, payload),) = packets(wire)
    assert payload.count(b"\0") == 1 and payload.endswith(b"\0")


def test_quarantine_reason_is_one_clean_line() -> None:
    assert encode_response(Quarantine("a\r\nb")) == b"\x00\x00\x00\x06qa  b\x00"


def test_replbody_is_split_into_packets_of_at_most_65535_bytes() -> None:
    body = bytes(range(256)) * 600  # 153600 bytes
    wire = encode_response(ReplaceBody(body))
    assert wire[:5] == b"\x00\x01\x00\x00b"  # 65535 data bytes + command byte
    parts = packets(wire)
    assert [len(p) for _, p in parts] == [65535, 65535, 22530]
    assert {c for c, _ in parts} == {b"b"}
    assert b"".join(p for _, p in parts) == body


def test_replbody_exactly_65535_is_one_packet() -> None:
    assert len(packets(encode_response(ReplaceBody(b"x" * 65535)))) == 1
    assert len(packets(encode_response(ReplaceBody(b"x" * 65536)))) == 2
