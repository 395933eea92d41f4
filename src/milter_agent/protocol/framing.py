"""Packet framing: 4-byte big-endian length (counting the command byte), command, payload.

The receive buffer is a ``bytearray`` consumed from the front (CPython makes that cheap), and a
packet's declared length is checked against the cap *before* anything is buffered for it, so a
peer claiming 2**31 bytes costs us nothing.
"""

from __future__ import annotations

import struct

from milter_agent.errors import ProtocolError
from milter_agent.protocol.constants import MAX_RECEIVE_PACKET

_LEN = struct.Struct(">I")
HEADER_SIZE = 4


def frame(cmd: bytes, payload: bytes = b"") -> bytes:
    """One packet: length, command byte, payload."""
    return _LEN.pack(len(payload) + 1) + cmd + payload


class FrameBuffer:
    """Accumulates received bytes and yields complete ``(command, payload)`` packets."""

    __slots__ = ("_buf", "max_packet")

    def __init__(self, max_packet: int = MAX_RECEIVE_PACKET) -> None:
        self._buf = bytearray()
        self.max_packet = max_packet

    def feed(self, data: bytes) -> None:
        self._buf += data

    def __len__(self) -> int:
        return len(self._buf)

    def next_packet(self) -> tuple[bytes, bytes] | None:
        """The next complete packet, ``None`` if more bytes are needed; ProtocolError if bad."""
        buf = self._buf
        if len(buf) < HEADER_SIZE:
            return None
        (length,) = _LEN.unpack_from(buf)
        if length == 0:
            raise ProtocolError("packet length 0")
        if length > self.max_packet:
            raise ProtocolError(f"packet length {length} exceeds the limit of {self.max_packet}")
        end = HEADER_SIZE + length
        if len(buf) < end:
            return None
        cmd = bytes(buf[HEADER_SIZE : HEADER_SIZE + 1])
        payload = bytes(buf[HEADER_SIZE + 1 : end])
        del buf[:end]
        return cmd, payload
