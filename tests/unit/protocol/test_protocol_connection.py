"""MilterConnection: whole sessions, field cases, ordering errors and the sending rules."""

from __future__ import annotations

import struct

import pytest
from milter_wire import (
    CONNECT_WIRE,
    OPTNEG_WIRE,
    POLICY,
    POSTFIX_OFFER,
    POSTFIX_SESSION,
    feed,
    negotiated,
    packets,
    pkt,
    run,
    z,
)

from milter_agent.errors import ProtocolError
from milter_agent.protocol import (
    Abort,
    Accept,
    Action,
    AddHeader,
    AddRecipient,
    AddRecipientPar,
    ChangeFrom,
    ChangeHeader,
    Connect,
    Continue,
    DeleteRecipient,
    Discard,
    Header,
    InsertHeader,
    LocalProtocolError,
    Macro,
    MacroStage,
    MilterConnection,
    OptNeg,
    OptNegReply,
    Phase,
    Policy,
    Progress,
    ProtocolFlag,
    Quarantine,
    QuitNoClose,
    Reject,
    ReplaceBody,
    ReplyCode,
    Response,
    Shutdown,
    Skip,
    Tempfail,
)

STEPS = {
    "connect": CONNECT_WIRE,
    "helo": pkt(b"H", z(b"client.example")),
    "mail": pkt(b"M", z(b"<a@example.com>")),
    "rcpt": pkt(b"R", z(b"<b@example.com>")),
    "data": pkt(b"T"),
    "header": pkt(b"L", z(b"Subject", b"hi")),
    "eoh": pkt(b"N"),
    "body": pkt(b"B", b"body\r\n"),
    "eom": pkt(b"E"),
}
ACTIONS: list[Response] = [
    AddHeader("X-A", "1"),
    InsertHeader(0, "X-B", "2"),
    ChangeHeader(1, "Subject", "new"),
    ReplaceBody(b"new\r\n"),
    AddRecipient("<c@example.com>"),
    AddRecipientPar("<c@example.com>", "NOTIFY=NEVER"),
    DeleteRecipient("<b@example.com>"),
    ChangeFrom("<s@example.com>", "RET=HDRS"),
    Quarantine("held"),
]
FINALS: list[Response] = [
    Continue(),
    Accept(),
    Reject(),
    Tempfail(),
    ReplyCode("550", "5.7.1", ("no",)),
    Shutdown(),
]


def at(stage: str, policy: Policy = POLICY, offer: OptNeg = POSTFIX_OFFER) -> MilterConnection:
    """A connection where the command ``stage`` has just arrived, every earlier one answered."""
    conn, _ = negotiated(policy, offer)
    for name, wire in STEPS.items():
        feed(conn, wire)
        if name == stage:
            return conn
        if conn.awaiting_reply:
            conn.send(Continue())
    raise AssertionError(stage)


def refused(conn: MilterConnection, *wire: bytes) -> None:
    conn.receive_data(b"".join(wire))
    with pytest.raises(ProtocolError):
        while True:
            conn.next_event()


# --- whole sessions ------------------------------------------------------------------------


def test_postfix_session_fed_one_byte_at_a_time_matches_fed_at_once() -> None:
    whole, whole_out = run([POSTFIX_SESSION])
    trickle, trickle_out = run(POSTFIX_SESSION[i : i + 1] for i in range(len(POSTFIX_SESSION)))
    assert trickle == whole
    assert trickle_out == whole_out
    message = ["Macro", "Mail", "Macro", "Rcpt", "Rcpt", "Macro", "Data", "Header", "Header"]
    message += ["Macro", "EndOfHeaders", "Body", "Body", "Macro", "EndOfMessage"]
    assert [type(e).__name__ for e in whole] == [
        "OptNeg", "Macro", "Connect", "Macro", "Helo", "Helo", "Abort", "Unknown",
        *message, *message, "Quit",
    ]  # fmt: skip
    assert Macro(b"H", {}) in whole
    assert Header("Subject", " caf\u00e9 \udce9t\udce9") in whole
    replies = [cmd for cmd, _ in packets(whole_out)]
    per_message = [b"c"] * 9 + [b"h", b"c"]
    assert replies == [b"O"] + [b"c"] * 4 + per_message * 2


def test_session_in_random_chunks_matches() -> None:
    whole, whole_out = run([POSTFIX_SESSION])
    sizes = [1, 2, 3, 5, 7, 4096, 13, 65536, 11]
    chunks, i, k = [], 0, 0
    while i < len(POSTFIX_SESSION):
        chunks.append(POSTFIX_SESSION[i : i + sizes[k % len(sizes)]])
        i += sizes[k % len(sizes)]
        k += 1
    assert run(chunks) == (whole, whole_out)


# --- field cases ---------------------------------------------------------------------------


def test_macro_without_pairs_needs_no_reply() -> None:
    conn = at("connect")
    conn.send(Continue())
    assert feed(conn, pkt(b"D", b"H")) == [Macro(b"H", {})]
    assert not conn.awaiting_reply


def test_abort_outside_a_transaction_is_ignored() -> None:
    conn, _ = negotiated()
    assert feed(conn, pkt(b"A")) == [Abort()]
    assert conn.phase is Phase.READY
    feed(conn, CONNECT_WIRE)
    conn.send(Continue())
    assert feed(conn, pkt(b"A"), pkt(b"A")) == [Abort(), Abort()]
    assert conn.phase is Phase.SESSION
    assert not conn.awaiting_reply


def test_helo_twice() -> None:
    conn = at("helo")
    conn.send(Continue())
    feed(conn, STEPS["helo"])
    assert conn.awaiting_reply
    conn.send(Continue())
    feed(conn, STEPS["mail"])
    assert conn.phase is Phase.MESSAGE


def test_quit_nc_then_new_connect_without_negotiation() -> None:
    conn = at("body", Policy(actions=Action.ADDHDRS))
    agreed = conn.negotiated
    assert feed(conn, pkt(b"K")) == [QuitNoClose()]  # cancels the pending BODY reply too
    assert conn.phase is Phase.READY
    assert not conn.awaiting_reply
    assert feed(conn, CONNECT_WIRE) == [Connect("mail.example.com", "4", 12345, "192.0.2.1")]
    assert conn.send(Continue()) == b"\x00\x00\x00\x01c"
    assert conn.negotiated is agreed
    for wire in list(STEPS.values())[1:]:
        feed(conn, wire)
        if wire != STEPS["eom"]:
            conn.send(Continue())
    assert conn.send(AddHeader("X", "v"))  # the old negotiation still holds
    conn.send(Continue())
    refused(conn, pkt(b"K"), OPTNEG_WIRE)  # no second negotiation on the same socket


def test_several_messages_per_connection() -> None:
    conn = at("eom")
    conn.send(Accept())
    assert conn.phase is Phase.SESSION
    feed(conn, STEPS["mail"])  # message 2: rejected at MAIL
    conn.send(Reject())
    assert conn.phase is Phase.SESSION
    for name in ("mail", "rcpt", "rcpt", "data", "eoh", "body", "eom"):  # message 3
        feed(conn, STEPS[name])
        if name != "eom":
            conn.send(Tempfail() if name == "rcpt" else Continue())
    conn.send(ReplyCode("451", "4.7.1", ("later",)))
    assert conn.phase is Phase.SESSION


def test_abort_mid_message_then_new_mail() -> None:
    conn = at("header")
    conn.send(Continue())
    feed(conn, pkt(b"A"))
    assert conn.phase is Phase.SESSION
    feed(conn, STEPS["mail"])
    assert conn.phase is Phase.MESSAGE
    conn.send(Continue())
    assert feed(conn, STEPS["rcpt"])


def test_abort_while_end_of_message_awaits_its_reply() -> None:
    conn = at("eom")
    feed(conn, pkt(b"A"))
    assert not conn.awaiting_reply
    for response in (AddHeader("X", "v"), Progress(), Continue()):
        with pytest.raises(LocalProtocolError):
            conn.send(response)


def test_reject_of_one_recipient_keeps_the_message() -> None:
    conn = at("rcpt")
    conn.send(Reject())
    assert conn.phase is Phase.MESSAGE
    feed(conn, STEPS["rcpt"])
    conn.send(Continue())


@pytest.mark.parametrize("stage", ["mail", "data", "header", "eoh", "body"])
def test_message_level_final_reply_ends_the_message(stage: str) -> None:
    conn = at(stage)
    conn.send(Reject())
    assert conn.phase is Phase.SESSION
    refused(conn, STEPS["body"])


def test_quit_before_negotiation_is_tolerated() -> None:
    # Deliberate tolerance: a peer that gives up at once just closes.
    conn = MilterConnection()
    feed(conn, pkt(b"Q"))
    assert conn.phase is Phase.CLOSED


# --- out of order --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["rcpt", "data", "header", "eoh", "body", "eom"], ids=lambda n: f"{n}-before-mail"
)
def test_message_commands_before_mail(name: str) -> None:
    conn = at("helo")
    conn.send(Continue())
    refused(conn, STEPS[name])


@pytest.mark.parametrize("name", ["helo", "mail", "rcpt", "body"])
def test_session_commands_before_connect(name: str) -> None:
    conn, _ = negotiated()
    refused(conn, STEPS[name])


def test_connect_twice() -> None:
    conn = at("connect")
    conn.send(Continue())
    refused(conn, CONNECT_WIRE)


BEFORE_OPTNEG = {
    "macro": pkt(b"D", b"C"),
    "connect": CONNECT_WIRE,
    "helo": STEPS["helo"],
    "mail": STEPS["mail"],
    "abort": pkt(b"A"),
    "quit-nc": pkt(b"K"),
    "body": STEPS["body"],
    "unknown": pkt(b"U", z(b"X")),
}


@pytest.mark.parametrize("wire", BEFORE_OPTNEG.values(), ids=BEFORE_OPTNEG.keys())
def test_anything_before_optneg(wire: bytes) -> None:
    refused(MilterConnection(), wire)


def test_optneg_twice() -> None:
    conn, _ = negotiated()
    refused(conn, OPTNEG_WIRE)


def test_optneg_again_before_our_reply() -> None:
    conn = MilterConnection()
    feed(conn, OPTNEG_WIRE)
    refused(conn, OPTNEG_WIRE)


def test_next_command_before_our_reply() -> None:
    conn = at("connect")
    refused(conn, STEPS["helo"])


def test_macro_may_arrive_while_a_reply_is_pending() -> None:
    conn = at("connect")
    assert feed(conn, pkt(b"D", b"H" + z(b"{tls_version}", b"TLSv1.3")))
    assert conn.awaiting_reply


def test_nothing_after_quit() -> None:
    conn = at("connect")
    conn.send(Continue())
    feed(conn, pkt(b"Q"))
    assert conn.phase is Phase.CLOSED
    refused(conn, CONNECT_WIRE)


# --- sending rules -------------------------------------------------------------------------


@pytest.mark.parametrize("action", ACTIONS, ids=lambda a: type(a).__name__)
@pytest.mark.parametrize("stage", ["connect", "helo", "mail", "rcpt", "data", "header", "body"])
def test_actions_only_at_end_of_message(stage: str, action: Response) -> None:
    with pytest.raises(LocalProtocolError):
        at(stage).send(action)


@pytest.mark.parametrize("action", ACTIONS, ids=lambda a: type(a).__name__)
def test_actions_at_end_of_message_then_not_after_the_final_reply(action: Response) -> None:
    conn = at("eom")
    assert conn.send(action)
    conn.send(Continue())
    with pytest.raises(LocalProtocolError):
        conn.send(action)


@pytest.mark.parametrize("action", ACTIONS, ids=lambda a: type(a).__name__)
def test_actions_only_if_negotiated(action: Response) -> None:
    with pytest.raises(LocalProtocolError, match="not negotiated"):
        at("eom", Policy(actions=Action.NONE)).send(action)


def test_actions_the_mta_did_not_offer_are_refused() -> None:
    offer = OptNeg(6, Action.ADDHDRS, ProtocolFlag(0x1FFFFF))
    conn = at("eom", POLICY, offer)
    conn.send(AddHeader("X", "v"))
    conn.send(InsertHeader(0, "X", "v"))
    for action in ACTIONS[2:]:
        with pytest.raises(LocalProtocolError):
            conn.send(action)


def test_no_action_before_negotiation() -> None:
    conn = MilterConnection()
    feed(conn, OPTNEG_WIRE)
    for response in [*ACTIONS, Progress(), Continue(), Skip()]:
        with pytest.raises(LocalProtocolError):
            conn.send(response)


def test_skip_only_to_body_and_only_when_negotiated() -> None:
    skip_policy = Policy(protocol=ProtocolFlag.HDR_LEADSPC | ProtocolFlag.SKIP)
    conn = at("body", skip_policy)
    assert conn.send(Skip()) == b"\x00\x00\x00\x01s"
    assert not conn.awaiting_reply
    assert conn.phase is Phase.MESSAGE
    feed(conn, STEPS["eom"])
    with pytest.raises(LocalProtocolError):
        conn.send(Skip())
    for stage in ("header", "eoh", "mail"):
        with pytest.raises(LocalProtocolError):
            at(stage, skip_policy).send(Skip())
    with pytest.raises(LocalProtocolError):
        at("body").send(Skip())  # SKIP not negotiated


@pytest.mark.parametrize("stage", ["connect", "helo"])
def test_discard_not_at_connect_or_helo(stage: str) -> None:
    with pytest.raises(LocalProtocolError):
        at(stage).send(Discard())


@pytest.mark.parametrize("stage", ["mail", "rcpt", "data", "header", "eoh", "body", "eom"])
def test_discard_at_message_stages(stage: str) -> None:
    conn = at(stage)
    assert conn.send(Discard()) == b"\x00\x00\x00\x01d"
    if stage != "rcpt":  # (at RCPT the phase is left open: see the report's design notes)
        assert conn.phase is Phase.SESSION


@pytest.mark.parametrize("stage", ["connect", "helo", "mail", "rcpt", "header", "body"])
def test_progress_only_at_end_of_message(stage: str) -> None:
    with pytest.raises(LocalProtocolError):
        at(stage).send(Progress())


def test_progress_keeps_end_of_message_waiting() -> None:
    conn = at("eom")
    assert conn.send(Progress()) == b"\x00\x00\x00\x01p"
    conn.send(Progress())
    assert conn.awaiting_reply
    conn.send(Continue())
    assert not conn.awaiting_reply


@pytest.mark.parametrize("final", FINALS, ids=lambda f: type(f).__name__)
def test_final_reply_needs_a_pending_command(final: Response) -> None:
    conn = at("connect")
    conn.send(Continue())
    with pytest.raises(LocalProtocolError):
        conn.send(final)


def test_no_reply_for_headers_with_nr_hdr() -> None:
    conn = at("header", Policy(protocol=ProtocolFlag.NR_HDR))
    assert not conn.awaiting_reply
    with pytest.raises(LocalProtocolError):
        conn.send(Continue())
    feed(conn, STEPS["header"], STEPS["eoh"])
    assert conn.awaiting_reply


def header_value(wire: bytes, skip: int = 0) -> bytes:
    ((_, payload),) = packets(wire)
    return payload[skip:].split(b"\0")[1]


def test_leading_space_added_when_hdr_leadspc_negotiated() -> None:
    conn = at("eom")
    assert conn.header_leading_space
    assert header_value(conn.send(AddHeader("X", "v"))) == b" v"
    assert header_value(conn.send(AddHeader("X", " v"))) == b" v"
    assert header_value(conn.send(AddHeader("X", "\tv"))) == b"\tv"
    assert header_value(conn.send(InsertHeader(3, "X", "v")), 4) == b" v"
    assert header_value(conn.send(ChangeHeader(1, "X", "v")), 4) == b" v"
    assert header_value(conn.send(ChangeHeader(1, "X", "")), 4) == b""  # still a delete


def test_no_leading_space_without_hdr_leadspc() -> None:
    conn = at("eom", offer=OptNeg(6, Action(0x1FF), ProtocolFlag.NONE))
    assert not conn.header_leading_space
    assert header_value(conn.send(AddHeader("X", "v"))) == b"v"
    assert header_value(conn.send(ChangeHeader(1, "X", "v")), 4) == b"v"


@pytest.mark.parametrize(
    "reply",
    [
        OptNegReply(7, Action.NONE, ProtocolFlag.NONE),
        OptNegReply(1, Action.NONE, ProtocolFlag.NONE),
        OptNegReply(6, Action.ADDHDRS | Action.CHGBODY, ProtocolFlag.NONE),
        OptNegReply(6, Action.ADDHDRS, ProtocolFlag.SKIP),
        OptNegReply(6, Action.ADDHDRS, ProtocolFlag.NONE, ((MacroStage.EOM, "i"),)),
    ],
    ids=["newer-version", "version-1", "actions", "protocol", "macros-without-setsymlist"],
)
def test_negotiation_reply_never_asks_for_more_than_offered(reply: OptNegReply) -> None:
    offer = OptNeg(6, Action.ADDHDRS | Action.SETSYMLIST, ProtocolFlag.HDR_LEADSPC)
    conn = MilterConnection()
    feed(conn, pkt(b"O", struct.pack(">III", offer.version, offer.actions, offer.protocol)))
    with pytest.raises(LocalProtocolError, match="more than offered"):
        conn.send(reply)
    assert conn.send(OptNegReply(6, offer.actions, offer.protocol, ((MacroStage.EOM, "i"),)))


def test_macro_lists_refused_below_version_6() -> None:
    conn = MilterConnection()
    feed(conn, pkt(b"O", struct.pack(">III", 2, 0x1FF, 0x7F)))
    with pytest.raises(LocalProtocolError):
        conn.send(OptNegReply(2, Action.SETSYMLIST, ProtocolFlag.NONE, ((MacroStage.EOM, "i"),)))


def test_new_body_pieces_go_out_in_one_run() -> None:
    conn = at("eom")
    conn.send(AddHeader("X", "before"))
    conn.send(ReplaceBody(b"part 1\r\n"))
    conn.send(ReplaceBody(b"part 2\r\n"))
    conn.send(AddHeader("X", "after"))
    # Postfix: "body replacement requests can't currently be mixed with other requests"
    with pytest.raises(LocalProtocolError):
        conn.send(ReplaceBody(b"part 3\r\n"))
    conn.send(Continue())
    for stage in ("mail", "rcpt", "eoh", "eom"):  # a new message starts afresh
        feed(conn, STEPS[stage])
        if stage != "eom":
            conn.send(Continue())
    conn.send(ReplaceBody(b"again\r\n"))


def test_progress_also_ends_the_new_body() -> None:
    conn = at("eom")
    conn.send(ReplaceBody(b"part 1\r\n"))
    conn.send(Progress())
    with pytest.raises(LocalProtocolError):
        conn.send(ReplaceBody(b"part 2\r\n"))
