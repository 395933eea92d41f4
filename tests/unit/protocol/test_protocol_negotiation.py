"""negotiate(): what we ask for in the OPTNEG reply."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from milter_wire import ALL_ACTIONS, ALL_PROTOCOL, POSTFIX_OFFER, pkt

from milter_agent.errors import ProtocolError
from milter_agent.protocol import (
    Action,
    MacroStage,
    MilterConnection,
    OptNeg,
    Policy,
    ProtocolFlag,
    encode_response,
    negotiate,
)

FULL = Policy(actions=ALL_ACTIONS & ~Action.SETSYMLIST)


def test_postfix_offer() -> None:
    reply = negotiate(POSTFIX_OFFER, Policy(actions=Action.ADDHDRS | Action.CHGBODY))
    assert reply.version == 6
    assert reply.actions == Action.ADDHDRS | Action.CHGBODY | Action.SETSYMLIST
    assert reply.protocol == ProtocolFlag.HDR_LEADSPC  # every event, every reply
    stages = [stage for stage, _ in reply.macros]
    assert stages == sorted(MacroStage)
    connect = dict(reply.macros)[MacroStage.CONNECT].split()
    assert {"j", "{daemon_name}", "{client_addr}", "{client_name}", "{client_port}"} <= set(connect)


#: Every list we ask for, per stage. SETSYMLIST replaces the MTA's own lists, so each must hold
#: the defaults we rely on as well as the client facts Postfix sends only when asked.
REQUESTED = {
    MacroStage.CONNECT: "j _ {daemon_name} {daemon_addr} {client_addr} {client_name} "
    "{client_port} {client_ptr} {if_name} {if_addr} v",
    MacroStage.HELO: "{tls_version} {cipher} {cipher_bits} {cert_subject} {cert_issuer}",
    MacroStage.ENVFROM: "i {auth_type} {auth_authen} {auth_author} {mail_addr} {mail_host} "
    "{mail_mailer}",
    MacroStage.ENVRCPT: "i {rcpt_addr} {rcpt_host} {rcpt_mailer}",
    MacroStage.DATA: "i",
    MacroStage.EOH: "i",
    MacroStage.EOM: "i",
}
#: Postfix 3.7's defaults (postconf -d milter_*_macros): what it sends when not asked.
POSTFIX_DEFAULTS = {
    MacroStage.CONNECT: "j {daemon_name} {daemon_addr} v _",
    MacroStage.HELO: "{tls_version} {cipher} {cipher_bits} {cert_subject} {cert_issuer}",
    MacroStage.ENVFROM: "i {auth_type} {auth_authen} {auth_author} {mail_addr} {mail_host} "
    "{mail_mailer}",
    MacroStage.ENVRCPT: "i {rcpt_addr} {rcpt_host} {rcpt_mailer}",
    MacroStage.DATA: "i",
    MacroStage.EOH: "i",
    MacroStage.EOM: "i",
}


def test_the_macro_lists_requested_at_each_stage() -> None:
    reply = negotiate(POSTFIX_OFFER, Policy())
    assert dict(reply.macros) == REQUESTED
    assert [stage for stage, _ in reply.macros] == sorted(MacroStage)  # each stage once


@pytest.mark.parametrize("stage", sorted(MacroStage))
def test_no_macro_the_mta_sends_by_default_is_lost_by_asking(stage: MacroStage) -> None:
    asked = set(dict(negotiate(POSTFIX_OFFER, Policy()).macros)[stage].split())
    assert set(POSTFIX_DEFAULTS[stage].split()) <= asked


def test_the_macro_lists_on_the_wire() -> None:
    """After version, actions and protocol: per list a 32-bit stage number and the names,
    NUL-terminated, as libmilter's SMFIR_SETSYMLIST reading of the negotiation reply wants."""
    wire = encode_response(negotiate(POSTFIX_OFFER, Policy()))
    payload = wire[5 + 12 :]
    expected = b"".join(
        stage.to_bytes(4, "big") + names.encode() + b"\0"
        for stage, names in sorted(REQUESTED.items())
    )
    assert payload == expected


@pytest.mark.parametrize(
    ("offered", "expected"), [(2, 2), (3, 3), (4, 4), (5, 5), (6, 6), (7, 6), (2**32 - 1, 6)]
)
def test_version_is_min_of_6_and_offer(offered: int, expected: int) -> None:
    assert negotiate(OptNeg(offered, ALL_ACTIONS, ALL_PROTOCOL), FULL).version == expected


@pytest.mark.parametrize("offered", [0, 1])
def test_version_below_2_is_refused(offered: int) -> None:
    with pytest.raises(ProtocolError):
        negotiate(OptNeg(offered, ALL_ACTIONS, ALL_PROTOCOL), FULL)


def test_never_more_actions_or_protocol_bits_than_offered() -> None:
    offer = OptNeg(6, Action.ADDHDRS | Action.DELRCPT, ProtocolFlag.NOHELO)
    reply = negotiate(offer, FULL)
    assert reply.actions == Action.ADDHDRS | Action.DELRCPT
    assert reply.protocol == ProtocolFlag.NONE
    assert reply.macros == ()


def test_macro_lists_need_setsymlist_offered() -> None:
    reply = negotiate(OptNeg(6, ALL_ACTIONS & ~Action.SETSYMLIST, ALL_PROTOCOL), FULL)
    assert not reply.actions & Action.SETSYMLIST
    assert reply.macros == ()


@pytest.mark.parametrize("version", [2, 3, 4, 5])
def test_macro_lists_need_version_6(version: int) -> None:
    reply = negotiate(OptNeg(version, ALL_ACTIONS, ALL_PROTOCOL), FULL)
    assert not reply.actions & Action.SETSYMLIST
    assert reply.macros == ()


def test_extra_macros_land_in_the_eom_list() -> None:
    policy = Policy(extra_macros=frozenset({"{rcpt_addr}", "{auth_authen}", "i"}))
    lists = dict(negotiate(POSTFIX_OFFER, policy).macros)
    assert lists[MacroStage.EOM] == "i {auth_authen} {rcpt_addr}"
    default = dict(negotiate(POSTFIX_OFFER, Policy()).macros)
    assert lists[MacroStage.CONNECT] == default[MacroStage.CONNECT]


def test_from_permissions() -> None:
    policy = Policy.from_permissions(
        add_recipient=True,
        remove_recipient=False,
        add_header=True,
        change_header=False,
        change_body=True,
        extra_macros=["{x}"],
    )
    assert policy.actions == Action.ADDRCPT | Action.ADDHDRS | Action.CHGBODY
    assert policy.extra_macros == frozenset({"{x}"})


def test_reply_with_macro_lists_fits_a_1k_buffer() -> None:
    # miltertest (and other clients) read the negotiation reply into 1024 bytes.
    assert len(encode_response(negotiate(POSTFIX_OFFER, FULL))) < 1024


@settings(max_examples=300, deadline=None)
@given(
    version=st.integers(2, 2**32 - 1),
    actions=st.integers(0, 2**32 - 1),
    protocol=st.integers(0, 2**32 - 1),
    wanted=st.integers(0, 0x1FF),
    wanted_protocol=st.integers(0, 0x3FFFFFFF),
)
def test_any_offer_gives_a_reply_within_it(
    version: int, actions: int, protocol: int, wanted: int, wanted_protocol: int
) -> None:
    offer = OptNeg(version, Action(actions), ProtocolFlag(protocol))
    reply = negotiate(offer, Policy(Action(wanted), ProtocolFlag(wanted_protocol)))
    assert 2 <= reply.version <= min(6, version)
    assert int(reply.actions) & ~actions == 0
    assert int(reply.protocol) & ~protocol == 0
    if reply.macros:
        assert reply.version == 6 and reply.actions & Action.SETSYMLIST
    conn = MilterConnection()  # and the connection accepts it
    conn.receive_data(
        pkt(b"O", b"".join(n.to_bytes(4, "big") for n in (version, actions, protocol)))
    )
    assert conn.next_event() == offer
    assert conn.send(reply) == encode_response(reply)
