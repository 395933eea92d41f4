"""The asyncio shell around sessions: listen, bytes in -> session -> bytes out, stop gracefully.

All socket work and timeouts live here; the protocol and the message lifecycle do not know about
sockets. Each connection is an :class:`asyncio.Protocol`: every command but end-of-message is
answered inside ``data_received`` (one write per batch of commands, no task switch), and so is
end-of-message when the pipeline can decide at once. Only a pipeline that must wait (a filter
program, a module) gets a task, which sends PROGRESS meanwhile. While it waits the connection
keeps reading, so an MTA that hangs up cancels the work at once.

On stop: no new connections; idle connections close at once; a connection with a message in
progress finishes that message (within ``shutdown_grace``), and when the grace runs out a
message waiting for its verdict is tempfailed, never left half-modified.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import resource
import socket
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

from milter_agent import protocol as p
from milter_agent.errors import ProtocolError
from milter_agent.pipeline import Decision
from milter_agent.session import Services, Session
from milter_agent.socketspec import SocketSpec

log = logging.getLogger("milter_agent.server")

_BACKLOG = 1024
#: Pause writing above this much unsent output (a new body); the MTA reads it as we go.
_HIGH_WATER = 256 * 1024


def remove_stale_socket(path: str) -> None:
    """Remove a Unix socket left by an earlier run; refuse to remove anything else, or a
    socket that something still listens on (another instance)."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise OSError(f"{path} exists and is not a socket; not removing it")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(path)
        except OSError:
            pass  # nobody listens: stale
        else:
            raise OSError(f"{path}: another process is listening on it; not taking it over")
    os.unlink(path)


#: How asyncio reports an accept() that failed for want of descriptors or memory (EMFILE,
#: ENFILE, ENOBUFS, ENOMEM); it retries a second later.
_ACCEPT_FAILED = "socket.accept() out of system resource"


class AcceptErrorLog:
    """A loop exception handler: asyncio's reports of a failed accept() become one line per
    ``interval`` with a count of the others; anything else goes to the default handler.

    Out of descriptors, Python 3.11's accept loop reports the failure once per pending
    connection, each with a traceback, and schedules as many retries: thousands of lines a
    second that would bury the one fact an operator needs (and fill the disk). The MTA
    meanwhile applies its default action; the connections are accepted once descriptors are
    free."""

    def __init__(self, interval: float = 10.0) -> None:
        self.interval = interval
        self._logged_at = -interval
        self._missed = 0

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if context.get("message") == _ACCEPT_FAILED:
            self._accept_failed(loop.time(), context.get("exception"))
        elif not _late_accept_retry(context):
            loop.default_exception_handler(context)

    def _accept_failed(self, now: float, exc: BaseException | None) -> None:
        since = now - self._logged_at
        if since < self.interval:
            self._missed += 1
            return
        missed = f"; {self._missed} more in the last {since:.0f}s" if self._missed else ""
        log.error(
            "cannot accept connections: %s (open files limit %d)%s",
            exc,
            resource.getrlimit(resource.RLIMIT_NOFILE)[0],
            missed,
        )
        self._logged_at = now
        self._missed = 0


def _late_accept_retry(context: dict[str, Any]) -> bool:
    """One of those retries run after the listener was closed (on stop): it fails on the
    closed socket, and nothing is lost (asyncio names no public way to tell it apart)."""
    callback = getattr(context.get("handle"), "_callback", None)
    late = getattr(callback, "__name__", "") == "_start_serving"
    return late and isinstance(context.get("exception"), ValueError)


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
        self._connections: set[MilterProtocol] = set()
        self._ids = itertools.count(1)
        self.stopping = False
        self.connections_total = 0

    @property
    def connections_now(self) -> int:
        return len(self._connections)

    async def start(self) -> None:
        """Bind and listen (call as root before dropping privileges)."""
        loop = asyncio.get_running_loop()
        if self.spec.kind == "unix":
            Path(self.spec.path).parent.mkdir(parents=True, exist_ok=True)
            remove_stale_socket(self.spec.path)
            # Bind with the final mode already: no moment in which the umask decides.
            old = os.umask(0o777 & ~self.socket_mode)
            try:
                self._server = await loop.create_unix_server(
                    self._protocol, self.spec.path, backlog=_BACKLOG
                )
            finally:
                os.umask(old)
            os.chmod(self.spec.path, self.socket_mode)
            if self.socket_owner is not None:
                os.chown(self.spec.path, *self.socket_owner)
        else:
            family = socket.AF_INET6 if self.spec.kind == "inet6" else socket.AF_INET
            self._server = await loop.create_server(
                self._protocol,
                self.spec.host or None,
                self.spec.port,
                family=family,
                backlog=_BACKLOG,
                reuse_address=True,
            )
        log.info("listening on %s", self.spec)

    def _protocol(self) -> MilterProtocol:
        return MilterProtocol(self, f"conn{next(self._ids)}")

    def add(self, conn: MilterProtocol) -> None:
        self._connections.add(conn)
        self.connections_total += 1

    def discard(self, conn: MilterProtocol) -> None:
        self._connections.discard(conn)

    async def stop(self) -> None:
        """Graceful stop: see the module docstring."""
        self.stopping = True
        if self._server is not None:
            self._server.close()
        for conn in list(self._connections):
            conn.close_if_idle()
        if self._connections:
            log.info(
                "waiting up to %.0fs for %d connection(s)",
                self.shutdown_grace,
                len(self._connections),
            )
            waits = {c.closed for c in self._connections}
            _, late = await asyncio.wait(waits, timeout=self.shutdown_grace)
            if late:
                for conn in list(self._connections):
                    conn.give_up()
                await asyncio.wait({c.closed for c in self._connections} or waits, timeout=5)
        if self.spec.kind == "unix":
            with contextlib.suppress(OSError):
                _remove_own_socket(self.spec.path)


def _remove_own_socket(path: str) -> None:
    if stat.S_ISSOCK(os.lstat(path).st_mode):
        os.unlink(path)


class MilterProtocol(asyncio.Protocol):
    """One MTA connection: feeds its bytes to the session, writes the answers."""

    def __init__(self, server: MilterServer, name: str) -> None:
        self.server = server
        self.session = Session(server.services, name=name)
        self.conn = self.session.conn
        self.name = name
        self.loop = asyncio.get_running_loop()
        self.closed: asyncio.Future[None] = self.loop.create_future()
        self.transport: asyncio.Transport | None = None
        self._task: asyncio.Task[None] | None = None  # end of message, waiting for the pipeline
        self._progress: asyncio.TimerHandle | None = None
        self._busy = 0.0  # seconds spent in the milter on the current message so far
        self._answered = False  # an end of message was answered in this read callback
        self._eom_at = 0.0  # when a waiting end of message arrived
        self._write_ready: asyncio.Future[None] | None = None
        self._last_data = 0.0
        self._timer: asyncio.TimerHandle | None = None

    # --- asyncio callbacks ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # a stream transport (uvloop's are not asyncio.Transport subclasses)
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.transport.set_write_buffer_limits(high=_HIGH_WATER)
        self.server.add(self)
        if self.server.io_timeout > 0:
            self._last_data = self.loop.time()
            self._timer = self.loop.call_later(self.server.io_timeout, self._check_idle)

    def data_received(self, data: bytes) -> None:
        started = time.perf_counter()
        self._last_data = self.loop.time()
        self._feed(data)
        if self._task is None:
            self._busy += time.perf_counter() - started
            if self._answered:
                self._answered = False
                self._count_busy()
        else:  # up to the end of message that waits: it counts its own time from there on
            self._busy += max(0.0, self._eom_at - started)

    def _count_busy(self) -> None:
        """The time this message spent in the milter, from reading each command to writing
        its answer (from CONNECT on for a connection's first message): what we add to the
        MTA's own latency."""
        if self.session.services.on_answered is not None:
            self.session.services.on_answered(self._busy)
        self._busy = 0.0

    def eof_received(self) -> bool | None:
        self._feed(b"")
        return None  # the transport closes itself

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._task is not None and not self._task.done():
            log.info("%s: the MTA hung up while the message was being decided", self.name)
            self._task.cancel()
        else:
            self.session.close()
        if self._write_ready is not None:
            # cancelled, not failed: nobody may be waiting (asyncio would then warn of an
            # exception never retrieved), and a waiting answer's task is cancelled above
            self._write_ready.cancel()
        self.server.discard(self)
        if not self.closed.done():
            self.closed.set_result(None)

    def pause_writing(self) -> None:
        self._write_ready = self.loop.create_future()

    def resume_writing(self) -> None:
        if self._write_ready is not None and not self._write_ready.done():
            self._write_ready.set_result(None)
        self._write_ready = None

    # --- commands -------------------------------------------------------------------------------

    def _feed(self, data: bytes | None) -> None:
        """Take the bytes; answer them unless an end of message is being decided (then they
        wait in the buffer: the MTA may send nothing but ABORT or QUIT meanwhile)."""
        try:
            if data is not None:
                self.conn.receive_data(data)
            if self._task is None:
                self._process()
        except ProtocolError as exc:
            log.warning("%s: protocol error: %s; closing the connection", self.name, exc)
            self._abort()
        except p.LocalProtocolError as exc:
            log.error("%s: internal protocol misuse: %s; closing", self.name, exc)
            self._abort()
        except Exception:  # a bug must cost this connection only, never the daemon
            log.exception("%s: internal error; closing the connection", self.name)
            self._abort()

    def _process(self) -> None:
        """Answer every complete command received; stop at an end of message that waits."""
        conn, session = self.conn, self.session
        out = bytearray()
        while True:
            event = conn.next_event()
            if isinstance(event, p.Macro):  # a third of all packets; never answered
                session.macro(event)
                continue
            if isinstance(event, p.Sentinel):
                if event is p.CLOSED:
                    self._close(out)
                    return
                break
            if isinstance(event, p.EndOfMessage):
                answer = session.end_of_message(event.chunk)
                if isinstance(answer, p.Response):
                    out += conn.send(answer)
                    session.finish_message()
                    self._answered = True
                elif answer is not None and answer.changes.new_body is None:
                    out += self._encode(session.responses(answer))
                    session.finish_message()
                    self._answered = True
                else:
                    self._write(out)
                    self._task = self.loop.create_task(self._end_of_message(answer))
                    self._eom_at = time.perf_counter()
                    return
            else:
                reply = session.respond(event)
                if reply is not None:
                    out += conn.send(reply)
            if conn.phase is p.Phase.CLOSED:
                self._close(out)
                return
        self._write(out)
        if self.server.stopping:
            self.close_if_idle()

    def _encode(self, responses: Iterator[p.Response]) -> bytes:
        return b"".join(self.conn.send(r) for r in responses)

    async def _end_of_message(self, decided: Decision | None) -> None:
        """Wait for the pipeline (sending PROGRESS), send the answer, go on reading."""
        session = self.session
        try:
            if decided is None:
                self._progress = self.loop.call_later(self._interval, self._send_progress)
                try:
                    decided = await session.decide()
                finally:
                    self._progress.cancel()
            await self._send(session.responses(decided))
        except asyncio.CancelledError:
            self._tempfail_if_stopping()
            raise
        except (ConnectionError, _StalledWrite) as exc:
            log.info("%s: connection lost while answering: %s", self.name, exc)
            self._abort()
        except Exception:  # a bug must cost this connection only, never the daemon
            log.exception("%s: internal error at end of message; closing", self.name)
            self._abort()
        finally:
            session.finish_message()
            self._task = None
            self._last_data = self.loop.time()  # the MTA's next command is due from now
        if self.transport is not None and not self.transport.is_closing():
            self._feed(None)  # what arrived meanwhile

    @property
    def _interval(self) -> float:
        return self.session.services.progress_interval

    def _send_progress(self) -> None:
        """PROGRESS keeps the MTA waiting while the pipeline works (Sendmail's R timeout is
        10 s by default); a timer rather than a second task, as it costs nothing per message
        that is decided in time."""
        self._write(self.conn.send(p.Progress()))
        self._progress = self.loop.call_later(self._interval, self._send_progress)

    async def _send(self, responses: Iterator[p.Response]) -> None:
        """Write the answer; a new body goes out as the MTA takes it, within the I/O timeout."""
        out = bytearray()
        for response in responses:
            out += self.conn.send(response)
            if len(out) >= _HIGH_WATER // 4:
                self._write(out)
                out.clear()
                await self._writable()
        self.session.finish_message()  # files gone before the MTA hears the answer
        self._write(out)
        self._busy += time.perf_counter() - self._eom_at
        self._count_busy()

    async def _writable(self) -> None:
        if self._write_ready is None:
            return
        try:
            async with asyncio.timeout(self.server.io_timeout or None):
                await self._write_ready
        except TimeoutError:
            raise _StalledWrite(self.server.io_timeout) from None

    def _tempfail_if_stopping(self) -> None:
        """Stopped while a message waits for its verdict: answer tempfail rather than nothing."""
        if self.server.stopping and self.conn.pending is p.EndOfMessage:
            with contextlib.suppress(OSError, RuntimeError, p.LocalProtocolError):
                self._write(self.conn.send(self.session.give_up()))
                log.warning("%s: shutting down; message tempfailed", self.name)

    # --- transport ------------------------------------------------------------------------------

    def _write(self, data: bytes | bytearray) -> None:
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def _close(self, out: bytes | bytearray = b"") -> None:
        self._write(out)
        if self.transport is not None:
            self.transport.close()

    def _abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()  # close() would wait for unread data forever

    def close_if_idle(self) -> None:
        """On stop: a connection between messages closes now."""
        if self.session.message is None and self._task is None:
            self._close()

    def give_up(self) -> None:
        """The shutdown grace ran out: a waiting message is tempfailed, then we close."""
        if self._task is not None:
            self._task.cancel()
            self._task.add_done_callback(lambda _task: self._close())
        else:
            self._close()

    def _check_idle(self) -> None:
        """The I/O timeout: no data from the MTA for ``io_timeout`` while we wait for it."""
        timeout = self.server.io_timeout
        quiet = self.loop.time() - self._last_data
        if self._task is None and quiet >= timeout:
            log.info("%s: no data from the MTA for %ss; closing", self.name, timeout)
            self._abort()
            return
        again = timeout if self._task is not None else timeout - quiet
        self._timer = self.loop.call_later(again, self._check_idle)


class _StalledWrite(TimeoutError):
    """The MTA stopped reading our answers for longer than the I/O timeout."""

    def __str__(self) -> str:
        return f"the MTA read nothing for {self.args[0]}s"
