"""The sans-IO milter connection: bytes in, commands out; responses in, bytes out.

No sockets, no asyncio: the caller feeds what it read with :meth:`receive_data`, pulls commands
with :meth:`next_event` and turns each response into bytes with :meth:`send`.

Rules (enforced here so no caller can break them):
1. OPTNEG comes first and is answered with :class:`OptNegReply`; the reply fixes the actions and
   protocol bits for the rest of the connection (QUIT_NC keeps them). The reply may not ask for
   a newer version or for actions or protocol bits the MTA did not offer (Postfix drops such a
   filter), and carries macro lists only with version 6 and SETSYMLIST.
2. Phases: NEGOTIATE -> READY (expect CONNECT) -> SESSION (after CONNECT) -> MESSAGE (after MAIL).
   RCPT, DATA, HEADER, EOH, BODY and end-of-message need an open message. MAIL and HELO may come
   again at any time after CONNECT (HELO again after STARTTLS; MAIL after a rejected message).
   ABORT is accepted anywhere after negotiation, and outside a message it is a no-op.
   QUIT closes; QUIT_NC returns to READY for a new CONNECT without a new negotiation.
3. A command that needs a reply (all but MACRO, ABORT, QUIT, QUIT_NC and NR_*-negotiated ones)
   must be answered before the next such command arrives; ABORT/QUIT/QUIT_NC cancel the wait.
4. Modification actions and PROGRESS only while end-of-message awaits its reply, and only the
   actions negotiated; SKIP only as a reply to BODY when negotiated; DISCARD not at CONNECT/HELO.
   The pieces of a new body (REPLBODY) go out one after another: Postfix ends the replacement at
   the first other packet (PROGRESS included) and treats a later REPLBODY as a filter error.
5. After a ProtocolError the connection is poisoned: every later call raises it again.
"""

from __future__ import annotations

from dataclasses import replace
from enum import Enum
from typing import Final

from milter_agent.errors import MilterAgentError, ProtocolError
from milter_agent.protocol import commands as cmd
from milter_agent.protocol import responses as rsp
from milter_agent.protocol.constants import (
    MAX_RECEIVE_PACKET,
    MIN_PROTOCOL_VERSION,
    PROTOCOL_VERSION,
    Action,
    ProtocolFlag,
)
from milter_agent.protocol.framing import FrameBuffer


class LocalProtocolError(MilterAgentError):
    """We tried to send something the protocol does not allow now (a bug on our side)."""


class Phase(Enum):
    NEGOTIATE = "negotiate"
    READY = "ready"
    SESSION = "session"
    MESSAGE = "message"
    CLOSED = "closed"


class Sentinel:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


#: ``next_event`` returns this when it needs more bytes.
NEED_DATA: Final = Sentinel("NEED_DATA")
#: ``next_event`` returns this once the peer closed the stream cleanly between packets.
CLOSED: Final = Sentinel("CLOSED")

_AFTER_CONNECT = frozenset({Phase.SESSION, Phase.MESSAGE})
_ANY_NEGOTIATED = frozenset({Phase.READY, Phase.SESSION, Phase.MESSAGE})

#: Phases in which each command may arrive, and the phase it leads to (None: unchanged).
TRANSITIONS: dict[type, tuple[frozenset[Phase], Phase | None]] = {
    cmd.OptNeg: (frozenset({Phase.NEGOTIATE}), None),
    cmd.Macro: (_ANY_NEGOTIATED, None),
    cmd.Connect: (frozenset({Phase.READY}), Phase.SESSION),
    cmd.Helo: (_AFTER_CONNECT, Phase.SESSION),
    cmd.Mail: (_AFTER_CONNECT, Phase.MESSAGE),
    cmd.Rcpt: (frozenset({Phase.MESSAGE}), None),
    cmd.Data: (frozenset({Phase.MESSAGE}), None),
    cmd.Header: (frozenset({Phase.MESSAGE}), None),
    cmd.EndOfHeaders: (frozenset({Phase.MESSAGE}), None),
    cmd.Body: (frozenset({Phase.MESSAGE}), None),
    cmd.EndOfMessage: (frozenset({Phase.MESSAGE}), None),
    cmd.Unknown: (_ANY_NEGOTIATED, None),
    cmd.Abort: (_ANY_NEGOTIATED, None),
    cmd.Quit: (frozenset(Phase) - {Phase.CLOSED}, Phase.CLOSED),
    cmd.QuitNoClose: (_ANY_NEGOTIATED, Phase.READY),
}

#: Commands answered by a final reply, and the NR_* bit that waives the reply.
NEEDS_REPLY: dict[type, ProtocolFlag] = {
    cmd.Connect: ProtocolFlag.NR_CONN,
    cmd.Helo: ProtocolFlag.NR_HELO,
    cmd.Mail: ProtocolFlag.NR_MAIL,
    cmd.Rcpt: ProtocolFlag.NR_RCPT,
    cmd.Data: ProtocolFlag.NR_DATA,
    cmd.Header: ProtocolFlag.NR_HDR,
    cmd.EndOfHeaders: ProtocolFlag.NR_EOH,
    cmd.Body: ProtocolFlag.NR_BODY,
    cmd.EndOfMessage: ProtocolFlag.NONE,
    cmd.Unknown: ProtocolFlag.NR_UNKN,
}

#: Per phase: the commands allowed in it and the phase each leads to (TRANSITIONS turned
#: inside out, so that checking a command is one dict lookup keyed by its type).
_RULES: dict[Phase, dict[type, Phase | None]] = {
    phase: {kind: after for kind, (allowed, after) in TRANSITIONS.items() if phase in allowed}
    for phase in Phase
}
#: NEEDS_REPLY as plain ints: IntFlag arithmetic is slow, and this runs for every command.
_WAIVER = {kind: int(flag) for kind, flag in NEEDS_REPLY.items()}
_CANCELS_WAIT = (cmd.Abort, cmd.Quit, cmd.QuitNoClose)
_CONTINUE = rsp.encode_response(rsp.Continue())
_MESSAGE_LEVEL = (cmd.Mail, cmd.Data, cmd.Header, cmd.EndOfHeaders, cmd.Body, cmd.EndOfMessage)
_HEADER_ACTIONS = (rsp.AddHeader, rsp.InsertHeader, rsp.ChangeHeader)
_CONTINUABLE = frozenset(NEEDS_REPLY)
_LEADSPC = int(ProtocolFlag.HDR_LEADSPC)


class MilterConnection:
    """One MTA connection's protocol state (see the module docstring for its rules)."""

    def __init__(self, max_packet: int = MAX_RECEIVE_PACKET) -> None:
        self._frames = FrameBuffer(max_packet)
        self._eof = False
        self._error: ProtocolError | None = None
        self._phase = Phase.NEGOTIATE
        self._rules = _RULES[Phase.NEGOTIATE]
        self.negotiated: rsp.OptNegReply | None = None
        self._flag_bits = 0  # the negotiated protocol bits, as an int
        self.pending: type | None = None
        self._offer: cmd.OptNeg | None = None
        #: REPLBODY progress in the current end-of-message: 0 none yet, 1 sending, 2 finished.
        self._body_state = 0

    # --- receiving --------------------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Feed bytes read from the MTA; ``b""`` means the MTA closed its side."""
        if self._error is not None:
            raise self._error
        if data:
            self._frames.feed(data)
        else:
            self._eof = True

    def next_event(self) -> cmd.Command | Sentinel:
        """The next command, :data:`NEED_DATA`, or :data:`CLOSED`; raises ProtocolError."""
        if self._error is not None:
            raise self._error
        try:
            packet = self._frames.next_packet()
            if packet is None:
                if self._eof:
                    if len(self._frames):
                        raise ProtocolError("connection closed in the middle of a packet")
                    return CLOSED
                return NEED_DATA
            command = cmd.decode_command(*packet)
            self._advance(command)
        except ProtocolError as exc:
            self._error = exc
            raise
        return command

    @property
    def phase(self) -> Phase:
        return self._phase

    @phase.setter
    def phase(self, phase: Phase) -> None:
        self._phase = phase
        self._rules = _RULES[phase]

    def _advance(self, command: cmd.Command) -> None:
        kind = type(command)
        rules = self._rules
        if kind not in rules:
            raise ProtocolError(f"{kind.__name__} not allowed in phase {self._phase.value}")
        after = rules[kind]
        if self.pending is not None:
            if not isinstance(command, _CANCELS_WAIT) and kind is not cmd.Macro:
                raise ProtocolError(
                    f"{kind.__name__} arrived before our reply to {self.pending.__name__}"
                )
            if kind is not cmd.Macro:
                self.pending = None
        if kind is cmd.Abort and self._phase is Phase.MESSAGE:
            after = Phase.SESSION
        if isinstance(command, cmd.OptNeg):
            self._offer = command
        elif kind is cmd.EndOfMessage:
            self._body_state = 0
        if after is not None:
            self.phase = after
        waived = _WAIVER.get(kind)
        if kind is cmd.OptNeg or (waived is not None and not self._flag_bits & waived):
            self.pending = kind

    @property
    def _flags(self) -> ProtocolFlag:
        return self.negotiated.protocol if self.negotiated else ProtocolFlag.NONE

    @property
    def actions(self) -> Action:
        return self.negotiated.actions if self.negotiated else Action.NONE

    @property
    def header_leading_space(self) -> bool:
        """True when header values arrive with, and must be sent with, their leading space."""
        return bool(self._flag_bits & _LEADSPC)

    @property
    def awaiting_reply(self) -> bool:
        return self.pending is not None

    # --- sending ----------------------------------------------------------------------------

    def send(self, response: rsp.Response) -> bytes:
        """Check that ``response`` is allowed now and encode it."""
        if self._error is not None:
            raise self._error
        pending = self.pending
        if type(response) is rsp.Continue and pending in _CONTINUABLE:
            # the answer to nearly every command: checked and encoded in one step
            self.pending = None
            if pending is cmd.EndOfMessage:
                self.phase = Phase.SESSION
            return _CONTINUE
        if isinstance(response, rsp.OptNegReply):
            self._expect(pending is cmd.OptNeg, response)
            self._check_negotiation(response)
            self.negotiated = response
            self._flag_bits = int(response.protocol)
            self.phase = Phase.READY
            self.pending = None
        elif isinstance(response, rsp.Progress):
            self._expect(pending is cmd.EndOfMessage, response)
            self._track_body(response)
        elif type(response) in rsp.REQUIRED_ACTION:
            self._expect(pending is cmd.EndOfMessage, response)
            needed = rsp.REQUIRED_ACTION[type(response)]
            if not self.actions & needed:
                raise LocalProtocolError(f"{type(response).__name__}: {needed!r} not negotiated")
            self._track_body(response)
            response = self._with_leading_space(response)
        elif isinstance(response, rsp.Skip):
            self._expect(pending is cmd.Body and bool(self._flags & ProtocolFlag.SKIP), response)
            self.pending = None
        else:
            self._expect(pending is not None and pending is not cmd.OptNeg, response)
            if isinstance(response, rsp.Discard) and pending in (cmd.Connect, cmd.Helo):
                raise LocalProtocolError("DISCARD is not allowed at CONNECT or HELO")
            self.pending = None
            if (
                pending in _MESSAGE_LEVEL and not isinstance(response, rsp.Continue)
            ) or pending is cmd.EndOfMessage:
                self.phase = Phase.SESSION
        return rsp.encode_response(response)

    def _expect(self, ok: bool, response: rsp.Response) -> None:
        if not ok:
            waiting = self.pending.__name__ if self.pending else "nothing"
            raise LocalProtocolError(
                f"{type(response).__name__} not allowed while awaiting {waiting}"
            )

    def _check_negotiation(self, reply: rsp.OptNegReply) -> None:
        offer = self._offer
        if offer is None:  # cannot happen: OptNeg is pending
            raise LocalProtocolError("OptNegReply without an offer")
        newest = min(PROTOCOL_VERSION, offer.version)
        problem = ""
        if not MIN_PROTOCOL_VERSION <= reply.version <= newest:
            problem = f"version {reply.version}, the MTA offered {offer.version}"
        elif int(reply.actions) & ~int(offer.actions):
            problem = f"actions {int(reply.actions):#x} not within {int(offer.actions):#x}"
        elif int(reply.protocol) & ~int(offer.protocol):
            problem = f"protocol bits {int(reply.protocol):#x} not within {int(offer.protocol):#x}"
        elif reply.macros and (
            reply.version < PROTOCOL_VERSION or not reply.actions & Action.SETSYMLIST
        ):
            problem = "macro lists need version 6 and SETSYMLIST"
        if problem:
            raise LocalProtocolError(f"OptNegReply asks for more than offered: {problem}")

    def _track_body(self, response: rsp.Response) -> None:
        if isinstance(response, rsp.ReplaceBody):
            if self._body_state == 2:
                raise LocalProtocolError(
                    "ReplaceBody after another action: send the new body's pieces in one run"
                )
            self._body_state = 1
        elif self._body_state == 1:
            self._body_state = 2

    def _with_leading_space(self, response: rsp.Response) -> rsp.Response:
        if not isinstance(response, _HEADER_ACTIONS) or not self.header_leading_space:
            return response
        value = response.value
        if value and value[0] not in " \t":
            return replace(response, value=" " + value)
        return response
