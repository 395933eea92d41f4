"""Injection: message data never becomes code, file names or protocol structure.

- Senders, recipients, the subject, HELO, client name and address, macros carrying shell
  metacharacters, ``$(...)``, backticks, ``%`` sequences, ``../``, newlines and 8-bit bytes reach
  the program as single, inert arguments and environment values, byte for byte.
- Spool and result file names are random hex, never derived from message data.
- Reply texts and header values a filter hands back are stripped of CR/LF/NUL and bounded before
  they go to the MTA.
A direct protocol client plays the MTA so that every field can carry what Postfix would refuse.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import socket
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from faults.faultkit import (
    MilterClient,
    Packet,
    baseline,
    message_commands,
    settle,
    write_script,
)
from milter_agent import logsetup
from milter_agent import protocol as p
from support.daemon import MilterAgentDaemon
from support.postfix import PostfixInstance
from support.sink import SmtpSink
from support.smtp import build_message, send_message

Agent = Callable[..., MilterAgentDaemon]

DUMP = """
import json, os, sys
out, message = sys.argv[1], sys.argv[2]
with open(out, "w") as f:
    json.dump({
        "argv": [os.fsencode(a).hex() for a in sys.argv[2:]],
        "env": {k.decode(): v.hex() for k, v in os.environb.items()},
        "cwd": os.getcwd(),
        "files": sorted(os.listdir(".")),
        "message": open(message, "rb").read().hex(),
    }, f)
"""

SPOOL_NAME = re.compile(r"[0-9a-f]{16}\.(msg|reply|body|hdr)")


def hostile(marker: Path) -> list[str]:
    """Values that would do harm if anything evaluated them; all free of NUL (the protocol's
    string terminator) and of leading/trailing blanks (addresses are trimmed)."""
    return [
        f"x;touch {marker}",
        f"$(touch {marker})",
        f"`touch {marker}`",
        f"|touch {marker}&&touch {marker}>{marker}",
        "'\"\\ * ? ~root [a] {a,b} !! #",
        "../../../../etc/passwd",
        "%f %s %{sender} %% %n %h %0 %{macro:j}",
        "-rf --help",
        "a\nb\r\nc\td",
        "\x1b[31m\x07\x7f",
        "Gr\u00fc\u00dfe \u2028 \udcff\udcfe raw 8-bit",
    ]


def expected_argv(values: dict[str, object]) -> list[bytes]:
    def b(s: object) -> bytes:
        return str(s).encode("utf-8", "surrogateescape")

    rcpts = values["recipients"]
    assert isinstance(rcpts, list)
    return [
        b(values["sender"]),
        *(b(r) for r in rcpts),
        b(values["subject"]),
        b(values["helo"]),
        b(values["client_name"]),
        b(values["client_addr"]),
        b(values["queue_id"]),
        b(values["j"]),
        b(f"pre-{values['sender']}-post"),
    ]


def test_hostile_values_reach_the_program_as_inert_single_arguments(
    tmp_path: Path, milter_agent: Agent
) -> None:
    marker = tmp_path / "pwned"
    dump = write_script(tmp_path / "dump.py", DUMP)
    out = tmp_path / "seen.json"
    agent = milter_agent(
        f"""
[Filter]
task_name = dump
exec_cmd = "{sys.executable} {dump} {out} %f %s %{{recipients}} %{{subject}} %{{helo}} %{{client_name}} %{{client_addr}} %{{queue_id}} %{{macro:j}} pre-%s-post %r %n %h"
""",
        extra_args=["-HB"],
    )
    base = baseline(agent, lambda got: got == [(b"c", b"")])
    values = hostile(marker)
    # over-long, yet within one argument's 128 KiB (MAX_ARG_STRLEN), and all of them together
    # (about 15 copies in argv and environment) within ARG_MAX
    long_value = "L" * 60_000
    for i, evil in enumerate([*values, long_value]):
        sender = f"{evil}@example.org"
        rcpts = [f"{evil}{n}@example.net" for n in range(2)]
        subject = f"{evil} and more"
        with MilterClient(agent.socket_spec) as mta:
            assert mta.command(p.OptNeg(6, p.Action(0x1FF), p.ProtocolFlag(0x1FFFFF)))
            mta.command(p.Macro(b"C", {"j": evil}))
            assert mta.command(p.Connect(evil, "4", 25, evil)) == [(b"c", b"")]
            assert mta.command(p.Helo(evil)) == [(b"c", b"")]
            commands = message_commands(
                sender=f"<{sender}>",
                recipients=[f"<{r}>" for r in rcpts],
                subject=subject,
                headers=[("X-Evil", " " + evil)],
                body=evil.encode("utf-8", "surrogateescape") + b"\r\n",
                queue_id=evil,
            )
            assert mta.message(commands) == [(b"c", b"")], evil
        seen = json.loads(out.read_text())
        argv = [bytes.fromhex(a) for a in seen["argv"]]
        message_file, *rest = argv[:-3]
        result_files = argv[-3:]
        # the subject as a person reads it: folding removed, outer blanks trimmed
        subject_text = re.sub(r"\r?\n[ \t]*", " ", subject).strip()
        assert rest == expected_argv(
            {
                "sender": sender,
                "recipients": rcpts,
                "subject": subject_text,
                "helo": evil,
                "client_name": evil,
                "client_addr": evil,
                "queue_id": evil,
                "j": evil,
            }
        ), (i, evil)
        env = {k: bytes.fromhex(v) for k, v in seen["env"].items()}
        assert env["MILTER_SENDER"] == sender.encode("utf-8", "surrogateescape")
        assert env["MILTER_SUBJECT"] == subject_text.encode("utf-8", "surrogateescape")
        assert env["MILTER_QUEUE_ID"] == evil.encode("utf-8", "surrogateescape")
        # file names: random hex in the private spool, whatever the message says
        assert seen["cwd"] == str(agent.spool_dir / "messages")
        for path in (message_file, *result_files):
            assert Path(path.decode()).parent == agent.spool_dir / "messages"
            assert SPOOL_NAME.fullmatch(Path(path.decode()).name), path
        assert all(SPOOL_NAME.fullmatch(name) for name in seen["files"]), seen["files"]

        # the spooled message holds the data as data, byte for byte (line ends as CRLF)
        def line(name: str, raw: str) -> bytes:
            value = re.sub(rb"\r?\n", b"\r\n", raw.encode("utf-8", "surrogateescape"))
            return name.encode() + b":" + value + b"\r\n"

        assert bytes.fromhex(seen["message"]) == (
            line("From", f" <{sender}>")
            + line("Subject", f" {subject}")
            + line("X-Evil", f" {evil}")
            + b"\r\n"
            + evil.encode("utf-8", "surrogateescape")
            + b"\r\n"
        ), (i, evil)
        assert not marker.exists()
        settle(agent, base)
    assert "Traceback" not in agent.log_text()


def test_a_value_too_long_for_an_argument_is_a_filter_error_not_a_silent_pass(
    tmp_path: Path, milter_agent: Agent
) -> None:
    """Over 128 KiB in one argument (or environment string) the kernel refuses to start the
    program (E2BIG). Postfix's header_size_limit (100 KiB) keeps a Subject below that, but a
    different MTA might not: the message must still get a definite answer (-E: tempfail)."""
    agent = milter_agent(
        '[Filter]\ntask_name = subj\nexec_cmd = "/bin/true %{subject}"\n', extra_args=["-E"]
    )
    base = baseline(agent, lambda got: got == [(b"c", b"")])
    with MilterClient(agent.socket_spec) as mta:
        mta.handshake()
        assert mta.message(message_commands(subject="S" * 200_000)) == [(b"t", b"")]
    assert "cannot run '/bin/true': Argument list too long" in agent.log_text()
    settle(agent, base)


HOSTILE_REPLY = (
    "first line\rsecond after a bare CR\r\n550 5.0.0 a fake second reply\n"
    "nul\0byte and \x1b[2J escape and \x7f\n"
    + "\n".join(f"line {i} with %s %d %% and 100%" for i in range(40))
    + "\n"
    + "X" * 5000
    + "\n"
)

HOSTILE_HEADERS = (
    "X-A: first\rX-Smuggled-By-CR: evil\n"
    "X-B: " + "b" * 10_000 + "\n"  # cut to 8 KiB (and the file is read up to 16 KiB)
    "X-C: nul\0inside\n"
    "X-D: folded\n\tcontinued\n"
    "X-E: bare\n\n\nafter blank lines\n"
    "Not a header line\n"
    "X-F:\n"
    "Bad Name: x\n"
)

#: A module that answers like the hostile program: ``text`` rejects with HOSTILE_REPLY as its
#: ModuleResult text; ``files`` writes HOSTILE_REPLY and HOSTILE_HEADERS to %r and %h (as a
#: program would) and adds an over-long header; ``cr``, ``lf``, ``nul`` add a header whose value
#: carries that character.
HOSTILE_MODULE = f"""
from milter_agent.filters.module_api import ModuleResult
REPLY = {HOSTILE_REPLY!r}
HEADERS = {HOSTILE_HEADERS!r}
BAD = {{"cr": "a\\rX-Injected: cr", "lf": "a\\nX-Injected: lf", "nul": "a\\0b"}}
def process_message_by_module(args, message):
    mode, reply_file, header_file = args
    if mode == "text":
        return ModuleResult("reject", text=REPLY)
    if mode == "files":
        for path, text in ((reply_file, REPLY), (header_file, HEADERS)):
            with open(path, "w", newline="") as f:
                f.write(text)
        return ModuleResult(add_headers=[("X-Long", "L" * 10_000)])
    return ModuleResult(add_headers=[("X-Bad", BAD[mode])])
"""

#: Who answers: a program, a module in the daemon, a module in a worker process.
KINDS = ["program", "module", "module-safe"]


def reply_filter(tmp_path: Path, exit_code: int) -> str:
    reply = tmp_path / "reply.txt"
    reply.write_text(HOSTILE_REPLY)
    headers = tmp_path / "headers.txt"
    headers.write_text(HOSTILE_HEADERS)
    script = write_script(
        tmp_path / "answer.sh",
        f'#!/bin/sh\ncat {reply} > "$1"\ncat {headers} > "$2"\nexit {exit_code}\n',
    )
    return f"""
[Filter]
task_name = answer
reject_exit_codes = "1"
exec_cmd = "{script} %r %h"
"""


def module_filter(tmp_path: Path, mode: str, *, safe: bool) -> str:
    module = tmp_path / "hostile.py"
    module.write_text(HOSTILE_MODULE)
    return f"""
[Filter]
task_name = answer
module_name = "{module}"
module_safe_use = {"yes" if safe else "no"}
run_single_instance = 1
exec_cmd = "{mode} %r %h"
"""


def answering(tmp_path: Path, milter_agent: Agent, kind: str, *, reply: bool) -> MilterAgentDaemon:
    if kind == "program":
        config = reply_filter(tmp_path, 1 if reply else 0)
    else:
        config = module_filter(tmp_path, "text" if reply else "files", safe=kind == "module-safe")
    return milter_agent(config, extra_args=["-HG"])


def workers(kind: str) -> int:
    """The children settle allows: the one worker of a safe-mode module."""
    return 1 if kind == "module-safe" else 0


def reply_is_clean(got: list[Packet]) -> bool:
    ((kind, payload),) = got
    assert kind == b"y"
    text = payload.rstrip(b"\0")
    assert b"\0" not in text
    lines = text.split(b"\r\n")
    assert 1 <= len(lines) <= 32
    for i, line in enumerate(lines):
        assert b"\r" not in line and b"\n" not in line
        assert line.startswith(b"550 5.7.1 " if i == len(lines) - 1 else b"550-5.7.1 "), line
        assert len(line) <= 980, len(line)
        assert all(len(run) % 2 == 0 for run in re.findall(rb"%+", line)), line
        assert not re.search(rb"[\x00-\x08\x0a-\x1f]", line), line
    # a bare CR is no line break (only LF is): it becomes a blank inside the line
    assert lines[0] == b"550-5.7.1 first line second after a bare CR"
    # a line that looks like a reply of its own is only text inside ours
    assert b"550-5.7.1 550 5.0.0 a fake second reply" in lines
    return True


@pytest.mark.parametrize("kind", KINDS)
def test_reply_text_from_a_filter_is_clean_and_bounded(
    tmp_path: Path, milter_agent: Agent, kind: str
) -> None:
    agent = answering(tmp_path, milter_agent, kind, reply=True)
    base = baseline(agent, reply_is_clean)  # the warm-up message gets the hostile reply
    settle(agent, base, children_allowed=workers(kind))  # and so does the next one


def header_name(packet: Packet) -> bytes:
    kind, payload = packet
    return (payload[4:] if kind == b"m" else payload).split(b"\0")[0]


def assert_header_packet_is_clean(packet: Packet) -> None:
    kind, payload = packet
    if kind == b"m":
        payload = payload[4:]
    name, value, rest = payload.split(b"\0")
    assert rest == b""
    assert re.fullmatch(rb"[!-9;-~]+", name), name
    assert b"\r" not in value
    for continuation in value.split(b"\n")[1:]:
        assert continuation[:1] in (b" ", b"\t"), value  # folding only, never a new header
    assert len(value) <= 8 * 1024 + 64


def headers_are_clean(got: list[Packet]) -> bool:
    assert got[-1] == (b"c", b"")
    actions = got[:-1]
    assert actions and all(kind in (b"h", b"m") for kind, _ in actions), got
    for packet in actions:
        assert_header_packet_is_clean(packet)
    names = [header_name(packet) for packet in actions]
    assert b"Bad Name" not in names and b"Not a header line" not in names
    assert b"X-Smuggled-By-CR" not in names  # a bare CR inside a line does not end it
    return True


@pytest.mark.parametrize("kind", KINDS)
def test_header_values_from_a_filter_are_clean_and_bounded(
    tmp_path: Path, milter_agent: Agent, kind: str
) -> None:
    agent = answering(tmp_path, milter_agent, kind, reply=False)
    base = baseline(agent, headers_are_clean)
    with MilterClient(agent.socket_spec) as mta:
        mta.handshake()
        got = mta.message(message_commands(headers=[("X-A", " original")]))
    assert headers_are_clean(got)
    if kind != "program":  # the module's own over-long header: cut to 8 KiB
        (long,) = [payload for kind, payload in got if header_name((kind, payload)) == b"X-Long"]
        assert long == b"X-Long\0 " + b"L" * 8 * 1024 + b"\0"
    assert "not a 'Name: value' header line" in agent.log_text()
    settle(agent, base, children_allowed=workers(kind))


@pytest.mark.parametrize("safe", [False, True], ids=["module", "module-safe"])
@pytest.mark.parametrize("char", ["cr", "lf", "nul"])
def test_module_header_value_with_cr_lf_or_nul_is_refused(
    tmp_path: Path, milter_agent: Agent, char: str, safe: bool
) -> None:
    """A module's header value is refused whole, not repaired: its result is a filter error
    (-E: tempfail) and nothing of it reaches the MTA."""
    agent = milter_agent(module_filter(tmp_path, char, safe=safe), extra_args=["-HGE"])
    base = baseline(agent, lambda got: got == [(b"t", b"")])
    assert "returned a bad ModuleResult: a header value must not contain CR, LF or NUL" in (
        agent.log_text()
    )
    settle(agent, base, children_allowed=int(safe))
    assert "X-Injected" not in agent.log_text()


def test_message_data_echoed_by_a_filter_never_becomes_a_header_of_its_own(
    tmp_path: Path, postfix: PostfixInstance, sink: SmtpSink, milter_agent: Agent
) -> None:
    echo = write_script(
        tmp_path / "echo.sh",
        '#!/bin/sh\nprintf \'X-Seen-Subject: %s\\n\' "$MILTER_SUBJECT" > "$1"\n',
    )
    agent = milter_agent(f'[Filter]\ntask_name = echo\nexec_cmd = "{echo} %h"\n', extra_args=["-H"])
    postfix.set_milter(agent.postfix_spec)
    # Form feed, VT and FS are 7-bit and passed on by Postfix; NEL and U+2028 arrive as UTF-8.
    separators = ["\x0c", "\x0b", "\x1c", "\r", "\x85", "\u2028", "\u2029"]
    for n, separator in enumerate(separators):
        subject = f"hello {n}{separator}X-Spam-Flag: NO"
        result = send_message(
            postfix.address, "a@example.org", ["b@example.net"], build_message(subject=subject)
        )
        assert result.accepted, result
    messages = sink.wait_for(len(separators))
    for msg in messages:
        assert msg.header_values("X-Spam-Flag") == [], msg.data[:400]
        (seen,) = msg.header_values("X-Seen-Subject")
        assert "X-Spam-Flag: NO" in seen  # still there, as text inside the one header


# --- log lines: one record, one line, whatever the MTA sends -----------------------------------

#: A sender that tries to end our log record and start a forged one of its own.
FORGED = "x\n2024-01-01 00:00:00,000 milter-agent[1] INFO: QID0: client=forged decision=continue"
LOG_VALUES = ["a\nb\r\nc\td", FORGED, "esc\x1b[2J del\x7f nel\x85 ls\u2028 nul-free", "raw\udcff"]
STDERR_LINE = re.compile(
    r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} milter-agent\[(\d+)\] "
    r"(?:DEBUG|DETAIL|INFO|WARNING|ERROR|CRITICAL): (.*)"
)
STDOUT_LINE = re.compile(r"<[2-7]>(.*)")
MESSAGE_LINE = re.compile(r" rcpts=\d+ size=\d+ decision=\w+ time=")
#: What no log line may hold raw (TAB included: it is escaped as well).
RAW_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")

NOISY = """#!/bin/sh
# a careless filter: its arguments (message data) on stderr, which the daemon logs
printf 'arg: %s\\n' "$@" >&2
printf '%s' "$1"
"""


class StdoutDaemon(MilterAgentDaemon):
    """A daemon logging to stdout (journald's format); ready and log checks read stdout."""

    def log_text(self) -> str:
        return self.stdout_text()


def start_logging_daemon(tmp_path: Path, target: str) -> MilterAgentDaemon:
    noisy = write_script(tmp_path / "noisy.sh", NOISY)
    work = tmp_path / "agent"
    work.mkdir()
    config = work / "milter-agent.conf"
    config.write_text(
        "[Filter]\ntask_name = noisy\n"
        f'exec_cmd = "{noisy} %s %{{recipients}} %{{subject}} %{{client_name}} %{{queue_id}}"\n'
    )
    cls = StdoutDaemon if target == "stdout" else MilterAgentDaemon
    agent = cls(
        config,
        f"unix:{work}/milter.sock",
        f"unix:{work}/control.sock",
        work / "spool",
        work,
        extra_args=["-l", "9", "-v", "-I", "--log-target", target],
    )
    agent.start()
    return agent


@pytest.mark.parametrize("target", ["stderr", "stdout"])
def test_every_log_record_is_one_line_whatever_the_mta_sends(tmp_path: Path, target: str) -> None:
    agent = start_logging_daemon(tmp_path, target)
    try:
        base = baseline(agent, expect=lambda got: got == [(b"c", b"")])
        for n, value in enumerate(LOG_VALUES):
            with MilterClient(agent.socket_spec) as mta:
                mta.command(p.OptNeg(6, p.Action(0x1FF), p.ProtocolFlag(0x1FFFFF)))
                assert mta.command(p.Connect(value, "4", 25, "192.0.2.1")) == [(b"c", b"")]
                assert mta.command(p.Helo(value)) == [(b"c", b"")]
                commands = message_commands(
                    sender=f"<{value}@example.org>",
                    recipients=[f"<{value}@example.net>"],
                    subject=value,
                    queue_id=f"Q{n}{value}",
                )
                assert mta.message(commands) == [(b"c", b"")], value
            settle(agent, base)
        raw = (agent.stdout_path if target == "stdout" else agent.stderr_path).read_bytes()
    finally:
        agent.stop()
    assert_one_record_per_line(raw, target, agent.pid)
    text = raw.decode()
    # one line per message (the warm-up, the hostile ones, one from each settle), every value
    # escaped on it
    decisions = [line for line in text.splitlines() if MESSAGE_LINE.search(line)]
    assert len(decisions) == 1 + 2 * len(LOG_VALUES), decisions
    assert r"Q0a\nb\r\nc\td: client=a\nb\r\nc\td[192.0.2.1] from=<a\nb\r\nc\td@example.org>" in text
    assert r"from=<raw\xff@example.org>" in text
    assert r"ls\u2028 nul-free" in text and r"esc\x1b[2J del\x7f nel\x85" in text
    assert r"arg: a\nb\r\nc\td@example.org" in text  # the program's stderr, too
    assert "Traceback" not in text and "Logging error" not in agent.log_text()


def assert_one_record_per_line(raw: bytes, target: str, pid: int) -> None:
    """Every line is a whole record of the daemon's, printable, in valid UTF-8."""
    text = raw.decode("utf-8")  # strict: no raw 8-bit byte reached the log
    assert text.endswith("\n")
    for line in text[:-1].split("\n"):
        if target == "stdout":
            match = STDOUT_LINE.fullmatch(line)
        else:
            match = STDERR_LINE.fullmatch(line)
            assert match is None or int(match.group(1)) == pid, line
        assert match is not None, f"not a record of its own: {line!r}"
        assert not RAW_CONTROL.search(line), line
        assert not line.lstrip("<0123456789>").startswith("2024-01-01"), line


@pytest.mark.parametrize(
    ("text", "escaped"),
    [
        ("plain Grüße ✓ text", "plain Grüße ✓ text"),
        ("a\nb\r\nc\td", r"a\nb\r\nc\td"),
        ("\x00\x01\x1b\x1f", r"\x00\x01\x1b\x1f"),
        ("del\x7f nel\x85 c1\x9f nbsp\xa0", r"del\x7f nel\x85 c1\x9f nbsp" + "\xa0"),
        ("ls\u2028ps\u2029", r"ls\u2028ps\u2029"),
        ("raw\udcff\udc80", r"raw\xff\x80"),
        ("lone\ud800", r"lone\ud800"),
        ("back\\slash \\n", r"back\\slash \\n"),  # a literal "\n" stays apart from a newline
    ],
)
def test_escape_controls(text: str, escaped: str) -> None:
    assert logsetup.escape_controls(text) == escaped


def record(message: str, *args: object, exc: bool = False) -> logging.LogRecord:
    info = None
    if exc:
        try:
            raise ValueError("bad\nvalue")
        except ValueError:
            info = sys.exc_info()
    return logging.LogRecord("t", logging.INFO, __file__, 1, message, args, info)


def test_safe_formatter_puts_message_arguments_and_traceback_on_one_line() -> None:
    formatter = logsetup.SafeFormatter("%(levelname)s: %(message)s")
    assert formatter.format(record("from=<%s>", "a\nb")) == r"INFO: from=<a\nb>"
    line = formatter.format(record("failed: %s", "x\ry", exc=True))
    assert "\n" not in line and "\r" not in line
    assert line.startswith(r"INFO: failed: x\ry\nTraceback") and line.endswith(
        r"ValueError: bad\nvalue"
    )


def emitted_lines(handler: logging.Handler, message: str, *args: object) -> None:
    logger = logging.getLogger(f"milter_agent.test.{id(handler)}")
    logger.propagate = False
    logger.addHandler(handler)
    try:
        logger.warning(message, *args)
    finally:
        logger.removeHandler(handler)
        handler.close()


@pytest.mark.parametrize("target", ["stderr", "stdout"])
def test_stream_handlers_escape_and_never_fail_on_raw_bytes(
    target: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a strict stream, as stdout may be under a service manager: a raw surrogate would not encode
    buffer = io.BytesIO()
    stream = io.TextIOWrapper(buffer, encoding="utf-8", errors="strict", write_through=True)
    errors = io.StringIO()  # where logging reports a record it failed to write
    monkeypatch.setattr(sys, "stderr", errors)
    monkeypatch.setattr(sys, target, stream)  # to stderr: a failure would be a second line
    handler = logsetup.make_handler(target)
    emitted_lines(handler, "%s: from=<%s>", "Q1", "raw\udcff\nforged")
    (line,) = buffer.getvalue().decode("utf-8").splitlines()
    assert line.endswith(r"Q1: from=<raw\xff\nforged>"), line
    assert errors.getvalue() == ""


def test_syslog_handler_escapes(tmp_path: Path) -> None:
    path = tmp_path / "log.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(str(path))
        server.settimeout(5)
        emitted_lines(logsetup.make_handler("syslog", str(path)), "from=<%s>", "a\r\nb\udcff")
        datagram = server.recv(65536)
    assert datagram.rstrip(b"\0").endswith(rb"milter-agent[%d]: from=<a\r\nb\xff>" % os.getpid())
    assert not re.search(rb"[\x00-\x1f]", datagram.rstrip(b"\0"))
