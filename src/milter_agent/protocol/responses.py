"""Filter -> MTA responses and modification actions, and their encoding.

Reply texts are made safe here, once, for every caller: CR, LF and NUL are removed, lines are
bounded (libmilter: at most 32 lines of 980 bytes; we count the whole line as sent, code and
``%%`` included), ``%`` is doubled (libmilter and Postfix treat it as a format character) and
codes are checked the way Postfix's milter8.c does (first digit 4 or 5, and a digit right after
the code must repeat that class digit), so the MTA never sees a malformed reply.

Folded header values are sent with bare LF line breaks: libmilter's contract is that the
"linefeed must not be preceded by a carriage return; the MTA adds this automatically".
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass

from milter_agent.protocol import constants as c
from milter_agent.protocol.commands import encode_text
from milter_agent.protocol.framing import frame

_U32 = struct.Struct(">I")
MAX_REPLY_LINES = 32
MAX_REPLY_LINE = 980
_CODE = re.compile(r"[45][0-9][0-9]")
_ENHANCED = re.compile(r"[45]\.[0-9]{1,3}\.[0-9]{1,3}")
_UNSAFE = re.compile(r"[\x00\r\n]")


# --- final replies -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Continue:
    pass


@dataclass(frozen=True, slots=True)
class Accept:
    pass


@dataclass(frozen=True, slots=True)
class Reject:
    pass


@dataclass(frozen=True, slots=True)
class Tempfail:
    pass


@dataclass(frozen=True, slots=True)
class Discard:
    pass


@dataclass(frozen=True, slots=True)
class ReplyCode:
    """SMFIR_REPLYCODE: reject (5xx) or tempfail (4xx) with our own text, one or more lines.

    ``code`` is the 3-digit SMTP code, ``enhanced`` the optional RFC 3463 code (``5.7.1``), and
    ``lines`` the text, one element per line of a multi-line reply.
    """

    code: str
    enhanced: str | None
    lines: tuple[str, ...]

    def __post_init__(self) -> None:
        if not _CODE.fullmatch(self.code):
            raise ValueError(f"reply code must be 4xx or 5xx, not {self.code!r}")
        if self.enhanced is not None and not (
            _ENHANCED.fullmatch(self.enhanced) and self.enhanced[0] == self.code[0]
        ):
            raise ValueError(f"enhanced code {self.enhanced!r} does not suit {self.code}")

    def text(self) -> str:
        """The reply as one string, lines joined by CRLF, ready for the MTA.

        Every line is at most :data:`MAX_REPLY_LINE` bytes as sent. Without an enhanced code, a
        line whose text starts with a digit other than the class digit gets ``X.0.0``: Postfix
        calls ``550 4 apples`` a malformed reply and disables the filter.
        """
        lines = [line for line in map(sanitize_line, self.lines) if line][:MAX_REPLY_LINES]
        lines = lines or [_DEFAULT_TEXT[self.code[0]]]
        enhanced = self.enhanced
        if enhanced is None and any(ln[0] in _DIGITS and ln[0] != self.code[0] for ln in lines):
            enhanced = f"{self.code[0]}.0.0"
        out = []
        for i, line in enumerate(lines):
            sep = " " if i == len(lines) - 1 else "-"
            prefix = f"{self.code}{sep}" + (f"{enhanced} " if enhanced else "")
            out.append(prefix + _escape_percent(line, MAX_REPLY_LINE - len(prefix)))
        return "\r\n".join(out)


_DEFAULT_TEXT = {"4": "Try again later", "5": "Message rejected"}
_DIGITS = "0123456789"


def _escape_percent(text: str, limit: int) -> str:
    """``text`` with ``%`` doubled, cut to at most ``limit`` bytes without splitting a ``%%``."""
    escaped = text.replace("%", "%%")
    if len(encode_text(escaped)) <= limit:
        return escaped
    out: list[str] = []
    size = 0
    for ch in text:
        piece = "%%" if ch == "%" else ch
        size += len(encode_text(piece))
        if size > limit:
            break
        out.append(piece)
    return "".join(out)


def sanitize_line(text: str) -> str:
    """One reply or header line, safe to send: no CR/LF/NUL, other controls blanked, bounded."""
    text = _UNSAFE.sub(" ", text)
    text = "".join(ch if ch >= " " or ch == "\t" else " " for ch in text)
    return text[:MAX_REPLY_LINE].strip()


@dataclass(frozen=True, slots=True)
class Skip:
    """SMFIR_SKIP: no more body chunks, please (only as a reply to BODY, if SKIP was negotiated)."""


@dataclass(frozen=True, slots=True)
class Progress:
    """SMFIR_PROGRESS: keep-alive while we work on end-of-message; not a reply."""


@dataclass(frozen=True, slots=True)
class Shutdown:
    """SMFIR_SHUTDOWN: 421 and close the SMTP session."""


# --- modification actions (only at end of message) ------------------------------------------


@dataclass(frozen=True, slots=True)
class AddHeader:
    name: str
    value: str


@dataclass(frozen=True, slots=True)
class InsertHeader:
    """Insert at ``index`` (0 = top of the headers)."""

    index: int
    name: str
    value: str


@dataclass(frozen=True, slots=True)
class ChangeHeader:
    """Change the ``index``-th (1-based) header called ``name``; an empty value deletes it."""

    index: int
    name: str
    value: str


@dataclass(frozen=True, slots=True)
class ReplaceBody:
    """A piece of the new body; several in a row concatenate. Long pieces are split on encoding."""

    chunk: bytes


@dataclass(frozen=True, slots=True)
class AddRecipient:
    recipient: str


@dataclass(frozen=True, slots=True)
class AddRecipientPar:
    recipient: str
    args: str


@dataclass(frozen=True, slots=True)
class DeleteRecipient:
    recipient: str


@dataclass(frozen=True, slots=True)
class ChangeFrom:
    sender: str
    args: str = ""


@dataclass(frozen=True, slots=True)
class Quarantine:
    reason: str


@dataclass(frozen=True, slots=True)
class OptNegReply:
    """Our answer to OPTNEG; ``macros`` maps a stage to the space-separated macro names we want."""

    version: int
    actions: c.Action
    protocol: c.ProtocolFlag
    macros: tuple[tuple[c.MacroStage, str], ...] = ()


FinalReply = Continue | Accept | Reject | Tempfail | Discard | ReplyCode | Shutdown
ModificationAction = (
    AddHeader
    | InsertHeader
    | ChangeHeader
    | ReplaceBody
    | AddRecipient
    | AddRecipientPar
    | DeleteRecipient
    | ChangeFrom
    | Quarantine
)
Response = FinalReply | ModificationAction | Skip | Progress | OptNegReply

#: The action bit each modification needs to have been negotiated.
REQUIRED_ACTION: dict[type, c.Action] = {
    AddHeader: c.Action.ADDHDRS,
    InsertHeader: c.Action.ADDHDRS,
    ChangeHeader: c.Action.CHGHDRS,
    ReplaceBody: c.Action.CHGBODY,
    AddRecipient: c.Action.ADDRCPT,
    AddRecipientPar: c.Action.ADDRCPT_PAR,
    DeleteRecipient: c.Action.DELRCPT,
    ChangeFrom: c.Action.CHGFROM,
    Quarantine: c.Action.QUARANTINE,
}

_SIMPLE: dict[type, bytes] = {
    Continue: c.REPLY_CONTINUE,
    Accept: c.REPLY_ACCEPT,
    Reject: c.REPLY_REJECT,
    Tempfail: c.REPLY_TEMPFAIL,
    Discard: c.REPLY_DISCARD,
    Skip: c.REPLY_SKIP,
    Progress: c.REPLY_PROGRESS,
    Shutdown: c.REPLY_SHUTDOWN,
}


def _z(*texts: str) -> bytes:
    """NUL-terminated strings; a NUL inside would break framing, so it cannot get through."""
    out = bytearray()
    for text in texts:
        raw = encode_text(text)
        if b"\0" in raw:
            raise ValueError("NUL byte inside a protocol string")
        out += raw + b"\0"
    return bytes(out)


_HEADER_NAME = re.compile(r"[!-9;-~]+")


def valid_header_name(name: str) -> bool:
    """RFC 5322 field name: printable ASCII except colon, no spaces."""
    return bool(_HEADER_NAME.fullmatch(name))


def _name(name: str) -> str:
    if not valid_header_name(name):
        raise ValueError(f"invalid header name {name!r}")
    return name


def _header_value(value: str) -> str:
    """A header value we send: line breaks only as folding (LF + whitespace, the MTA adds the
    CR), no empty continuation lines (they would end the header block), no NUL."""
    lines = re.split(r"\r\n|\r|\n", value.replace("\0", ""))
    folded = [lines[0]] + [ln if ln[:1] in (" ", "\t") else " " + ln for ln in lines[1:] if ln]
    return "\n".join(folded)


def encode_response(response: Response) -> bytes:
    """Encode one response as one or more packets."""
    simple = _SIMPLE.get(type(response))
    if simple is not None:
        return frame(simple)
    match response:
        case ReplyCode():
            return frame(c.REPLY_REPLYCODE, _z(response.text()))
        case AddHeader(name, value):
            return frame(c.REPLY_ADDHEADER, _z(_name(name), _header_value(value)))
        case InsertHeader(index, name, value):
            return frame(
                c.REPLY_INSHEADER, _U32.pack(index) + _z(_name(name), _header_value(value))
            )
        case ChangeHeader(index, name, value):
            return frame(
                c.REPLY_CHGHEADER, _U32.pack(index) + _z(_name(name), _header_value(value))
            )
        case ReplaceBody(chunk):
            step = c.MAX_SEND_DATA
            return b"".join(
                frame(c.REPLY_REPLBODY, chunk[i : i + step])
                for i in range(0, max(len(chunk), 1), step)
            )
        case AddRecipient(rcpt):
            return frame(c.REPLY_ADDRCPT, _z(rcpt))
        case AddRecipientPar(rcpt, args):
            return frame(c.REPLY_ADDRCPT_PAR, _z(rcpt, args))
        case DeleteRecipient(rcpt):
            return frame(c.REPLY_DELRCPT, _z(rcpt))
        case ChangeFrom(sender, args):
            return frame(c.REPLY_CHGFROM, _z(sender, args) if args else _z(sender))
        case Quarantine(reason):
            return frame(c.REPLY_QUARANTINE, _z(sanitize_line(reason)))
        case OptNegReply(version, actions, protocol, macros):
            payload = _U32.pack(version) + _U32.pack(actions) + _U32.pack(protocol)
            payload += b"".join(_U32.pack(stage) + _z(names) for stage, names in macros)
            return frame(c.REPLY_OPTNEG, payload)
    raise TypeError(f"not a response: {response!r}")
