"""The asyncio shell over real sockets: many connections, bad peers, graceful stop."""

from __future__ import annotations

import asyncio
import logging
import os
import resource
import socket as s
import stat
from pathlib import Path

import pytest
from fakemta import POSTFIX_OFFER, message_commands

from milter_agent import protocol as p
from milter_agent.message import Message
from milter_agent.pipeline import Decision, PassThrough, Pipeline
from milter_agent.protocol.framing import FrameBuffer
from milter_agent.server import AcceptErrorLog, MilterServer
from milter_agent.session import Services
from milter_agent.socketspec import SocketSpec
from milter_agent.spool import Spool


class Client:
    """A minimal MTA side over a real socket, using the codec's command encoder."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.frames = FrameBuffer()

    @classmethod
    async def open(cls, spec: SocketSpec, port: int = 0) -> Client:
        if spec.kind == "unix":
            return cls(*await asyncio.open_unix_connection(spec.path))
        return cls(*await asyncio.open_connection(spec.host, port))

    async def packet(self) -> tuple[bytes, bytes]:
        while (packet := self.frames.next_packet()) is None:
            data = await asyncio.wait_for(self.reader.read(65536), 10)
            if not data:
                raise ConnectionError("closed by the milter")
            self.frames.feed(data)
        return packet

    async def command(self, command: p.Command) -> list[tuple[bytes, bytes]]:
        """Send; collect replies up to and including a final one (none for no-reply commands)."""
        self.writer.write(p.encode_command(command))
        await self.writer.drain()
        if isinstance(command, p.Macro | p.Abort | p.Quit | p.QuitNoClose):
            return []
        replies = []
        while True:
            replies.append(await self.packet())
            if replies[-1][0] in b"caOrtdy":
                return replies

    async def handshake(self) -> None:
        await self.command(POSTFIX_OFFER)
        await self.command(p.Connect("h", "4", 1, "127.0.0.1"))

    async def message(self) -> bytes:
        last: list[tuple[bytes, bytes]] = []
        for command in message_commands():
            last = await self.command(command) or last
        return last[-1][0]


def services(tmp_path: Path, pipeline: Pipeline) -> Services:
    spool = Spool(tmp_path / "spool")
    spool.prepare()
    return Services(policy=p.Policy, pipeline=lambda: pipeline, spool=spool)


async def started(server: MilterServer) -> int:
    await server.start()
    assert server._server is not None
    return int(server._server.sockets[0].getsockname()[1]) if server.spec.kind != "unix" else 0


def loopback6() -> None:
    """Fail (never skip) with the reason when this machine cannot listen on ::1."""
    try:
        with s.socket(s.AF_INET6, s.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError as exc:
        pytest.fail(
            f"cannot listen on ::1 ({exc}): the inet6 tests need IPv6 on the loopback "
            "interface (sysctl net.ipv6.conf.lo.disable_ipv6=0)",
            pytrace=False,
        )


def socket_spec(kind: str, tmp_path: Path) -> SocketSpec:
    if kind == "unix":
        return SocketSpec("unix", path=str(tmp_path / "s"))
    if kind == "inet6":
        loopback6()
        return SocketSpec("inet6", "", "::1", 0)
    return SocketSpec("inet", "", "127.0.0.1", 0)


@pytest.mark.parametrize("kind", ["unix", "inet", "inet6"])
def test_many_connections_many_messages(tmp_path: Path, kind: str) -> None:
    spec = socket_spec(kind, tmp_path)

    async def go() -> None:
        server = MilterServer(spec, services(tmp_path, PassThrough()))
        port = await started(server)

        async def one_connection() -> list[bytes]:
            client = await Client.open(spec, port)
            await client.handshake()
            verdicts = [await client.message() for _ in range(3)]
            await client.command(p.Quit())
            return verdicts

        results = await asyncio.gather(*(one_connection() for _ in range(10)))
        assert results == [[b"c", b"c", b"c"]] * 10
        await server.stop()
        assert server.connections_total == 10

    asyncio.run(go())


def test_protocol_error_closes_only_that_connection(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spec = SocketSpec("unix", path=str(tmp_path / "s"))

    async def go() -> None:
        server = MilterServer(spec, services(tmp_path, PassThrough()))
        await started(server)
        good = await Client.open(spec)
        await good.handshake()
        bad = await Client.open(spec)
        await bad.handshake()
        bad.writer.write(b"\x00\x00\x00\x02Z!")  # unknown command byte
        await bad.writer.drain()
        assert await asyncio.wait_for(bad.reader.read(), 5) == b""
        assert await good.message() == b"c"
        await server.stop()

    asyncio.run(go())
    assert "protocol error: unknown command byte b'Z'" in caplog.text


def test_quit_nc_then_new_connect_on_same_socket(tmp_path: Path) -> None:
    spec = SocketSpec("unix", path=str(tmp_path / "s"))

    async def go() -> None:
        server = MilterServer(spec, services(tmp_path, PassThrough()))
        await started(server)
        client = await Client.open(spec)
        await client.handshake()
        assert await client.message() == b"c"
        await client.command(p.QuitNoClose())
        assert await client.command(p.Connect("h2", "6", 2, "::1")) == [(b"c", b"")]
        assert await client.message() == b"c"
        await server.stop()

    asyncio.run(go())


def test_idle_connection_closed_by_io_timeout(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    spec = SocketSpec("unix", path=str(tmp_path / "s"))

    async def go() -> None:
        server = MilterServer(spec, services(tmp_path, PassThrough()), io_timeout=0.2)
        await started(server)
        client = await Client.open(spec)
        assert await asyncio.wait_for(client.reader.read(), 5) == b""
        await server.stop()

    asyncio.run(go())
    assert "no data from the MTA" in caplog.text


class Gate:
    """A pipeline that waits until released, to hold a message in flight."""

    wants_content = False

    def __init__(self) -> None:
        self.entered = asyncio.Event()
        self.release = asyncio.Event()

    async def run(self, message: Message) -> Decision:
        self.entered.set()
        await self.release.wait()
        return Decision()


def test_graceful_stop_lets_in_flight_message_finish(tmp_path: Path) -> None:
    spec = SocketSpec("unix", path=str(tmp_path / "s"))

    async def go() -> None:
        gate = Gate()
        server = MilterServer(spec, services(tmp_path, gate), shutdown_grace=10)
        await started(server)
        idle = await Client.open(spec)
        await idle.handshake()
        busy = await Client.open(spec)
        await busy.handshake()
        verdict = asyncio.ensure_future(busy.message())
        await asyncio.wait_for(gate.entered.wait(), 5)
        stopping = asyncio.ensure_future(server.stop())
        assert await asyncio.wait_for(idle.reader.read(), 5) == b""  # idle closed at once
        gate.release.set()
        assert await asyncio.wait_for(verdict, 5) == b"c"
        await asyncio.wait_for(stopping, 5)
        assert not Path(spec.path).exists()

    asyncio.run(go())


def test_stop_after_grace_tempfails_the_waiting_message(tmp_path: Path) -> None:
    spec = SocketSpec("unix", path=str(tmp_path / "s"))

    async def go() -> None:
        gate = Gate()
        server = MilterServer(spec, services(tmp_path, gate), shutdown_grace=0.2)
        await started(server)
        client = await Client.open(spec)
        await client.handshake()
        verdict = asyncio.ensure_future(client.message())
        await asyncio.wait_for(gate.entered.wait(), 5)
        await asyncio.wait_for(server.stop(), 10)
        assert await asyncio.wait_for(verdict, 5) == b"t"

    asyncio.run(go())


def test_stale_socket_replaced_but_regular_file_kept(tmp_path: Path) -> None:
    path = tmp_path / "s"
    stale = s.socket(s.AF_UNIX)
    stale.bind(str(path))
    stale.close()

    async def go() -> None:
        server = MilterServer(SocketSpec("unix", path=str(path)), services(tmp_path, PassThrough()))
        await started(server)
        await server.stop()
        path.write_text("precious")
        server = MilterServer(SocketSpec("unix", path=str(path)), services(tmp_path, PassThrough()))
        with pytest.raises(OSError, match="not a socket"):
            await server.start()
        assert path.read_text() == "precious"

    asyncio.run(go())


@pytest.mark.parametrize("kind", ["inet", "inet6"])
def test_accepted_tcp_connection_has_nodelay(
    tmp_path: Path, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """TCP_NODELAY on the accepted socket (without it Postfix's small writes wait ~40 ms on
    Nagle). asyncio's own transport sets it too; that is switched off here, so the test sees
    what milter-agent sets, as under any other event loop."""
    monkeypatch.setattr(asyncio.base_events, "_set_nodelay", lambda sock: None)
    spec = socket_spec(kind, tmp_path)
    family = s.AF_INET6 if kind == "inet6" else s.AF_INET

    async def go() -> None:
        server = MilterServer(spec, services(tmp_path, PassThrough()))
        port = await started(server)
        client = await Client.open(spec, port)
        await client.command(POSTFIX_OFFER)  # answered, so the server holds the connection
        (conn,) = server._connections
        assert conn.transport is not None
        sock = conn.transport.get_extra_info("socket")
        assert sock.family == family
        assert sock.getsockopt(s.IPPROTO_TCP, s.TCP_NODELAY) != 0
        client_sock = client.writer.get_extra_info("socket")
        assert client_sock.getsockopt(s.IPPROTO_TCP, s.TCP_NODELAY) == 0  # the switch works
        client.writer.close()
        await server.stop()

    asyncio.run(go())


def test_unix_socket_has_its_mode_from_the_bind_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """socket_mode=0o640: the file has that mode, and had it already when bind() created it
    (the chmod after it changes nothing): there is no moment with a wider mode."""
    path = tmp_path / "s"
    modes_at_chmod: list[int] = []
    chmod = os.chmod

    def watching_chmod(target: str, mode: int) -> None:
        if target == str(path):
            modes_at_chmod.append(stat.S_IMODE(os.lstat(target).st_mode))
        chmod(target, mode)

    monkeypatch.setattr(os, "chmod", watching_chmod)
    umask = os.umask(0o022)
    try:

        async def go() -> None:
            spec = SocketSpec("unix", path=str(path))
            server = MilterServer(spec, services(tmp_path, PassThrough()), socket_mode=0o640)
            await started(server)
            assert stat.S_ISSOCK(os.lstat(path).st_mode)
            assert stat.S_IMODE(os.lstat(path).st_mode) == 0o640
            assert modes_at_chmod == [0o640]
            assert os.umask(0o022) == 0o022  # the process umask is back as it was
            await server.stop()

        asyncio.run(go())
    finally:
        os.umask(umask)


@pytest.mark.parametrize("kind", ["unix", "inet"])
def test_new_connections_are_refused_during_the_grace(tmp_path: Path, kind: str) -> None:
    spec = socket_spec(kind, tmp_path)

    async def go() -> None:
        gate = Gate()
        server = MilterServer(spec, services(tmp_path, gate), shutdown_grace=10)
        port = await started(server)
        busy = await Client.open(spec, port)
        await busy.handshake()
        verdict = asyncio.ensure_future(busy.message())
        await asyncio.wait_for(gate.entered.wait(), 5)
        stopping = asyncio.ensure_future(server.stop())
        await asyncio.sleep(0.05)  # stop() has closed the listener and is waiting
        assert not stopping.done() and not verdict.done()
        with pytest.raises(ConnectionRefusedError):
            await Client.open(spec, port)
        gate.release.set()
        assert await asyncio.wait_for(verdict, 5) == b"c"  # the message in flight still ends
        await asyncio.wait_for(stopping, 5)

    asyncio.run(go())


class FakeLoop:
    """What AcceptErrorLog uses of a loop: its clock and its default handler."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.defaulted: list[dict[str, object]] = []

    def time(self) -> float:
        return self.now

    def default_exception_handler(self, context: dict[str, object]) -> None:
        self.defaulted.append(context)


def test_failed_accepts_are_logged_once_per_interval_with_a_count(
    caplog: pytest.LogCaptureFixture,
) -> None:
    loop = FakeLoop()
    handler = AcceptErrorLog(interval=10)
    failed = {
        "message": "socket.accept() out of system resource",
        "exception": OSError(24, "Too many open files"),
    }
    for _ in range(1000):  # one wake-up of asyncio's accept loop with 1000 pending
        handler(loop, failed)  # type: ignore[arg-type]
    loop.now += 4
    handler(loop, failed)  # type: ignore[arg-type]
    loop.now += 7
    handler(loop, failed)  # type: ignore[arg-type]
    limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    first = f"cannot accept connections: [Errno 24] Too many open files (open files limit {limit})"
    lines = [r.getMessage() for r in caplog.records if r.name == "milter_agent.server"]
    assert lines == [first, f"{first}; 1000 more in the last 11s"]
    assert loop.defaulted == []


def test_other_loop_errors_go_to_the_default_handler_but_late_accept_retries_do_not() -> None:
    def _start_serving() -> None:
        """Named as asyncio's retry of accepting after a failed accept()."""

    class Handle:
        _callback = staticmethod(_start_serving)

    loop = FakeLoop()
    handler = AcceptErrorLog()
    late = {"message": "Exception in callback", "handle": Handle(), "exception": ValueError()}
    handler(loop, late)  # type: ignore[arg-type]
    other = {"message": "Exception in callback", "handle": Handle(), "exception": OSError()}
    bug = {"message": "Task exception was never retrieved", "exception": RuntimeError("bug")}
    handler(loop, other)  # type: ignore[arg-type]
    handler(loop, bug)  # type: ignore[arg-type]
    assert loop.defaulted == [other, bug]
