"""MTA -> filter commands: one frozen dataclass per wire command and the table that decodes them.

Text fields are ``str`` decoded as UTF-8 with ``surrogateescape``: any 8-bit byte survives the
round trip (``encode_text(decode_text(b)) == b``), so headers, macros and addresses in any
charset pass through unharmed. Body chunks stay ``bytes``.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field

from milter_agent.errors import ProtocolError
from milter_agent.protocol import constants as c
from milter_agent.protocol.framing import frame

_U32 = struct.Struct(">I")
_OPTNEG = struct.Struct(">III")


def decode_text(raw: bytes) -> str:
    """Bytes from the wire to ``str`` without loss (see module docstring)."""
    return raw.decode("utf-8", "surrogateescape")


def encode_text(text: str) -> bytes:
    """The inverse of :func:`decode_text`."""
    return text.encode("utf-8", "surrogateescape")


def _strings(cmd: str, payload: bytes) -> list[str]:
    """Split a payload of NUL-terminated strings; the last one must be terminated too."""
    if not payload:
        return []
    if payload[-1] != 0:
        raise ProtocolError(f"{cmd}: string not NUL-terminated (truncated payload)")
    # one decode for all: NUL never occurs inside a UTF-8 sequence, so splitting after
    # decoding gives the same strings
    return decode_text(payload[:-1]).split("\0")


def _exactly(cmd: str, payload: bytes, count: int) -> list[str]:
    parts = _strings(cmd, payload)
    if len(parts) != count:
        raise ProtocolError(f"{cmd}: expected {count} string(s), got {len(parts)}")
    return parts


@dataclass(frozen=True, slots=True)
class OptNeg:
    """SMFIC_OPTNEG: the MTA's protocol version and the actions and protocol bits it offers."""

    version: int
    actions: c.Action
    protocol: c.ProtocolFlag


@dataclass(frozen=True, slots=True)
class Macro:
    """SMFIC_MACRO: macro values for the command with letter ``stage`` (may carry no pairs)."""

    stage: bytes
    macros: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Connect:
    """SMFIC_CONNECT: client host name, address family (U/L/4/6), port and address."""

    hostname: str
    family: str
    port: int = 0
    address: str = ""


@dataclass(frozen=True, slots=True)
class Helo:
    name: str


@dataclass(frozen=True, slots=True)
class Mail:
    """SMFIC_MAIL: the sender as given (usually in ``<>``) followed by ESMTP arguments."""

    sender: str
    args: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Rcpt:
    recipient: str
    args: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Data:
    pass


@dataclass(frozen=True, slots=True)
class Header:
    """SMFIC_HEADER: one header field.

    The value keeps its folding and, with HDR_LEADSPC, its leading space.
    """

    name: str
    value: str


@dataclass(frozen=True, slots=True)
class EndOfHeaders:
    pass


@dataclass(frozen=True, slots=True)
class Body:
    chunk: bytes


@dataclass(frozen=True, slots=True)
class EndOfMessage:
    """SMFIC_BODYEOB; libmilter treats a non-empty payload as a last body chunk, and so do we."""

    chunk: bytes = b""


@dataclass(frozen=True, slots=True)
class Unknown:
    line: str


@dataclass(frozen=True, slots=True)
class Abort:
    pass


@dataclass(frozen=True, slots=True)
class Quit:
    pass


@dataclass(frozen=True, slots=True)
class QuitNoClose:
    """SMFIC_QUIT_NC: the session ends but a new CONNECT follows on the same socket."""


Command = (
    OptNeg
    | Macro
    | Connect
    | Helo
    | Mail
    | Rcpt
    | Data
    | Header
    | EndOfHeaders
    | Body
    | EndOfMessage
    | Unknown
    | Abort
    | Quit
    | QuitNoClose
)


def _optneg(payload: bytes) -> OptNeg:
    if len(payload) < _OPTNEG.size:
        raise ProtocolError(f"OPTNEG: payload of {len(payload)} bytes, need 12")
    version, actions, protocol = _OPTNEG.unpack_from(payload)
    return OptNeg(version, c.Action(actions), c.ProtocolFlag(protocol))


def _macro(payload: bytes) -> Macro:
    if not payload:
        raise ProtocolError("MACRO: empty payload, no stage letter")
    parts = _strings("MACRO", payload[1:])
    if len(parts) % 2:
        raise ProtocolError("MACRO: odd number of strings (a name without a value)")
    return Macro(payload[:1], dict(zip(parts[::2], parts[1::2], strict=True)))


def _connect(payload: bytes) -> Connect:
    end = payload.find(b"\0")
    if end < 0 or end + 1 >= len(payload):
        raise ProtocolError("CONNECT: truncated before the address family")
    hostname = decode_text(payload[:end])
    family = chr(payload[end + 1])
    if family == "U":
        return Connect(hostname, family)
    if family not in "L46":
        raise ProtocolError(f"CONNECT: unknown address family {family!r}")
    rest = payload[end + 2 :]
    if len(rest) < 3:
        raise ProtocolError("CONNECT: truncated port or address")
    port = int.from_bytes(rest[:2], "big")
    (address,) = _exactly("CONNECT", rest[2:], 1)
    return Connect(hostname, family, port, address)


def _argv(cmd: str, payload: bytes) -> tuple[str, tuple[str, ...]]:
    parts = _strings(cmd, payload)
    if not parts:
        raise ProtocolError(f"{cmd}: no address")
    return parts[0], tuple(parts[1:])


def _mail(payload: bytes) -> Mail:
    return Mail(*_argv("MAIL", payload))


def _rcpt(payload: bytes) -> Rcpt:
    return Rcpt(*_argv("RCPT", payload))


def _header(payload: bytes) -> Header:
    name, value = _exactly("HEADER", payload, 2)
    return Header(name, value)


def _one(cmd: str, make: Callable[[str], Command]) -> Callable[[bytes], Command]:
    def decode(payload: bytes) -> Command:
        (text,) = _exactly(cmd, payload, 1)
        return make(text)

    return decode


# Commands without fields are immutable: one instance each serves every packet.
_DATA, _EOH, _ABORT, _QUIT, _QUIT_NC = Data(), EndOfHeaders(), Abort(), Quit(), QuitNoClose()

#: How each command letter is decoded; commands without payload ignore any bytes they carry.
DECODERS: dict[bytes, Callable[[bytes], Command]] = {
    c.CMD_OPTNEG: _optneg,
    c.CMD_MACRO: _macro,
    c.CMD_CONNECT: _connect,
    c.CMD_HELO: _one("HELO", Helo),
    c.CMD_MAIL: _mail,
    c.CMD_RCPT: _rcpt,
    c.CMD_DATA: lambda _p: _DATA,
    c.CMD_HEADER: _header,
    c.CMD_EOH: lambda _p: _EOH,
    c.CMD_BODY: Body,
    c.CMD_BODYEOB: EndOfMessage,
    c.CMD_UNKNOWN: _one("UNKNOWN", Unknown),
    c.CMD_ABORT: lambda _p: _ABORT,
    c.CMD_QUIT: lambda _p: _QUIT,
    c.CMD_QUIT_NC: lambda _p: _QUIT_NC,
}


def decode_command(cmd: bytes, payload: bytes) -> Command:
    """Decode one packet's command byte and payload, or raise :class:`ProtocolError`."""
    decoder = DECODERS.get(cmd)
    if decoder is None:
        raise ProtocolError(f"unknown command byte {cmd!r}")
    return decoder(payload)


def encode_command(command: Command) -> bytes:
    """Encode a command as the MTA would (used by tests and the offline runner)."""

    def z(*texts: str) -> bytes:
        return b"".join(encode_text(t) + b"\0" for t in texts)

    match command:
        case OptNeg(version, actions, protocol):
            return frame(c.CMD_OPTNEG, _OPTNEG.pack(version, actions, protocol))
        case Macro(stage, macros):
            return frame(c.CMD_MACRO, stage + z(*(s for kv in macros.items() for s in kv)))
        case Connect(hostname, family, port, address):
            tail = b"" if family == "U" else port.to_bytes(2, "big") + z(address)
            return frame(c.CMD_CONNECT, z(hostname) + family.encode("ascii") + tail)
        case Helo(name):
            return frame(c.CMD_HELO, z(name))
        case Mail(sender, args):
            return frame(c.CMD_MAIL, z(sender, *args))
        case Rcpt(recipient, args):
            return frame(c.CMD_RCPT, z(recipient, *args))
        case Data():
            return frame(c.CMD_DATA, b"")
        case Header(name, value):
            return frame(c.CMD_HEADER, z(name, value))
        case EndOfHeaders():
            return frame(c.CMD_EOH, b"")
        case Body(chunk):
            return frame(c.CMD_BODY, chunk)
        case EndOfMessage(chunk):
            return frame(c.CMD_BODYEOB, chunk)
        case Unknown(line):
            return frame(c.CMD_UNKNOWN, z(line))
        case Abort():
            return frame(c.CMD_ABORT, b"")
        case Quit():
            return frame(c.CMD_QUIT, b"")
        case QuitNoClose():
            return frame(c.CMD_QUIT_NC, b"")
    raise TypeError(f"not a command: {command!r}")
