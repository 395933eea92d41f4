"""The asyncio shell around sessions: listen, read -> feed -> handle -> write, shut down gracefully.

All socket work and timeouts live here; the protocol and the message lifecycle do not know about
sockets. On stop: no new connections; idle connections close at once; a connection with a message
in progress finishes that message (within ``shutdown_grace``), and when the grace runs out a
message waiting for its verdict is tempfailed, never left half-modified.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import socket
import stat
from pathlib import Path

from milter_agent import protocol as p
from milter_agent.errors import ProtocolError
from milter_agent.session import Services, Session
from milter_agent.socketspec import SocketSpec

log = logging.getLogger("milter_agent.server")

_READ_SIZE = 256 * 1024
_FLUSH_AT = 256 * 1024


def remove_stale_socket(path: str) -> None:
    """Remove a Unix socket left by an earlier run; refuse to remove anything else."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise OSError(f"{path} exists and is not a socket; not removing it")
    os.unlink(path)


class _StalledWrite(TimeoutError):
    """The MTA stopped reading our answers for longer than the I/O timeout."""


class MilterServer:
    def __init__(
        self,
        spec: SocketSpec,
        services: Services,
        *,
        socket_mode: int = 0o660,
        socket_owner: tuple[int, int] | None = None,
        io_timeout: float = 0.0,
        shutdown_grace: float = 30.0,
    ) -> None:
        self.spec = spec
        self.services = services
        self.socket_mode = socket_mode
        self.socket_owner = socket_owner
        self.io_timeout = io_timeout
        self.shutdown_grace = shutdown_grace
        self._server: asyncio.Server | None = None
        self._sessions: dict[asyncio.Task[None], Session] = {}
        self._ids = itertools.count(1)
        self._stopping = False
        self.connections_total = 0

    @property
    def connections_now(self) -> int:
        return len(self._sessions)

    async def start(self) -> None:
        """Bind and listen (call as root before dropping privileges)."""
        if self.spec.kind == "unix":
            Path(self.spec.path).parent.mkdir(parents=True, exist_ok=True)
            remove_stale_socket(self.spec.path)
            self._server = await asyncio.start_unix_server(
                self._accept, self.spec.path, backlog=1024, limit=_READ_SIZE
            )
            os.chmod(self.spec.path, self.socket_mode)
            if self.socket_owner is not None:
                os.chown(self.spec.path, *self.socket_owner)
        else:
            family = socket.AF_INET6 if self.spec.kind == "inet6" else socket.AF_INET
            self._server = await asyncio.start_server(
                self._accept,
                self.spec.host or None,
                self.spec.port,
                family=family,
                backlog=1024,
                reuse_address=True,
                limit=_READ_SIZE,
            )
        log.info("listening on %s", self.spec)

    async def stop(self) -> None:
        """Graceful stop: see the module docstring."""
        self._stopping = True
        if self._server is not None:
            self._server.close()
        for task, session in list(self._sessions.items()):
            if session.message is None:
                task.cancel()
        if self._sessions:
            log.info(
                "waiting up to %.0fs for %d connection(s)", self.shutdown_grace, len(self._sessions)
            )
            _, late = await asyncio.wait(set(self._sessions), timeout=self.shutdown_grace)
            for task in late:
                task.cancel()
            if late:
                await asyncio.wait(late, timeout=5)
        if self.spec.kind == "unix":
            with contextlib.suppress(OSError):
                remove_stale_socket(self.spec.path)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        session = Session(self.services, name=f"conn{next(self._ids)}")
        task = asyncio.current_task()
        assert task is not None
        self._sessions[task] = session
        self.connections_total += 1
        try:
            await self._serve(session, reader, writer)
        except asyncio.CancelledError:
            self._tempfail_pending(session, writer)
        except ProtocolError as exc:
            log.warning("%s: protocol error: %s; closing the connection", session.name, exc)
        except _StalledWrite:
            log.info("%s: the MTA read nothing for %ss; closing", session.name, self.io_timeout)
            writer.transport.abort()  # close() would wait for the unread data forever
        except TimeoutError:
            log.info("%s: no data from the MTA for %ss; closing", session.name, self.io_timeout)
        except (ConnectionError, BrokenPipeError) as exc:
            log.info("%s: connection lost: %s", session.name, exc)
        except p.LocalProtocolError as exc:
            log.error("%s: internal protocol misuse: %s; closing", session.name, exc)
        finally:
            del self._sessions[task]
            session.close()
            writer.close()

    async def _serve(
        self, session: Session, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        conn = session.conn
        out = bytearray()
        while True:
            event = conn.next_event()
            if isinstance(event, p.Sentinel):
                if event is p.CLOSED or (self._stopping and session.message is None):
                    return
                conn.receive_data(await self._read(reader))
                continue
            async for response in session.handle(event):
                out += conn.send(response)
                if isinstance(response, p.Progress) or len(out) >= _FLUSH_AT:
                    writer.write(out)
                    out.clear()
                    await self._drain(writer)
            if out:
                writer.write(out)
                out.clear()
                await self._drain(writer)
            if conn.phase is p.Phase.CLOSED:
                return

    async def _drain(self, writer: asyncio.StreamWriter) -> None:
        """Wait until the MTA has taken our output, at most ``io_timeout`` (if set)."""
        if self.io_timeout <= 0:
            await writer.drain()
            return
        try:
            async with asyncio.timeout(self.io_timeout):
                await writer.drain()
        except TimeoutError:
            raise _StalledWrite from None

    async def _read(self, reader: asyncio.StreamReader) -> bytes:
        if self.io_timeout > 0:
            async with asyncio.timeout(self.io_timeout):
                return await reader.read(_READ_SIZE)
        return await reader.read(_READ_SIZE)

    @staticmethod
    def _tempfail_pending(session: Session, writer: asyncio.StreamWriter) -> None:
        """Stopped while a message waits for its verdict: answer tempfail rather than nothing."""
        if session.conn.pending is p.EndOfMessage:
            with contextlib.suppress(OSError, RuntimeError, p.LocalProtocolError):
                writer.write(session.conn.send(p.Tempfail()))
                log.warning("%s: shutting down; message tempfailed", session.name)
