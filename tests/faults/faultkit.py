"""Tools for the fault tests: a blocking milter client that can misbehave on purpose, and the
health check every fault is followed by.

The health check is the promise to a postmaster made measurable: the daemon is alive, answers
the next message correctly, and holds no more file descriptors, child processes (zombies
included), spool files or memory than it did before the fault. ``baseline`` sends a warm-up
message and remembers what its answer must be; ``settle`` sends a fresh one and holds it to
that, so no fault test can forget to check the next message.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from milter_agent import protocol as p
from milter_agent.control import client as control_client
from milter_agent.protocol.constants import Action, ProtocolFlag
from milter_agent.protocol.framing import FrameBuffer
from support.daemon import MilterAgentDaemon
from support.util import SocketSpec, tail, wait_until

#: What Postfix 3.x offers: version 6, every action, every v6 protocol bit.
POSTFIX_OFFER = p.OptNeg(6, Action(0x1FF), ProtocolFlag(0x1FFFFF))
#: Reply bytes that end the answer to a command (everything but actions and PROGRESS).
FINAL = frozenset(b"caOrtdy4")
NO_REPLY = (p.Macro, p.Abort, p.Quit, p.QuitNoClose)

Packet = tuple[bytes, bytes]
#: A test of the replies to a message's end.
Expect = Callable[[list[Packet]], bool]


class MilterClient:
    """The MTA side of one milter connection, blocking, with bounded waits everywhere."""

    def __init__(self, spec: str, timeout: float = 15.0) -> None:
        self.sock = SocketSpec.parse(spec).connect(timeout)
        self.sock.settimeout(timeout)
        self.frames = FrameBuffer(max_packet=64 * 1024 * 1024)

    def __enter__(self) -> MilterClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

    def abort_close(self) -> None:
        """Drop the connection at once (RST on TCP, plain close on a Unix socket)."""
        with contextlib.suppress(OSError):
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
        self.close()

    def raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def packet(self) -> Packet:
        while (packet := self.frames.next_packet()) is None:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("closed by the milter")
            self.frames.feed(data)
        return packet

    def command(self, command: p.Command) -> list[Packet]:
        """Send one command; return the replies up to the final one (none for no-reply ones)."""
        self.raw(p.encode_command(command))
        if isinstance(command, NO_REPLY):
            return []
        return self.replies()

    def replies(self) -> list[Packet]:
        out: list[Packet] = []
        while True:
            out.append(self.packet())
            if out[-1][0][0] in FINAL:
                return [pk for pk in out if pk[0] != b"p"]

    def handshake(self, offer: p.OptNeg = POSTFIX_OFFER) -> None:
        (reply,) = self.command(offer)
        assert reply[0] == b"O", reply
        assert self.command(p.Connect("client.example", "4", 4321, "192.0.2.1")) == [(b"c", b"")]
        assert self.command(p.Helo("client.example")) == [(b"c", b"")]

    def message(self, commands: Sequence[p.Command] | None = None) -> list[Packet]:
        """Send a whole message; the replies to its last command (the end of message) or to
        the first command that was not answered with CONTINUE."""
        last: list[Packet] = []
        for command in commands if commands is not None else message_commands():
            answer = self.command(command)
            if answer:
                last = answer
                if answer[-1] != (b"c", b""):
                    break
        return last

    def wait_closed(self, timeout: float = 10.0) -> bytes:
        """Read until the milter closes the connection (bounded); return what it sent."""
        self.sock.settimeout(timeout)
        got = bytearray()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                data = self.sock.recv(65536)
            except ConnectionResetError:
                return bytes(got)
            if not data:
                return bytes(got)
            got += data
        raise TimeoutError(f"the milter did not close the connection in {timeout}s")


def message_commands(
    *,
    sender: str = "<a@example.org>",
    recipients: Sequence[str] = ("<b@example.net>",),
    subject: str = "hello",
    headers: Sequence[tuple[str, str]] = (),
    body: bytes = b"hello\r\n",
    queue_id: str = "QID1",
) -> list[p.Command]:
    """A message the way Postfix sends it (header values with their leading space)."""
    cmds: list[p.Command] = [p.Mail(sender)]
    cmds += [p.Rcpt(r) for r in recipients]
    cmds += [p.Data(), p.Header("From", " " + sender), p.Header("Subject", " " + subject)]
    cmds += [p.Header(n, v) for n, v in headers]
    cmds += [p.EndOfHeaders(), p.Body(body), p.Macro(b"E", {"i": queue_id}), p.EndOfMessage()]
    return cmds


# --- the daemon's health ---------------------------------------------------------------------


def fd_targets(pid: int) -> list[str]:
    out = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            out.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
    return out


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@dataclass(frozen=True)
class Proc:
    pid: int
    state: str
    command: str


def children(pid: int) -> list[Proc]:
    """Direct children of ``pid``, zombies included (state Z)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as f:
                head, _, rest = f.read().rpartition(")")
        except OSError:
            continue
        fields = rest.split()
        if int(fields[1]) == pid:
            found.append(Proc(int(entry), fields[0], head.partition("(")[2]))
    return found


def reset_peak_rss(pid: int) -> None:
    """Set the peak resident size (VmHWM) of ``pid`` back to its current size, so that a peak
    measured afterwards is this test's, not the start-up's or an earlier test's."""
    with open(f"/proc/{pid}/clear_refs", "w", encoding="ascii") as f:
        f.write("5")


def peak_rss_kb(pid: int) -> int:
    """The peak resident size (VmHWM) of ``pid`` in KiB."""
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        line = next(line for line in f if line.startswith("VmHWM:"))
    return int(line.split()[1])


def zombies(pid: int) -> list[Proc]:
    return [c for c in children(pid) if c.state == "Z"]


def spool_files(agent: MilterAgentDaemon) -> list[str]:
    directory = agent.spool_dir / "messages"
    return sorted(os.listdir(directory)) if directory.is_dir() else []


def status(agent: MilterAgentDaemon) -> dict[str, object]:
    answer = control_client.ask(agent.control_spec, "status", timeout=10)
    assert isinstance(answer, dict)
    return answer


def filters(agent: MilterAgentDaemon) -> list[dict[str, object]]:
    answer = control_client.ask(agent.control_spec, "filters", timeout=10)
    assert isinstance(answer, list)
    return answer


@dataclass(frozen=True)
class Baseline:
    fds: int
    rss_kb: int
    #: What the end of a fresh message must get (see ``settle``).
    expect: Expect | None = None


#: Memory a fault may leave behind: allocator noise, not a leaked message or 100 MB of output.
RSS_SLACK_KB = 16 * 1024


def baseline(agent: MilterAgentDaemon, expect: Expect | None = None) -> Baseline:
    """Measure after the daemon served a message (lazy imports, warm caches) and closed its
    connections; the lowest of a few samples, so a control connection still closing does not
    count. With ``expect``, first send that warm-up message (``answers``); ``settle`` then
    holds every later fresh message to the same test."""
    if expect is not None:
        answers(agent, expect)
    wait_until(lambda: status(agent)["connections_now"] == 0, 10, interval=0.05)
    samples = []
    for _ in range(5):
        time.sleep(0.05)
        samples.append(fd_count(agent.pid))
    return Baseline(min(samples), agent.rss_kb(), expect)


def settle(
    agent: MilterAgentDaemon,
    base: Baseline,
    *,
    timeout: float = 10.0,
    rss_slack_kb: int = RSS_SLACK_KB,
    children_allowed: int = 0,
    expect: Expect | None = None,
) -> list[Packet]:
    """Wait (bounded) until the daemon is back to ``base``: alive, no extra fds, no child
    processes (zombies or not) beyond ``children_allowed``, no spool files, no open
    connection; then check that it answers a fresh message correctly (``expect``, else the
    baseline's), and that it is back to the baseline after that message too, with memory
    within ``rss_slack_kb`` of the baseline. Returns the fresh message's answer.

    Before the fresh message fewer fds than the baseline are fine: a module worker that died
    took its two pipes with it, and the fresh message starts the next one."""
    check = expect or base.expect
    assert check is not None, "settle needs the answer a fresh message must get"
    _back_to(agent, base, timeout, children_allowed, fewer_fds=True)
    got = answers(agent, check)
    _back_to(agent, base, timeout, children_allowed)
    rss = agent.rss_kb()
    assert rss - base.rss_kb < rss_slack_kb, f"RSS grew from {base.rss_kb} to {rss} KiB"
    return got


def _back_to(
    agent: MilterAgentDaemon,
    base: Baseline,
    timeout: float,
    children_allowed: int,
    *,
    fewer_fds: bool = False,
) -> None:
    def problems() -> list[str]:
        found = []
        if not agent.running():
            return [f"daemon exited ({agent.proc.poll() if agent.proc else None})"]
        fds = fd_count(agent.pid)
        if fds > base.fds or (fds < base.fds and not fewer_fds):
            found.append(f"{fds} fds, baseline {base.fds}: {sorted(fd_targets(agent.pid))}")
        kids = children(agent.pid)
        if [k for k in kids if k.state == "Z"] or len(kids) > children_allowed:
            found.append(f"children: {kids}")
        if files := spool_files(agent):
            found.append(f"spool files: {files}")
        now = status(agent)["connections_now"]
        if now:
            found.append(f"{now} connections still open")
        return found

    last: list[str] = []

    def healthy() -> bool:
        nonlocal last
        last = problems()
        return not last

    wait_until(
        healthy,
        timeout,
        interval=0.1,
        message=lambda: f"daemon not back to its baseline: {last}\n{tail(agent.log_text())}",
    )


def answers(agent: MilterAgentDaemon, expected: Expect) -> list[Packet]:
    """A fresh connection and message; ``expected`` must hold for the end-of-message replies."""
    with MilterClient(agent.socket_spec) as mta:
        mta.handshake()
        got = mta.message()
        mta.command(p.Quit())
    assert expected(got), f"unexpected answer {got}\n{tail(agent.log_text())}"
    return got


def write_script(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o755)
    return path


# --- the daemon as an unprivileged user --------------------------------------------------------

SRC = Path(__file__).resolve().parents[2] / "src"
#: The venv's interpreter lives under /root (0700), which nobody cannot read.
SYSTEM_PYTHON = "/usr/bin/python3"


@contextlib.contextmanager
def unprivileged_daemon(
    directory: Path, args: Sequence[str], user: str = "nobody"
) -> Iterator[subprocess.Popen[bytes]]:
    """The daemon started by root with ``-u user`` (and ``args``), from /usr/bin/python3 with
    this tree on PYTHONPATH, its stderr in ``directory/daemon.log``; yielded once it has
    logged that it started (bounded), terminated at the end."""
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        raise AssertionError(f"{SYSTEM_PYTHON} is needed to run the daemon as {user}")
    site = next(Path(sys.prefix, "lib").glob("python3*/site-packages"))
    log = directory / "daemon.log"
    with open(log, "wb") as err:
        proc = subprocess.Popen(
            [SYSTEM_PYTHON, "-m", "milter_agent", "-d", "1", "-u", user, *args],
            env={"PATH": "/usr/bin:/bin", "PYTHONPATH": f"{SRC}:{site}"},
            stderr=err,
        )
    try:
        wait_until(lambda: " started (pid" in log.read_text() or proc.poll() is not None, 30)
        assert proc.poll() is None, log.read_text()
        yield proc
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def proc_ids(pid: int) -> dict[str, list[int]]:
    """Uid (real, effective, saved, fs), Gid (the same) and Groups of a process."""
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {
        key: [int(v) for v in line.split()[1:]]
        for line in status
        for key in ("Uid", "Gid", "Groups")
        if line.startswith(key + ":")
    }
