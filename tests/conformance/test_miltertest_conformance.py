"""Conformance against a client we did not write: Debian's ``miltertest`` (OpenDKIM, Lua).

A tiny asyncio milter built only on ``milter_agent.protocol`` listens on a Unix socket or on
127.0.0.1; the Lua scripts beside this file drive it like an MTA and check every reply and
modification with miltertest's own parser. The milter behaves by Subject: ``REJECTME`` gets a
multi-line 550, ``TEMPME`` a TEMPFAIL, anything else every modification and then ACCEPT
(CONTINUE if the subject says ``CONTINUEME``). It also echoes what it decoded (8-bit subject,
folded header, macros, recipients) in added headers, so the scripts compare bytes end to end.
``daemon.lua`` drives the real daemon instead (``python -m milter_agent -HB``, an address rule
adding a header, a program filter replacing the body or rejecting): what a deployment negotiates
and sends, read by miltertest.

What miltertest (2.11, miltertest.c) cannot do, and where that is covered instead:
- It reads each end-of-message packet into a 1024-byte stack buffer without a bound check: a
  REPLBODY packet over 1 KiB crashes it ("stack smashing detected"). So the body is replaced
  here in two small packets; the split at 65535 bytes is tested in tests/unit/protocol.
- ``mt.eom_check`` has no check for CHGFROM, ADDRCPT_PAR or PROGRESS: they are sent here, so
  miltertest must parse past them, but their content is checked by the unit tests only.
- It cannot send QUIT_NC or a MACRO without pairs (unit tests again).
"""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from milter_agent.errors import ProtocolError
from milter_agent.protocol import (
    CLOSED,
    NEED_DATA,
    Abort,
    Accept,
    Action,
    AddHeader,
    AddRecipient,
    AddRecipientPar,
    Body,
    ChangeFrom,
    ChangeHeader,
    Command,
    Connect,
    Continue,
    DeleteRecipient,
    EndOfMessage,
    Header,
    Helo,
    InsertHeader,
    Macro,
    Mail,
    MilterConnection,
    OptNeg,
    Policy,
    Progress,
    ProtocolFlag,
    Quarantine,
    Quit,
    QuitNoClose,
    Rcpt,
    ReplaceBody,
    ReplyCode,
    Response,
    Tempfail,
    Unknown,
    negotiate,
)
from milter_agent.protocol.responses import REQUIRED_ACTION
from support.daemon import MilterAgentDaemon
from support.util import free_port

HERE = Path(__file__).resolve().parent
MILTERTEST = shutil.which("miltertest")
INSTALL_HINT = (
    "miltertest not found on PATH. These conformance tests need Debian's independent milter "
    "client: install the Debian package 'miltertest' the way scripts/ensure-postfix.sh "
    "installs Postfix (apt-get install -y --no-install-recommends miltertest)."
)
POLICY = Policy(actions=Action(0xFF))  # every modification; negotiate() adds SETSYMLIST


# --- the test milter -----------------------------------------------------------------------


@dataclass
class State:
    """What one connection has seen: connection-wide macros, the current message."""

    macros: dict[str, str] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    rcpts: list[str] = field(default_factory=list)

    def new_message(self) -> None:
        self.headers.clear()
        self.rcpts.clear()


def end_of_message(conn: MilterConnection, state: State) -> list[Response]:
    subject = state.headers.get("Subject", "")
    if "REJECTME" in subject:
        return [ReplyCode("550", "5.7.1", ("Rejected by conformance test", "100% sure"))]
    if "TEMPME" in subject:
        return [Tempfail()]
    macros = ";".join(f"{name}={value}" for name, value in sorted(state.macros.items()))
    changes: list[Response] = [
        AddHeader("X-Conformance", "yes"),
        AddHeader("X-Echo-Subject", subject),
        AddHeader("X-Echo-Folded", state.headers.get("X-Folded", "")),
        AddHeader("X-Echo-Macros", macros),
        AddHeader("X-Echo-Rcpts", ",".join(state.rcpts)),
        InsertHeader(0, "X-Inserted", "top"),
        ChangeHeader(1, "Subject", "changed"),
        ChangeHeader(1, "X-Remove-Me", ""),
        AddRecipient("<added@example.com>"),
        AddRecipientPar("<added-par@example.com>", "NOTIFY=NEVER"),
        *(DeleteRecipient(rcpt) for rcpt in state.rcpts[:1]),
        ReplaceBody(b"new body line 1\r\n"),
        ReplaceBody(b"new body line 2\r\n"),
        ChangeFrom("<new-sender@example.com>", "RET=HDRS"),
        Quarantine("held by conformance test"),
        Progress(),
    ]
    allowed = [c for c in changes if type(c) not in REQUIRED_ACTION or _negotiated(conn, c)]
    return [*allowed, Continue() if "CONTINUEME" in subject else Accept()]


def _negotiated(conn: MilterConnection, change: Response) -> bool:
    return bool(conn.actions & REQUIRED_ACTION[type(change)])


def react(conn: MilterConnection, event: Command, state: State) -> list[Response]:
    match event:
        case OptNeg():
            return [negotiate(event, POLICY)]
        case Macro(macros=macros):
            state.macros.update(macros)
        case Mail() | Abort() | QuitNoClose():
            state.new_message()
        case Rcpt(recipient=rcpt):
            state.rcpts.append(rcpt)
        case Header(name=name, value=value):
            state.headers[name] = value
        case EndOfMessage():
            return end_of_message(conn, state)
    return [Continue()] if conn.awaiting_reply else []


@dataclass
class TestMilter:
    """Serves connections with :func:`react` and records what happened on each."""

    __test__ = False  # not a pytest class

    connections: list[list[Command]] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)  # ProtocolError messages
    crashes: list[BaseException] = field(default_factory=list)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        conn, state, events = MilterConnection(), State(), list[Command]()
        self.connections.append(events)
        try:
            while True:
                conn.receive_data(await reader.read(65536))
                while (event := conn.next_event()) is not NEED_DATA:
                    if event is CLOSED:
                        return
                    assert not isinstance(event, type(CLOSED))
                    events.append(event)
                    for response in react(conn, event, state):
                        writer.write(conn.send(response))
                await writer.drain()
        except ProtocolError as exc:
            self.refused.append(str(exc))
        except Exception as exc:  # recorded, so the test fails with it
            self.crashes.append(exc)
        finally:
            writer.close()


# --- running miltertest --------------------------------------------------------------------


@dataclass
class Outcome:
    returncode: int
    stdout: str
    stderr: str
    milter: TestMilter

    def __str__(self) -> str:
        return (
            f"miltertest exit {self.returncode}\nstdout:\n{self.stdout}\nstderr:\n{self.stderr}\n"
            f"refused: {self.milter.refused}\ncrashes: {self.milter.crashes!r}"
        )


async def _serve_and_run(script: str, transport: str, workdir: Path) -> Outcome:
    assert MILTERTEST is not None
    milter = TestMilter()
    if transport == "unix":
        path = workdir / "m.sock"
        server = await asyncio.start_unix_server(milter.handle, path=str(path))
        spec = f"unix:{path}"
    else:
        server = await asyncio.start_server(milter.handle, "127.0.0.1", 0)
        spec = f"inet:{server.sockets[0].getsockname()[1]}@127.0.0.1"
    async with server:
        proc = await asyncio.create_subprocess_exec(
            MILTERTEST,
            *("-D", f"MILTER={spec}", "-D", f"DIR={HERE}", "-s", str(HERE / script)),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise
        if milter.tasks:  # let the milter see the last EOF
            await asyncio.wait(milter.tasks, timeout=10)
    assert proc.returncode is not None
    return Outcome(proc.returncode, out.decode(errors="replace"), err.decode(), milter)


def run_miltertest(script: str, transport: str) -> Outcome:
    if MILTERTEST is None:
        pytest.fail(INSTALL_HINT, pytrace=False)
    # a short directory: Unix socket paths are limited to 107 bytes
    with tempfile.TemporaryDirectory(prefix="mt-") as workdir:
        return asyncio.run(_serve_and_run(script, transport, Path(workdir)))


TRANSPORTS = pytest.mark.parametrize("transport", ["unix", "inet"])


@TRANSPORTS
def test_session(transport: str) -> None:
    outcome = run_miltertest("session.lua", transport)
    assert outcome.returncode == 0 and "ALL OK" in outcome.stdout, str(outcome)
    assert outcome.milter.crashes == [] and outcome.milter.refused == [], str(outcome)
    first, second = outcome.milter.connections
    # what our decoder made of miltertest's encoding
    assert first[0] == OptNeg(6, Action(0x1FF), ProtocolFlag(0x1FFFFF))
    assert Macro(b"C", {"j": "mx.test", "{daemon_name}": "conformance"}) in first
    assert Macro(b"H", {"{cert_subject}": "CN=Caf\u00e9 \udcff"}) in first
    assert Macro(b"E", {"{eom_x}": "yes"}) in first
    assert Connect("client.test", "4", 12345, "192.0.2.7") in first
    assert first.count(Helo("client.test")) == 2
    assert Unknown("XFOO bar") in first
    assert Mail("<a@example.com>", ("SIZE=1234", "BODY=8BITMIME")) in first
    assert Rcpt("<c@example.com>", ("NOTIFY=NEVER",)) in first
    assert Header("Subject", " caf\u00e9 \udce9t\udce9 hello") in first  # HDR_LEADSPC
    assert Header("X-Folded", " line one\n\tline two") in first
    assert Body(b"hello world\r\nline 2\r\n") in first
    assert Abort() in first
    assert sum(isinstance(e, EndOfMessage) for e in first) == 4
    assert first[-1] == Quit()
    assert Connect("v6.test", "6", 12345, "2001:db8::7") in second
    assert Quit() not in second  # hung up between packets: a clean close, not an error


@TRANSPORTS
def test_negotiation(transport: str) -> None:
    outcome = run_miltertest("negotiation.lua", transport)
    assert outcome.returncode == 0 and "ALL OK" in outcome.stdout, str(outcome)
    assert outcome.milter.crashes == [], str(outcome)
    restricted, version2, version1 = outcome.milter.connections
    assert restricted[0] == OptNeg(6, Action.ADDHDRS, ProtocolFlag.NONE)
    assert Connect("unknown.test", "U") in restricted
    assert isinstance(version2[0], OptNeg) and version2[0].version == 2
    assert [type(e) for e in version1] == [OptNeg]
    assert len(outcome.milter.refused) == 1
    assert "need >= 2" in outcome.milter.refused[0]


# --- the real daemon -----------------------------------------------------------------------

DAEMON_CONFIG = """
[Address]
task_name = stamp
add_header_name = "X-Milter-Agent"
add_header_value = "checked %s"

[Filter]
task_name = rewrite
reject_exit_codes = "1"
reject_message = "Refused by the conformance test"
exec_cmd = "{script} %f %n"
"""
#: Rejects a message whose file says REJECTME, else writes the new body.
REWRITE = '#!/bin/sh\ngrep -q REJECTME "$1" && exit 1\nprintf \'replaced body\\r\\n\' > "$2"\n'


def run_against_daemon(transport: str, workdir: Path) -> tuple[Outcome, MilterAgentDaemon]:
    assert MILTERTEST is not None
    script = workdir / "rewrite.sh"
    script.write_text(REWRITE)
    script.chmod(0o755)
    config = workdir / "milter-agent.conf"
    config.write_text(DAEMON_CONFIG.format(script=script))
    spec = f"unix:{workdir}/m.sock" if transport == "unix" else f"inet:{free_port()}@127.0.0.1"
    agent = MilterAgentDaemon(
        config, spec, f"unix:{workdir}/c.sock", workdir / "spool", workdir, extra_args=["-HB"]
    )
    with agent:
        proc = subprocess.run(
            [
                MILTERTEST,
                "-D",
                f"MILTER={spec}",
                "-D",
                f"DIR={HERE}",
                "-s",
                str(HERE / "daemon.lua"),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
    return Outcome(proc.returncode, proc.stdout, proc.stderr, TestMilter()), agent


@TRANSPORTS
def test_the_daemon(transport: str) -> None:
    """milter-agent itself, started as in production (-H -B, a rule and a program filter):
    the negotiated bits, a header added, a body replaced and a reject, read by miltertest."""
    if MILTERTEST is None:
        pytest.fail(INSTALL_HINT, pytrace=False)
    with tempfile.TemporaryDirectory(prefix="mt-") as workdir:
        outcome, agent = run_against_daemon(transport, Path(workdir))
        log = agent.log_text()
        leftovers = list((agent.spool_dir / "messages").iterdir())
    assert outcome.returncode == 0 and "ALL OK" in outcome.stdout, f"{outcome}\n{log}"
    assert agent.returncode == 0, log
    accepted, rejected = re.findall(r"INFO: (QID\d): .* decision=(\w+) .*filters=(.*)", log)
    assert accepted[:2] == ("QID1", "continue") and "rewrite:continue" in accepted[2]
    assert "stamp:" in accepted[2]
    assert rejected[:2] == ("QID2", "reject") and "rewrite:reject" in rejected[2]
    assert "Traceback" not in log and leftovers == []
