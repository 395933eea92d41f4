"""Session: message lifecycle, spooling, pipeline results and failures -> milter responses."""

from __future__ import annotations

import asyncio
import os
import stat
from pathlib import Path

import pytest
from fakemta import message_commands, open_session, send, send_message

from milter_agent import protocol as p
from milter_agent.message import Message
from milter_agent.pipeline import Changes, Decision, PassThrough, Reply, Verdict
from milter_agent.session import Services, Session
from milter_agent.spool import Spool


class Recorder:
    """A pipeline that records what it saw and returns a prepared decision."""

    wants_content = True

    def __init__(self, decision: Decision | None = None, delay: float = 0.0) -> None:
        self.decision = decision or Decision()
        self.delay = delay
        self.seen: list[Message] = []
        self.spool_bytes: bytes | None = None
        self.spool_mode = 0

    async def run(self, message: Message) -> Decision:
        self.seen.append(message)
        assert message.spool_path is not None
        self.spool_bytes = message.spool_path.read_bytes()
        self.spool_mode = stat.S_IMODE(os.stat(message.spool_path).st_mode)
        if self.delay:
            await asyncio.sleep(self.delay)
        return self.decision


class Boom:
    wants_content = False

    async def run(self, message: Message) -> Decision:
        raise RuntimeError("filter bug")


def make(tmp_path: Path, pipeline: object, **kw: object) -> Session:
    policy = p.Policy.from_permissions(
        add_recipient=True,
        remove_recipient=True,
        add_header=True,
        change_header=True,
        change_body=kw.pop("change_body", True),  # type: ignore[arg-type]
    )
    services = Services(
        policy=lambda: policy,
        pipeline=lambda: pipeline,  # type: ignore[arg-type,return-value]
        spool=Spool(tmp_path / "spool"),
        **kw,  # type: ignore[arg-type]
    )
    services.spool.prepare()
    return Session(services, "test")


async def opened(tmp_path: Path, pipeline: object, **kw: object) -> Session:
    """A session made by make(), past option negotiation, connect and HELO."""
    session = make(tmp_path, pipeline, **kw)
    await open_session(session)
    return session


def spooled(tmp_path: Path) -> list[str]:
    return os.listdir(tmp_path / "spool")


def test_pass_through_continues_and_spools_nothing(tmp_path: Path) -> None:
    async def go() -> None:
        session = make(tmp_path, PassThrough())
        reply = await open_session(session)
        assert reply.version == 6
        assert reply.protocol == p.ProtocolFlag.HDR_LEADSPC
        assert await send_message(session) == [p.Continue()]
        assert spooled(tmp_path) == []

    asyncio.run(go())


def test_spool_file_is_the_message_as_received_0600_and_removed(tmp_path: Path) -> None:
    rec = Recorder()

    async def go() -> None:
        session = await opened(tmp_path, rec)
        body = bytes(range(256)) * 3 + b"\r\n"
        headers = (("Subject", " caf\udce9 8-bit"), ("X-Folded", " a\r\n\tb"), ("X-Tight", "v"))
        assert await send_message(session, headers=headers, body=body) == [p.Continue()]
        expected = b"Subject: caf\xe9 8-bit\r\nX-Folded: a\r\n\tb\r\nX-Tight:v\r\n\r\n" + body
        assert rec.spool_bytes == expected
        assert rec.spool_mode == 0o600
        assert rec.seen[0].size == len(expected)
        assert rec.seen[0].subject == "caf\udce9 8-bit"
        assert spooled(tmp_path) == []

    asyncio.run(go())


def test_envelope_macros_and_queue_id_reach_the_pipeline(tmp_path: Path) -> None:
    rec = Recorder()

    async def go() -> None:
        session = await opened(tmp_path, rec)
        await send(session, p.Macro(b"M", {"{auth_authen}": "joe"}))
        await send_message(session, recipients=("<b@x.org>", "<c@y.org>"), queue_id="4XyZ")
        msg = rec.seen[0]
        assert msg.sender_address == "a@example.com"
        assert msg.recipient_addresses == ["b@x.org", "c@y.org"]
        assert msg.queue_id == "4XyZ"
        assert msg.client.address == "192.0.2.1"
        assert msg.client.helo == "client.example"

    asyncio.run(go())


def test_macros_of_later_stages_are_dropped_by_a_new_mail(tmp_path: Path) -> None:
    rec = Recorder()

    async def go() -> None:
        session = await opened(tmp_path, rec)
        await send(session, p.Macro(b"R", {"{rcpt_mailer}": "smtp"}))
        await send(session, p.Mail("<a@b>"))
        assert b"R" not in session.macros
        await send(session, p.Abort())

    asyncio.run(go())


def test_abort_and_disconnect_remove_the_spool_file(tmp_path: Path) -> None:
    async def go() -> None:
        session = await opened(tmp_path, Recorder())
        for command in (p.Mail("<a@b>"), p.Rcpt("<c@d>"), p.Data(), p.Header("S", " x")):
            await send(session, command)
        assert len(spooled(tmp_path)) == 1
        await send(session, p.Abort())
        assert spooled(tmp_path) == []
        for command in (p.Mail("<a@b>"), p.Rcpt("<c@d>"), p.Data(), p.Header("S", " x")):
            await send(session, command)
        session.close()
        assert spooled(tmp_path) == []

    asyncio.run(go())


def test_changes_become_actions_in_order_then_continue(tmp_path: Path) -> None:
    body = tmp_path / "newbody"
    body.write_bytes(b"x" * 100_000)
    changes = Changes(
        add_headers=[("X-Added", "yes")],
        change_headers=[("Subject", 1, "new")],
        add_recipients=["<w@example.com>"],
        delete_recipients=["<b@example.com>"],
        new_body=body,
    )

    async def go() -> None:
        session = await opened(tmp_path, Recorder(Decision(changes=changes)))
        out = await send_message(session)
        assert out[:4] == [
            p.AddHeader("X-Added", "yes"),
            p.ChangeHeader(1, "Subject", "new"),
            p.DeleteRecipient("<b@example.com>"),
            p.AddRecipient("<w@example.com>"),
        ]
        bodies = [r for r in out if isinstance(r, p.ReplaceBody)]
        assert b"".join(r.chunk for r in bodies) == b"x" * 100_000
        assert out[-1] == p.Continue()
        assert not body.exists()

    asyncio.run(go())


def test_change_not_negotiated_is_not_made(tmp_path: Path) -> None:
    body = tmp_path / "newbody"
    body.write_bytes(b"new")

    async def go() -> None:
        decision = Decision(changes=Changes(new_body=body, add_headers=[("X-A", "1")]))
        session = await opened(tmp_path, Recorder(decision), change_body=False)
        assert await send_message(session) == [p.AddHeader("X-A", "1"), p.Continue()]

    asyncio.run(go())


@pytest.mark.parametrize(
    ("decision", "expected"),
    [
        (Decision(Verdict.REJECT), p.Reject()),
        (Decision(Verdict.TEMPFAIL), p.Tempfail()),
        (Decision(Verdict.DISCARD), p.Discard()),
        (Decision(Verdict.ACCEPT), p.Continue()),
        (
            Decision(Verdict.REJECT, Reply("550", "5.7.1", ("Virus found",))),
            p.ReplyCode("550", "5.7.1", ("Virus found",)),
        ),
    ],
)
def test_verdicts(tmp_path: Path, decision: Decision, expected: p.Response) -> None:
    async def go() -> None:
        session = await opened(tmp_path, Recorder(decision))
        assert await send_message(session) == [expected]

    asyncio.run(go())


def test_rejected_message_gets_no_modifications(tmp_path: Path) -> None:
    decision = Decision(Verdict.REJECT, changes=Changes(add_headers=[("X-A", "1")]))

    async def go() -> None:
        session = await opened(tmp_path, Recorder(decision))
        assert await send_message(session) == [p.Reject()]

    asyncio.run(go())


@pytest.mark.parametrize(
    ("default", "expected"),
    [(Verdict.TEMPFAIL, p.Tempfail()), (Verdict.ACCEPT, p.Continue())],
)
def test_pipeline_exception_gives_the_default_action(
    tmp_path: Path, default: Verdict, expected: p.Response, caplog: pytest.LogCaptureFixture
) -> None:
    async def go() -> None:
        session = await opened(tmp_path, Boom(), default_action=default)
        assert await send_message(session) == [expected]
        # the connection goes on: a second message is handled too
        assert await send_message(session) == [expected]

    asyncio.run(go())
    assert "pipeline failed: filter bug" in caplog.text


def test_spool_failure_tempfails_that_message_only(tmp_path: Path) -> None:
    async def go() -> None:
        session = make(tmp_path, Recorder())
        (tmp_path / "spool").rmdir()
        (tmp_path / "spool").write_text("not a directory")
        await open_session(session)
        assert await send_message(session) == [p.Tempfail()]
        (tmp_path / "spool").unlink()
        session.services.spool.prepare()
        assert await send_message(session) == [p.Continue()]

    asyncio.run(go())


def test_slow_pipeline_sends_progress_before_the_verdict(tmp_path: Path) -> None:
    async def go() -> None:
        session = await opened(tmp_path, Recorder(delay=0.25), progress_interval=0.05)
        out = await send_message(session)
        assert out[-1] == p.Continue()
        assert out.count(p.Progress()) >= 2

    asyncio.run(go())


def test_one_log_line_per_message(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async def go() -> None:
        session = await opened(tmp_path, PassThrough())
        await send_message(session, queue_id="ABC123")

    caplog.set_level("INFO")
    asyncio.run(go())
    lines = [r.getMessage() for r in caplog.records if r.name == "milter_agent.session"]
    assert len(lines) == 1
    line = lines[0]
    for part in ("ABC123:", "client=client.example[192.0.2.1]", "from=<a@example.com>", "rcpts=1"):
        assert part in line
    assert "decision=continue" in line and "size=" in line and "time=" in line


def header_of(size: int, name: str = "X-Big") -> tuple[str, str]:
    """A header that takes ``size`` bytes of the header block (``name:value`` and CRLF)."""
    return (name, " " + "h" * (size - len(name) - 4))


def message_lines(caplog: pytest.LogCaptureFixture, level: str = "INFO") -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "milter_agent.session" and r.levelname == level and " rcpts=" in r.getMessage()
    ]


def test_headers_up_to_the_cap_are_held(tmp_path: Path) -> None:
    rec = Recorder()

    async def go() -> None:
        session = await opened(tmp_path, rec, max_header_size=3000)
        headers = (header_of(1000, "X-A"), header_of(2000, "X-B"))  # exactly 3000 bytes
        assert await send_message(session, headers=headers) == [p.Continue()]
        assert rec.seen[0].header_size == 3000
        assert rec.spool_bytes is not None and rec.spool_bytes.index(b"\r\n\r\n") + 2 == 3000

    asyncio.run(go())


def test_headers_over_the_cap_reject_the_message(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO")
    rec = Recorder()

    async def go() -> None:
        session = await opened(tmp_path, rec, max_header_size=3000)
        headers = (header_of(1000, "X-A"), header_of(2001, "X-B"), header_of(10, "X-C"))
        out = await send_message(session, headers=headers, queue_id="BIG1")
        assert out == [p.ReplyCode("552", "5.3.4", ("message header too large",))]
        assert session.message is None and spooled(tmp_path) == []
        assert session.conn.phase is p.Phase.SESSION  # the MTA may start the next message
        assert await send(session, p.Abort()) == []  # what Postfix sends next: no second line
        assert await send_message(session) == [p.Continue()]
        assert len(rec.seen) == 1 and rec.seen[0].header_size < 3000

    asyncio.run(go())
    assert "message header over max_header_size (3000 bytes); message rejected" in caplog.text
    rejected, delivered = message_lines(caplog)
    assert "from=<a@example.com> rcpts=1" in rejected
    assert "decision=reject" in rejected and "filters=headers:too large" in rejected
    assert "decision=continue" in delivered


@pytest.mark.parametrize(
    ("ending", "outcome"),
    [
        ([p.Abort()], "aborted"),
        ([p.Mail("<next@example.com>")], "aborted"),
        ([p.Helo("again.example")], "aborted"),
        ([p.Quit()], "aborted"),
        ([p.QuitNoClose()], "aborted"),
        ([], "lost"),  # the connection ends (session.close() below)
    ],
)
def test_a_transaction_with_a_recipient_ending_without_eom_gets_its_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, ending: list[p.Command], outcome: str
) -> None:
    caplog.set_level("INFO")

    async def go() -> None:
        session = await opened(tmp_path, Recorder())
        await send(session, p.Mail("<a@example.com>"))
        await send(session, p.Macro(b"R", {"i": "QIDR"}))
        for command in (p.Rcpt("<b@example.com>"), p.Data(), p.Header("Subject", " x")):
            await send(session, command)
        for command in ending:
            await send(session, command)
        session.close()
        assert spooled(tmp_path) == []

    asyncio.run(go())
    (line,) = message_lines(caplog)
    assert line.startswith("QIDR: client=client.example[192.0.2.1] from=<a@example.com> rcpts=1")
    assert f"decision={outcome} " in line and "size=" in line


def test_a_transaction_without_recipients_is_logged_at_debug_level_only(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("DEBUG")

    async def go() -> None:
        session = await opened(tmp_path, PassThrough())
        await send(session, p.Mail("<a@example.com>"))
        await send(session, p.Abort())  # Postfix refused every RCPT
        await send(session, p.Abort())  # outside a transaction: nothing to log

    asyncio.run(go())
    assert message_lines(caplog) == []
    (line,) = message_lines(caplog, "DEBUG")
    assert "rcpts=0" in line and "decision=aborted" in line


def test_connection_lost_while_the_pipeline_decides_is_logged_as_lost(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """What the server does when the MTA hangs up during the wait: the decision is cancelled,
    then the message finished without one."""
    caplog.set_level("INFO")

    async def go() -> None:
        session = await opened(tmp_path, Recorder(delay=10))
        for command in message_commands()[:-1]:
            await send(session, command)
        assert session.end_of_message(b"") is None  # the pipeline must run: it would wait
        session.finish_message()
        assert spooled(tmp_path) == []

    asyncio.run(go())
    (line,) = message_lines(caplog)
    assert "QID1: " in line and "decision=lost" in line


def test_give_up_tempfails_the_undecided_message_with_one_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO")

    async def go() -> None:
        session = await opened(tmp_path, Recorder(delay=10))
        for command in message_commands()[:-1]:
            await send(session, command)
        session.conn.receive_data(p.encode_command(p.EndOfMessage()))
        assert session.conn.next_event() == p.EndOfMessage()
        assert session.end_of_message(b"") is None
        reply = session.give_up()
        assert reply == p.Tempfail()
        session.conn.send(reply)  # allowed as the answer to end of message
        session.finish_message()

    asyncio.run(go())
    (line,) = message_lines(caplog)
    assert "decision=tempfail" in line and "filters=shutdown:grace over" in line
