"""``milter-agent test``: one message file through the whole pipeline, without an MTA.

Not a second implementation: the message is fed, as milter commands encoded by the protocol
package, to the daemon's own :class:`~milter_agent.session.Session` with the daemon's own
services (configuration, engine, spool, negotiation), as Postfix would feed it. Real programs
run, as the daemon runs them: started as root, the test drops to the user of ``-u`` first
(and, like the daemon, refuses to stay root unless told ``-u root``). The report shows every
section in file order with its outcome (or why it did not run: an ``[Address]`` rule that did
not match, a section after the one that stopped the chain), the final answer and the changes
(headers and recipients added or removed, a unified diff of the body).

Exit status (``EXIT``): 0 delivered after the whole chain ran, 1 rejected, 2 usage or
configuration error, 3 tempfailed, 4 discarded, 5 accepted by a filter (delivered; the sections
after it did not run).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import difflib
import ipaddress
import json
import os
import socket
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from milter_agent import protocol as p
from milter_agent.config.options import CommandLine, build_parser, parse_command_line
from milter_agent.daemon import Daemon
from milter_agent.errors import ConfigError, SpoolError
from milter_agent.message import Message
from milter_agent.pipeline import Decision, StepResult, Verdict
from milter_agent.privileges import (
    check_installation_readable,
    drop_to,
    needed_paths,
    resolve_user,
)
from milter_agent.protocol.constants import Action, ProtocolFlag
from milter_agent.session import Session

EXIT = {"continue": 0, "reject": 1, "tempfail": 3, "discard": 4, "accept": 5}
EXIT_USAGE = 2
EXIT_STATUS = """\
exit status:
  0  delivered: the whole chain ran (continue)
  1  rejected
  2  usage or configuration error
  3  tempfailed
  4  discarded
  5  accepted by a filter: delivered, the sections after it did not run"""
TEST_DESCRIPTION = """\
Run the pipeline on a message file without an MTA, and report what every
section did, the answer and the changes. The daemon's options (-c FILE,
-u USER, -H, -B, -X, ...: see milter-agent --help) are accepted too and mean
the same. As root, filters run as the user of -u, as in the daemon."""
NOT_MATCHED, NOT_REACHED = "not matched", "not reached"
_HELP = ("-h", "--help")
_CHUNK = 65535


@dataclass(slots=True)
class Envelope:
    sender: str
    recipients: list[str]
    client_addr: str = "127.0.0.1"
    client_name: str = "localhost"
    helo: str = "localhost"
    queue_id: str = "OFFLINE"

    @property
    def family(self) -> str:
        """The milter protocol's address family of the client: "6" or "4"."""
        return "6" if ipaddress.ip_address(self.client_addr).version == 6 else "4"


def bare_address(text: str) -> str:
    """An address without its ``<>`` (given with or without): they are added once, on the
    wire, so ``<b@y>`` never becomes ``<<b@y>>``. ``<>`` is the null sender."""
    address = text.strip()
    if address.startswith("<") and address.endswith(">"):
        address = address[1:-1].strip()
    return address


def ip_address(text: str) -> str:
    """--client-addr: an IPv4 or IPv6 address, as an MTA would report it."""
    try:
        return str(ipaddress.ip_address(text.strip()))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an IP address: {text!r}") from None


@dataclass(slots=True)
class Report:
    """What happened to the message, for people (``text()``) and programs (``as_json()``)."""

    verdict: str = "continue"
    reply: str = ""
    steps: list[dict[str, Any]] = field(default_factory=list)
    headers_added: list[list[str]] = field(default_factory=list)
    headers_changed: list[list[Any]] = field(default_factory=list)
    recipients_added: list[str] = field(default_factory=list)
    recipients_removed: list[str] = field(default_factory=list)
    body_diff: str = ""

    def as_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2) + "\n"

    def text(self) -> str:
        lines = ["sections:"]
        for step in self.steps:
            ran = step["outcome"] not in (NOT_MATCHED, NOT_REACHED)
            took = f" ({step['ms']} ms)" if ran else ""
            detail = f"  [{step['detail']}]" if step["detail"] else ""
            lines.append(f"  {step['name']}: {step['outcome']}{took}{detail}")
        if not self.steps:
            lines.append("  (none applied)")
        lines.append(f"answer: {self.verdict}" + (f"  {self.reply}" if self.reply else ""))
        for name, value in self.headers_added:
            lines.append(f"header added: {name}: {value}")
        for name, index, value in self.headers_changed:
            change = f"set to: {value}" if value else "removed"
            lines.append(f"header {name} #{index} {change}")
        lines += [f"recipient added: {r}" for r in self.recipients_added]
        lines += [f"recipient removed: {r}" for r in self.recipients_removed]
        if self.body_diff:
            lines += ["body changed:", self.body_diff.rstrip("\n")]
        return "\n".join(lines) + "\n"


def split_message(data: bytes) -> tuple[list[tuple[str, str]], bytes]:
    """Headers (name, value after the colon, folding kept) and body, with CRLF line ends."""
    data = data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:  # no blank line: all headers, or a body without headers
        head, body = (data, b"") if b":" in data.split(b"\r\n", 1)[0] else (b"", data)
    headers: list[tuple[str, str]] = []
    for line in p.decode_text(head).split("\r\n") if head else []:
        if line[:1] in (" ", "\t") and headers:
            name, value = headers[-1]
            headers[-1] = (name, f"{value}\n{line}")
        elif ":" in line:
            name, value = line.split(":", 1)
            headers.append((name, value))
    return headers, body


def commands(envelope: Envelope, headers: list[tuple[str, str]], body: bytes) -> list[p.Command]:
    """The milter commands Postfix would send for this message."""
    client = {
        "j": socket.getfqdn(),
        "{client_addr}": envelope.client_addr,
        "{client_name}": envelope.client_name,
        "{daemon_name}": "offline",
    }
    out: list[p.Command] = [
        p.OptNeg(6, Action(0x1FF), ProtocolFlag(0x1FFFFF)),
        p.Macro(b"C", client),
        p.Connect(envelope.client_name, envelope.family, 25, envelope.client_addr),
        p.Helo(envelope.helo),
        p.Macro(b"M", {"{mail_addr}": envelope.sender}),
        p.Mail(f"<{envelope.sender}>"),
    ]
    out += [p.Rcpt(f"<{rcpt}>") for rcpt in envelope.recipients]
    out += [p.Data()]
    out += [p.Header(name, value) for name, value in headers]
    out += [p.EndOfHeaders()]
    out += [p.Body(body[i : i + _CHUNK]) for i in range(0, len(body), _CHUNK)]
    out += [p.Macro(b"E", {"i": envelope.queue_id}), p.EndOfMessage(), p.Quit()]
    return out


async def drive(session: Session, script: Sequence[p.Command]) -> list[p.Response]:
    """Feed the commands to the session as an MTA would; return what it answered at the end."""
    conn = session.conn
    answered: list[p.Response] = []
    for command in script:
        conn.receive_data(p.encode_command(command))
        event = conn.next_event()
        assert not isinstance(event, p.Sentinel)
        answered = []
        async for response in session.handle(event):
            conn.send(response)
            answered.append(response)
        if isinstance(command, p.EndOfMessage):
            return answered
        if answered and not isinstance(answered[-1], p.Continue | p.OptNegReply):
            return answered  # refused before end of message
    return answered


def section_steps(names: Sequence[str], decision: Decision | None) -> list[StepResult]:
    """Every section in file order with what it did, or why it did nothing: an [Address]
    rule that did not match leaves no step in the decision, nor does any section after the
    one that stopped the chain (or all of them, when the pipeline never ran)."""
    steps = {step.name: step for step in decision.steps} if decision else {}
    ran = [i for i, name in enumerate(names) if name in steps]
    stopped = decision is None or decision.verdict is not Verdict.CONTINUE
    last = ran[-1] if ran else -1
    out = [
        steps.get(name) or StepResult(name, NOT_REACHED if stopped and i > last else NOT_MATCHED)
        for i, name in enumerate(names)
    ]
    # and what is not a section: the session's own failure (spool, pipeline error)
    return out + [step for name, step in steps.items() if name not in set(names)]


def report(
    decision: Decision | None, answered: list[p.Response], body: bytes, names: Sequence[str]
) -> Report:
    out = Report(verdict=(decision or Decision()).verdict.value)
    for step in section_steps(names, decision):
        out.steps.append(
            {
                "name": step.name,
                "outcome": step.outcome,
                "ms": round(step.seconds * 1000, 1),
                "detail": step.detail,
            }
        )
    new_body = bytearray()
    for response in answered:
        match response:
            case p.ReplyCode():
                out.reply = response.text().replace("%%", "%")
            case p.AddHeader(name, value):
                out.headers_added.append([name, value.strip()])
            case p.ChangeHeader(index, name, value):
                out.headers_changed.append([name, index, value.strip()])
            case p.AddRecipient(rcpt):
                out.recipients_added.append(rcpt)
            case p.DeleteRecipient(rcpt):
                out.recipients_removed.append(rcpt)
            case p.ReplaceBody(chunk):
                new_body += chunk
    if new_body:
        old, new = (p.decode_text(b).splitlines(keepends=True) for b in (body, bytes(new_body)))
        out.body_diff = "".join(difflib.unified_diff(old, new, "body", "new body"))
    return out


def split_arguments(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """(the daemon's options, ours): the daemon's parser claims its options and their values.
    ``-h``/``--help`` stay ours, so that they show this subcommand's help."""
    args = list(argv)
    try:
        _, ours = build_parser().parse_known_args([a for a in args if a not in _HELP])
    except ConfigError:
        return [], args  # let our parser report the problem
    daemon: list[str] = []
    rest = iter(ours)
    pending = next(rest, None)
    for arg in args:
        if arg in _HELP:
            continue
        if arg == pending:
            pending = next(rest, None)
        else:
            daemon.append(arg)
    return daemon, [a for a in args if a in _HELP] + list(ours)


def build_test_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="milter-agent test",
        usage="%(prog)s [daemon options] --from SENDER --rcpt RCPT [--rcpt RCPT ...] "
        "[options] MESSAGE",
        description=TEST_DESCRIPTION,
        epilog=EXIT_STATUS,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("message", type=Path, help="the message file (RFC 5322, LF or CRLF)")
    parser.add_argument(
        "--from",
        dest="sender",
        required=True,
        type=bare_address,
        help='envelope sender, with or without <> ("" or <> for the null sender)',
    )
    parser.add_argument(
        "--rcpt",
        action="append",
        required=True,
        type=bare_address,
        help="a recipient, with or without <> (repeat for more)",
    )
    parser.add_argument(
        "--client-addr",
        default="127.0.0.1",
        type=ip_address,
        metavar="ADDR",
        help="client IPv4 or IPv6 address (default: 127.0.0.1)",
    )
    parser.add_argument(
        "--client-name",
        default="localhost",
        metavar="NAME",
        help="client host name (default: localhost)",
    )
    parser.add_argument(
        "--helo", default="localhost", metavar="NAME", help="HELO/EHLO name (default: localhost)"
    )
    parser.add_argument(
        "--queue-id", default="OFFLINE", metavar="ID", help="queue id (default: OFFLINE)"
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    return parser


def run_test(argv: Sequence[str]) -> int:
    """``milter-agent test ...``: see the module docstring."""
    daemon_args, ours = split_arguments(argv)
    options = build_test_parser().parse_args(ours)
    try:
        command_line = parse_command_line(daemon_args)
        data = options.message.read_bytes()
    except (ConfigError, OSError) as exc:
        print(f"milter-agent test: {exc}", file=sys.stderr)
        return EXIT_USAGE
    envelope = Envelope(
        options.sender,
        options.rcpt,
        options.client_addr,
        options.client_name,
        options.helo,
        options.queue_id,
    )
    try:
        result = asyncio.run(test_message(command_line, envelope, data))
    except (ConfigError, SpoolError) as exc:
        print(f"milter-agent test: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(result.as_json() if options.json else result.text(), end="")
    return EXIT[result.verdict]


def become_user(daemon: Daemon, command_line: CommandLine, spool_dir: Path) -> None:
    """As the daemon does after binding: as root, become the user of ``-u`` (root only when
    asked with ``-u root``), so that filters run with the rights they will have in service.
    The private spool is handed to that user first."""
    account = resolve_user(daemon.store.current.settings.user, command_line.given("user"))
    owner = account.owner if account else None
    if owner is not None:
        os.chown(spool_dir, *owner)
    daemon.spool.prepare(owner)
    if account is not None:
        needed = needed_paths()
        drop_to(account)
        check_installation_readable(account, needed)


async def test_message(command_line: CommandLine, envelope: Envelope, data: bytes) -> Report:
    """The report for one message, through the daemon's own session and services."""
    with tempfile.TemporaryDirectory(prefix="milter-agent-test-") as spool_dir:
        daemon = Daemon(command_line, spool_dir=spool_dir)
        become_user(daemon, command_line, Path(spool_dir))
        seen: list[Decision] = []

        def done(_message: Message, decision: Decision, _seconds: float) -> None:
            seen.append(decision)

        services = dataclasses.replace(daemon.services(), on_message_done=done)
        session = Session(services, "offline")
        headers, body = split_message(data)
        answered = await drive(session, commands(envelope, headers, body))
        session.close()
    names = [section.name for section in daemon.engine.config.sections]
    return report(seen[-1] if seen else None, answered, body, names)
