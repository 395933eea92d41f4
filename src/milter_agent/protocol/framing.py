"""Packet framing: 4-byte big-endian length (counting the command byte), command, payload.

Received bytes are kept as they came (``bytes``) with a read position, so a packet's command
and payload are each one slice of what was read: no copy into a buffer and out again. Only a
packet split across reads joins its pieces. A packet's declared length is checked against the
cap *before* anything is kept for it, so a peer claiming 2**31 bytes costs us nothing.
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

    __slots__ = ("_data", "_pos", "max_packet")

    def __init__(self, max_packet: int = MAX_RECEIVE_PACKET) -> None:
        self._data = b""
        self._pos = 0
        self.max_packet = max_packet

    def feed(self, data: bytes) -> None:
        if self._pos < len(self._data):
            self._data = self._data[self._pos :] + data
        else:
            self._data = bytes(data)
        self._pos = 0

    def __len__(self) -> int:
        return len(self._data) - self._pos

    def next_packet(self) -> tuple[bytes, bytes] | None:
        """The next complete packet, ``None`` if more bytes are needed; ProtocolError if bad."""
        data, pos = self._data, self._pos
        if len(data) - pos < HEADER_SIZE:
            return None
        (length,) = _LEN.unpack_from(data, pos)
        if length == 0:
            raise ProtocolError("packet length 0")
        if length > self.max_packet:
            raise ProtocolError(f"packet length {length} exceeds the limit of {self.max_packet}")
        end = pos + HEADER_SIZE + length
        if len(data) < end:
            return None
        self._pos = end
        return data[pos + HEADER_SIZE : pos + HEADER_SIZE + 1], data[pos + HEADER_SIZE + 1 : end]
