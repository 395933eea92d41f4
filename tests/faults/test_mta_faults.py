"""The MTA misbehaves: it hangs up at every stage, floods us with connections, says nothing,
claims huge packets, sends commands out of order. Postfix would never do most of this, so a
direct protocol client plays the MTA. After every fault the daemon must be back to its baseline
(faultkit.settle) and answer the next message correctly."""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from faults.faultkit import (
    POSTFIX_OFFER,
    Baseline,
    MilterClient,
    Packet,
    baseline,
    children,
    message_commands,
    settle,
    spool_files,
    status,
    write_script,
)
from milter_agent import protocol as p
from support.daemon import MilterAgentDaemon
from support.util import wait_until

Agent = Callable[..., MilterAgentDaemon]

CHECK = """#!/bin/sh
# $1 = the message, $2 = the header file
case "$(grep -m1 '^Subject:' "$1")" in
  *reject*) echo "rejected by the test filter"; exit 1 ;;
  *sleep*) sleep 1 ;;
  *hang*) sleep 3600 ;;
esac
echo "X-Checked: yes" > "$2"
"""


def config(tmp_path: Path, extra: str = "") -> str:
    script = write_script(tmp_path / "check.sh", CHECK)
    return f"""{extra}
[Filter]
task_name = check
reject_exit_codes = "1"
exec_cmd = "{script} %f %h"
"""


def checked(got: list[Packet]) -> bool:
    return got == [(b"h", b"X-Checked\0 yes\0"), (b"c", b"")]


def start(
    milter_agent: Agent,
    tmp_path: Path,
    *,
    inet: bool = False,
    args: tuple[str, ...] = (),
    extra: str = "",
) -> tuple[MilterAgentDaemon, Baseline]:
    agent = milter_agent(config(tmp_path, extra), inet=inet, extra_args=["-H", *args])
    return agent, baseline(agent, checked)


def partial(agent: MilterAgentDaemon, stage: str) -> None:
    """Play the MTA up to ``stage`` and hang up there."""
    mta = MilterClient(agent.socket_spec)
    try:
        if stage == "connected":
            return
        if stage == "mid-optneg":
            mta.raw(p.encode_command(p.OptNeg(6, p.Action(0x1FF), p.ProtocolFlag(0)))[:7])
            return
        mta.handshake()
        if stage == "after-helo":
            return
        commands = message_commands(subject="sleep" if stage == "during-eom" else "hello")
        body = p.Body(b"x" * 60_000 + b"\r\n")
        commands[commands.index(p.Body(b"hello\r\n"))] = body
        stop_before = {
            "mid-packet": p.Rcpt("<b@example.net>"),
            "after-mail": p.Rcpt("<b@example.net>"),
            "after-data": p.Header("From", " <a@example.org>"),
            "mid-header": p.Header("Subject", " hello"),
            "mid-body": p.EndOfHeaders(),
            "before-eom": p.EndOfMessage(),
            "during-eom": None,
        }[stage]
        for command in commands:
            if command == stop_before:
                if stage == "mid-packet":
                    mta.raw(p.encode_command(command)[:6])
                elif stage == "mid-body":
                    mta.command(command)
                    mta.raw(p.encode_command(body)[:30_000])
                break
            if isinstance(command, p.EndOfMessage):
                mta.raw(p.encode_command(command))
                # hang up once the filter runs (a reset any earlier would discard the EOM)
                wait_until(lambda: children(agent.pid), 5, interval=0.01)
                break
            mta.command(command)
    finally:
        if stage == "abortive" or "eom" in stage:
            mta.abort_close()
        else:
            mta.close()


STAGES = [
    "connected",
    "mid-optneg",
    "after-helo",
    "after-mail",
    "mid-packet",
    "after-data",
    "mid-header",
    "mid-body",
    "before-eom",
    "during-eom",
]


@pytest.mark.parametrize("inet", [False, True], ids=["unix", "inet"])
def test_hang_up_at_every_stage(tmp_path: Path, milter_agent: Agent, inet: bool) -> None:
    agent, base = start(milter_agent, tmp_path, inet=inet)
    for stage in STAGES:
        partial(agent, stage)
        settle(agent, base)
    log = agent.log_text()
    assert "connection closed in the middle of a packet" in log
    assert "Traceback" not in log
    assert "the MTA hung up while the message was being decided" in log
    verdicts = status(agent)["verdicts"]
    # during-eom: the daemon notices the hang-up at once and drops the message undecided
    assert verdicts == {"continue": len(STAGES) + 1}, verdicts


def test_hang_up_while_a_filter_hangs_kills_the_filter(tmp_path: Path, milter_agent: Agent) -> None:
    """The MTA gives up on a message whose filter hangs (Postfix: milter_content_timeout). The
    daemon notices at its next PROGRESS packet; the abandoned filter must not live on holding
    a process, its pipes and the spool file until its own (here: long) timeout."""
    # the PROGRESS packets are what tells the daemon that the MTA is gone
    agent, base = start(milter_agent, tmp_path, args=("-T",), extra="progress_interval = 0.2")
    with MilterClient(agent.socket_spec) as mta:
        mta.handshake()
        for command in message_commands(subject="hang")[:-1]:
            mta.command(command)
        mta.raw(p.encode_command(p.EndOfMessage()))
        time.sleep(0.3)  # the filter is running now
        assert spool_files(agent)
        mta.abort_close()
    settle(agent, base, timeout=8)


def test_thousand_connections_opened_and_dropped_at_once(
    tmp_path: Path, milter_agent: Agent
) -> None:
    agent, base = start(milter_agent, tmp_path)
    path = agent.socket.path
    assert path is not None
    socks: list[socket.socket] = []
    optneg = p.encode_command(p.OptNeg(6, p.Action(0x1FF), p.ProtocolFlag(0x1FFFFF)))
    mail = b"".join(p.encode_command(c) for c in message_commands()[:4])  # up to DATA
    connect = p.encode_command(p.Connect("h", "4", 1, "192.0.2.9"))
    try:
        for i in range(1000):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(10)
            s.connect(path)
            socks.append(s)
            if i % 3 == 1:
                s.sendall(optneg)
            elif i % 3 == 2:  # unanswered commands pile up: the daemon answers them in order
                s.sendall(optneg + connect + mail)
        # wait until the daemon has seen them all, some with a message (and a spool file) open
        deadline = time.monotonic() + 20
        while status(agent)["connections_now"] < 1000:
            assert time.monotonic() < deadline, status(agent)
            time.sleep(0.1)
    finally:
        for s in socks:
            s.close()
    settle(agent, base, timeout=20)
    assert status(agent)["connections_total"] >= 1001


def test_silent_connections_are_closed_by_the_io_timeout(
    tmp_path: Path, milter_agent: Agent
) -> None:
    agent, base = start(milter_agent, tmp_path, args=("-t", "1"))
    silent = MilterClient(agent.socket_spec)
    midway = MilterClient(agent.socket_spec)
    midway.handshake()
    for command in message_commands()[:5]:  # MAIL RCPT DATA From: -> a spool file is open
        midway.command(command)
    assert len(spool_files(agent)) == 1
    started = time.monotonic()
    assert silent.wait_closed(10) == b""
    assert midway.wait_closed(10) == b""
    assert 0.8 < time.monotonic() - started < 5
    silent.close()
    midway.close()
    settle(agent, base)
    assert agent.log_text().count("no data from the MTA for 1.0s") == 2


@pytest.mark.parametrize("claimed", [2**31, 2**32 - 1, 1024 * 1024 + 1])
def test_huge_packet_claims_are_refused_without_allocating(
    tmp_path: Path, milter_agent: Agent, claimed: int
) -> None:
    agent, base = start(milter_agent, tmp_path)
    peak = agent.peak_rss_kb()
    with MilterClient(agent.socket_spec) as mta:
        mta.handshake()
        mta.raw(struct.pack(">I", claimed) + b"B" + b"x" * 60_000)
        assert mta.wait_closed() == b""
    settle(agent, base)
    assert agent.peak_rss_kb() - peak < 4096, "the claimed length was allocated"
    assert f"packet length {claimed} exceeds the limit" in agent.log_text()


#: (name, handshake first?, commands; the last one is out of order)
OUT_OF_ORDER: list[tuple[str, bool, list[p.Command]]] = [
    ("connect-before-optneg", False, [p.Connect("h", "4", 1, "192.0.2.1")]),
    ("mail-before-connect", False, [POSTFIX_OFFER, p.Mail("<a@b>")]),
    ("second-optneg", True, [POSTFIX_OFFER]),
    ("connect-twice", True, [p.Connect("h", "4", 1, "192.0.2.1")]),
    ("rcpt-before-mail", True, [p.Rcpt("<b@c>")]),
    ("data-before-mail", True, [p.Data()]),
    ("header-before-mail", True, [p.Header("Subject", " x")]),
    ("body-before-mail", True, [p.Body(b"x")]),
    ("eom-before-mail", True, [p.EndOfMessage()]),
    ("eom-after-eom", True, [*message_commands(), p.EndOfMessage()]),
]


def test_commands_out_of_order_get_a_protocol_error(tmp_path: Path, milter_agent: Agent) -> None:
    agent, base = start(milter_agent, tmp_path)
    for name, handshake, commands in OUT_OF_ORDER:
        with MilterClient(agent.socket_spec) as mta:
            if handshake:
                mta.handshake()
            *good, bad = commands
            for command in good:
                mta.command(command)
            mta.raw(p.encode_command(bad))
            assert mta.wait_closed() == b"", name
        settle(agent, base)
    log = agent.log_text()
    assert log.count("protocol error:") == len(OUT_OF_ORDER), log
    assert "Traceback" not in log


def test_unknown_and_empty_packets(tmp_path: Path, milter_agent: Agent) -> None:
    agent, base = start(milter_agent, tmp_path)
    for wire in (b"\0\0\0\0", b"\0\0\0\x01Z", b"\0\0\0\x01\xff", b"\0\0\0\x02O\0"):
        with MilterClient(agent.socket_spec) as mta:
            mta.raw(wire)
            assert mta.wait_closed() == b""
        settle(agent, base)


def test_mta_that_stops_reading_is_bounded_by_the_io_timeout(
    tmp_path: Path, milter_agent: Agent
) -> None:
    """-t bounds waiting for the MTA both ways: an MTA that sends the end of message and then
    never reads our answer (here a new body far bigger than the socket buffers) must not hold
    the connection, the new-body file and the session forever."""
    body = write_script(
        tmp_path / "body.sh", "#!/bin/sh\nhead -c 20000000 /dev/zero | tr '\\0' 'x' > \"$1\"\n"
    )
    agent = milter_agent(
        f'[Filter]\ntask_name = body\nexec_cmd = "{body} %n"\n', extra_args=["-B", "-t", "1"]
    )

    def new_body(got: list[Packet]) -> bool:
        size = sum(len(payload) for kind, payload in got if kind == b"b")
        return size == 20_000_000 and got[-1] == (b"c", b"")

    base = baseline(agent, new_body)
    with MilterClient(agent.socket_spec) as mta:
        mta.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        mta.handshake()
        for command in message_commands()[:-1]:
            mta.command(command)
        mta.raw(p.encode_command(p.EndOfMessage()))
        # ... and read nothing from now on
        settle(agent, base, timeout=15)
