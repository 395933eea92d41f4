"""The control socket: who may ask (SO_PEERCRED), and the answers.

Served on a Unix socket (mode 0660, owned by the daemon user and the admin group). A peer is
served when its uid is root or the daemon's, or when it belongs to ``admin_group``; anyone else
gets a refusal and a log line. Requests and answers follow :mod:`.protocol`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

from milter_agent.control import protocol
from milter_agent.server import remove_stale_socket

log = logging.getLogger("milter_agent.control")

Handler = Callable[[list[str]], Any]
_CRED = struct.Struct("3i")
_TIMEOUT = 10.0


def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process at the other end of a Unix socket."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _CRED.size)
    pid, uid, gid = _CRED.unpack(raw)
    return pid, uid, gid


def peer_groups(pid: int) -> set[int]:
    """Supplementary groups of a process, from /proc (empty if it is gone)."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("Groups:"):
                return {int(g) for g in line.split()[1:]}
    return set()


class ControlServer:
    def __init__(
        self,
        path: str,
        handlers: dict[str, Handler],
        *,
        admin_gid: int | None = None,
        owner: tuple[int, int] | None = None,
    ) -> None:
        self.path = path
        self.handlers = handlers
        self.admin_gid = admin_gid
        self.owner = owner
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        remove_stale_socket(self.path)
        self._server = await asyncio.start_unix_server(self._serve, self.path)
        os.chmod(self.path, 0o660)
        if self.owner is not None:
            uid, gid = self.owner
            os.chown(self.path, uid, self.admin_gid if self.admin_gid is not None else gid)
        elif self.admin_gid is not None:
            os.chown(self.path, -1, self.admin_gid)
        log.info("control socket on unix:%s", self.path)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        with contextlib.suppress(OSError):
            remove_stale_socket(self.path)

    def allowed(self, pid: int, uid: int, gid: int) -> bool:
        if uid in (0, os.geteuid()):
            return True
        admin = self.admin_gid
        return admin is not None and (gid == admin or admin in peer_groups(pid))

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            pid, uid, gid = peer_credentials(writer.get_extra_info("socket"))
            # read the request (bounded) even from a refused peer, so that it gets our answer
            # rather than a connection reset
            async with asyncio.timeout(_TIMEOUT):
                line = await reader.readline()
            if self.allowed(pid, uid, gid):
                answer = self.answer(line)
            else:
                log.warning("control socket: refused pid %d uid %d gid %d", pid, uid, gid)
                answer = protocol.error(protocol.PERMISSION_DENIED, "permission denied")
            writer.write(protocol.encode(answer))
            await writer.drain()
        except (TimeoutError, OSError, ValueError) as exc:  # ValueError: line too long
            log.info("control socket: client went away: %s", exc)
        finally:
            writer.close()

    def answer(self, line: bytes) -> dict[str, Any]:
        try:
            req = protocol.decode(line[: protocol.MAX_LINE])
        except ValueError:
            return protocol.error(protocol.BAD_REQUEST, "request is not a JSON object on one line")
        command, args = req.get("command", ""), req.get("args", [])
        if not isinstance(command, str) or not isinstance(args, list):
            return protocol.error(protocol.BAD_REQUEST, "command must be a string, args a list")
        handler = self.handlers.get(command)
        if handler is None:
            return protocol.error(protocol.UNKNOWN_COMMAND, f"unknown command {command!r}")
        try:
            return {"ok": True, "data": handler([str(a) for a in args])}
        except (KeyError, ValueError) as exc:
            text = str(exc.args[0]) if exc.args else type(exc).__name__
            return protocol.error(protocol.REFUSED, text)
        except Exception as exc:
            # a bug behind one command: the client gets an answer saying so, not a bare EOF,
            # and the traceback goes to the log
            log.exception("control socket: command %s failed", command)
            return protocol.error(protocol.INTERNAL_ERROR, f"internal error: {exc!r}")
