"""What we ask for in the OPTNEG reply: actions, protocol bits and macro lists.

Rules:
1. Actions are what the options allow (-A -R -H -G -B) intersected with what the MTA offers;
   asking for more makes Postfix drop the filter.
2. No stage is skipped and every event is answered. Over TCP, Postfix still sends the macro packet
   of a skipped or no-reply stage, and its next small write then waits for our delayed ACK (Nagle),
   about 40 ms a message. Answering everything keeps the exchange strictly request/response.
3. HDR_LEADSPC when offered: header values then arrive exactly as written after the colon, so the
   spooled message is byte-faithful (DKIM signatures survive a filter that reads ``%f``).
4. Macro lists (SETSYMLIST, version 6 only) replace the MTA's defaults, so they include the
   defaults we rely on plus the client facts Postfix does not send unless asked.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass

from milter_agent.errors import ProtocolError
from milter_agent.protocol.commands import OptNeg
from milter_agent.protocol.constants import (
    MIN_PROTOCOL_VERSION,
    PROTOCOL_VERSION,
    Action,
    MacroStage,
    ProtocolFlag,
)
from milter_agent.protocol.responses import OptNegReply

DEFAULT_MACROS: dict[MacroStage, tuple[str, ...]] = {
    MacroStage.CONNECT: (
        "j",
        "_",
        "{daemon_name}",
        "{daemon_addr}",
        "{client_addr}",
        "{client_name}",
        "{client_port}",
        "{client_ptr}",
        "{if_name}",
        "{if_addr}",
        "v",
    ),
    MacroStage.HELO: (
        "{tls_version}",
        "{cipher}",
        "{cipher_bits}",
        "{cert_subject}",
        "{cert_issuer}",
    ),
    MacroStage.ENVFROM: (
        "i",
        "{auth_type}",
        "{auth_authen}",
        "{auth_author}",
        "{mail_addr}",
        "{mail_host}",
        "{mail_mailer}",
    ),
    MacroStage.ENVRCPT: ("i", "{rcpt_addr}", "{rcpt_host}", "{rcpt_mailer}"),
    MacroStage.DATA: ("i",),
    MacroStage.EOH: ("i",),
    MacroStage.EOM: ("i",),
}

WANTED_PROTOCOL = ProtocolFlag.HDR_LEADSPC


@dataclass(frozen=True, slots=True)
class Policy:
    """What milter-agent wants from a negotiation, built from the options."""

    actions: Action = Action.NONE
    protocol: ProtocolFlag = WANTED_PROTOCOL
    extra_macros: frozenset[str] = frozenset()

    @classmethod
    def from_permissions(
        cls,
        *,
        add_recipient: bool,
        remove_recipient: bool,
        add_header: bool,
        change_header: bool,
        change_body: bool,
        extra_macros: Iterable[str] = (),
    ) -> Policy:
        wanted = {
            Action.ADDRCPT: add_recipient,
            Action.DELRCPT: remove_recipient,
            Action.ADDHDRS: add_header,
            Action.CHGHDRS: change_header,
            Action.CHGBODY: change_body,
        }
        actions = Action.NONE
        for bit, on in wanted.items():
            if on:
                actions |= bit
        return cls(actions=actions, extra_macros=frozenset(extra_macros))

    def macro_lists(self) -> tuple[tuple[MacroStage, str], ...]:
        lists = {stage: list(names) for stage, names in DEFAULT_MACROS.items()}
        for name in sorted(self.extra_macros):
            if name not in lists[MacroStage.EOM]:
                lists[MacroStage.EOM].append(name)
        return tuple((stage, " ".join(names)) for stage, names in sorted(lists.items()))


@functools.lru_cache(maxsize=64)
def negotiate(offer: OptNeg, policy: Policy) -> OptNegReply:
    """Our reply to the MTA's offer: never more than offered, never a newer version.
    (Cached: an MTA makes the same offer on every connection, and both sides are frozen.)"""
    if offer.version < MIN_PROTOCOL_VERSION:
        raise ProtocolError(f"OPTNEG: MTA speaks milter protocol {offer.version}, need >= 2")
    version = min(PROTOCOL_VERSION, offer.version)
    actions = policy.actions & offer.actions
    protocol = policy.protocol & offer.protocol
    macros: tuple[tuple[MacroStage, str], ...] = ()
    if version >= PROTOCOL_VERSION and offer.actions & Action.SETSYMLIST:
        actions |= Action.SETSYMLIST
        macros = policy.macro_lists()
    return OptNegReply(version, actions, protocol, macros)
