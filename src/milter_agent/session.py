"""One MTA connection: protocol commands -> message lifecycle -> pipeline -> responses.

The session does no I/O on sockets: :meth:`Session.handle` is an async generator that yields
the responses to send for one command (PROGRESS keep-alives included, while the pipeline works).
It guarantees that every message ends in a definite answer: a pipeline failure becomes the
configured default action, a spool failure a tempfail, and the spool file is always removed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass

from milter_agent import protocol as p
from milter_agent.errors import SpoolError
from milter_agent.message import Client, Message
from milter_agent.pipeline import Changes, Decision, Pipeline, Reply, StepResult, Verdict
from milter_agent.spool import Spool, SpoolFile

log = logging.getLogger("milter_agent.session")

#: Macro stages in protocol order; a command of one stage drops the macros of the later ones.
STAGES = b"CHMRTLNBE"
_BODY_CHUNK = 64 * 1024


@dataclass(frozen=True, slots=True)
class Services:
    """What a session needs from the daemon; functions are called once per connection/message."""

    policy: Callable[[], p.Policy]
    pipeline: Callable[[], Pipeline]
    spool: Spool
    default_action: Verdict = Verdict.TEMPFAIL
    progress_interval: float = 5.0
    log_tempfile: bool = False
    on_message_done: Callable[[Message, Decision, float], None] | None = None


class Session:
    """Protocol state plus the message in progress for one connection."""

    def __init__(self, services: Services, name: str = "") -> None:
        self.services = services
        self.name = name
        self.conn = p.MilterConnection()
        self.client = Client()
        self.macros: dict[bytes, dict[str, str]] = {}
        self.message: Message | None = None
        self._pipeline: Pipeline | None = None
        self._spool_file: SpoolFile | None = None
        self._started = 0.0
        self._connected = 0.0  # the first message of a connection is timed from CONNECT

    # --- dispatch -----------------------------------------------------------------------------

    async def handle(self, event: p.Command) -> AsyncIterator[p.Response]:
        """Yield the responses for one command, in order."""
        if isinstance(event, p.EndOfMessage):
            async for response in self._end_of_message(event.chunk):
                yield response
            return
        reply = self._handle_simple(event)
        if reply is not None and self.conn.awaiting_reply:
            yield reply

    def _handle_simple(self, event: p.Command) -> p.Response | None:
        match event:
            case p.OptNeg():
                return p.negotiate(event, self.services.policy())
            case p.Macro(stage, macros):
                self.macros[stage] = macros
                return None
            case p.Connect(hostname, family, port, address):
                self._enter_stage(b"C")
                self._connected = time.monotonic()
                self.client = Client(hostname, address, port, family)
            case p.Helo(name):
                self._enter_stage(b"H")
                self._end_message("helo")
                self.client.helo = name
            case p.Mail(sender, args):
                self._enter_stage(b"M")
                self._start_message(sender, args)
            case p.Rcpt(recipient, args):
                self._enter_stage(b"R")
                assert self.message is not None  # the connection enforces MAIL first
                self.message.recipients.append(recipient)
                self.message.recipient_args.append(args)
            case p.Data():
                self._enter_stage(b"T")
                return self._content(self._open_spool)
            case p.Header(name, value):
                self._enter_stage(b"L")
                return self._content(lambda: self._header(name, value))
            case p.EndOfHeaders():
                self._enter_stage(b"N")
                return self._content(lambda: self._write(b"\r\n"))
            case p.Body(chunk):
                self._enter_stage(b"B")
                return self._content(lambda: self._body(chunk))
            case p.Abort():
                self._end_message("aborted")
                return None
            case p.Quit() | p.QuitNoClose():
                self.close()
                self.macros.clear()
                return None
            case p.Unknown():
                pass
        return p.Continue()

    def _enter_stage(self, stage: bytes) -> None:
        later = STAGES[STAGES.index(stage) + 1 :]
        for letter in later:
            self.macros.pop(bytes((letter,)), None)

    # --- message lifecycle -----------------------------------------------------------------------

    def _start_message(self, sender: str, args: tuple[str, ...]) -> None:
        self._end_message("new MAIL")
        self._pipeline = self.services.pipeline()
        self._started = self._connected or time.monotonic()
        self._connected = 0.0
        self.message = Message(self.client, sender, args)

    def _end_message(self, why: str) -> None:
        if self.message is not None:
            log.debug("%s: message ended: %s", self.name, why)
        if self._spool_file is not None:
            self._spool_file.remove()
            self._spool_file = None
        self.message = None
        self._pipeline = None

    def close(self) -> None:
        """Connection over: drop any message in progress and its spool file."""
        self._end_message("connection closed")

    def _content(self, step: Callable[[], None]) -> p.Response:
        """Run a spooling step; a spool failure tempfails this message and ends it."""
        try:
            step()
        except SpoolError as exc:
            log.error("%s: %s; message tempfailed", self.name, exc)
            message = self.message
            self._end_message("spool error")
            if message is not None:
                self._report(message, Decision(Verdict.TEMPFAIL, steps=[_SPOOL_FAILED]))
            return p.Tempfail()
        return p.Continue()

    def _open_spool(self) -> None:
        if self._spool_file is None and self._pipeline is not None and self._pipeline.wants_content:
            self._spool_file = self.services.spool.create()

    def _header(self, name: str, value: str) -> None:
        assert self.message is not None
        raw = value if self.conn.header_leading_space else " " + value
        self.message.headers.append((name, raw))
        self._open_spool()
        if self._spool_file is not None:
            self._spool_file.write_header(name, raw)
        self.message.size += len(name.encode("utf-8", "surrogateescape"))
        self.message.size += len(raw.encode("utf-8", "surrogateescape")) + 3

    def _write(self, data: bytes) -> None:
        assert self.message is not None
        self._open_spool()
        if self._spool_file is not None:
            self._spool_file.write(data)
        self.message.size += len(data)

    def _body(self, chunk: bytes) -> None:
        self._write(chunk)
        assert self.message is not None
        self.message.body_size += len(chunk)

    # --- end of message ------------------------------------------------------------------------

    async def _end_of_message(self, chunk: bytes) -> AsyncIterator[p.Response]:
        self._enter_stage(b"E")
        message, pipeline = self.message, self._pipeline
        assert message is not None and pipeline is not None
        failed = self._content(lambda: self._finish_spool(chunk))
        if not isinstance(failed, p.Continue):
            yield failed
            return
        task = asyncio.ensure_future(self._decide(pipeline, message))
        decision: Decision | None = None
        try:
            # PROGRESS keeps the MTA waiting (Sendmail's R timeout is 10 s by default).
            while not task.done():
                await asyncio.wait({task}, timeout=self.services.progress_interval)
                if not task.done():
                    yield p.Progress()
            decision = task.result()
            for response in self._responses(decision):
                yield response
        finally:
            task.cancel()
            self._end_message("done")
            if decision is not None and decision.changes.new_body is not None:
                decision.changes.new_body.unlink(missing_ok=True)

    def _finish_spool(self, chunk: bytes) -> None:
        assert self.message is not None
        if chunk:
            self._body(chunk)
        for stage in STAGES:
            self.message.macros.update(self.macros.get(bytes((stage,)), {}))
        if self._spool_file is not None:
            self._spool_file.finish()
            self.message.spool_path = self._spool_file.path
            if self.services.log_tempfile:
                log.info(
                    "%s: spool file %s size %d",
                    self.message.queue_id or "NOQUEUE",
                    self._spool_file.path,
                    self._spool_file.size,
                )

    async def _decide(self, pipeline: Pipeline, message: Message) -> Decision:
        """Run the pipeline; any failure becomes the default action."""
        try:
            decision = await pipeline.run(message)
        except Exception as exc:  # any filter bug must end in a defined answer, never a crash
            log.exception("%s: pipeline failed: %s", message.queue_id or self.name, exc)
            decision = Decision(
                self.services.default_action, steps=[StepResult("pipeline", f"error: {exc}")]
            )
        self._report(message, decision)
        return decision

    def _report(self, message: Message, decision: Decision) -> None:
        seconds = time.monotonic() - self._started
        log_message(message, decision, seconds)
        if self.services.on_message_done is not None:
            self.services.on_message_done(message, decision, seconds)

    def _responses(self, decision: Decision) -> Iterator[p.Response]:
        if decision.verdict in (Verdict.CONTINUE, Verdict.ACCEPT):
            for action in _modifications(decision.changes):
                needed = p.responses.REQUIRED_ACTION[type(action)]
                if self.conn.actions & needed:
                    yield action
                else:
                    log.warning("%s: %s not negotiated, change not made", self.name, needed.name)
        yield final_reply(decision.verdict, decision.reply)


_SPOOL_FAILED = StepResult("spool", "error")


def _modifications(changes: Changes) -> Iterator[p.ModificationAction]:
    """The milter actions for a set of changes; a new body is streamed from its file."""
    for name, value in changes.add_headers:
        yield p.AddHeader(name, value)
    for name, index, value in changes.change_headers:
        yield p.ChangeHeader(index, name, value)
    for rcpt in changes.delete_recipients:
        yield p.DeleteRecipient(rcpt)
    for rcpt in changes.add_recipients:
        yield p.AddRecipient(rcpt)
    if changes.new_body is not None:
        with open(changes.new_body, "rb") as body:
            while chunk := body.read(_BODY_CHUNK):
                yield p.ReplaceBody(chunk)


def final_reply(verdict: Verdict, reply: Reply | None) -> p.FinalReply:
    """The milter reply for a verdict at end of message."""
    if verdict in (Verdict.REJECT, Verdict.TEMPFAIL):
        if reply is not None:
            try:
                return p.ReplyCode(reply.code, reply.enhanced, reply.lines)
            except ValueError:
                log.warning("invalid reply %r, sending a plain %s", reply, verdict.value)
        return p.Reject() if verdict is Verdict.REJECT else p.Tempfail()
    if verdict is Verdict.DISCARD:
        return p.Discard()
    return p.Continue()


def log_message(message: Message, decision: Decision, seconds: float) -> None:
    """The one line per message: queue id, client, sender, recipients, size, decision, time
    (from CONNECT for the first message of a connection, from MAIL for later ones)."""
    steps = " ".join(f"{s.name}:{s.outcome}({s.seconds * 1000:.0f}ms)" for s in decision.steps)
    log.info(
        "%s: client=%s from=<%s> rcpts=%d size=%d decision=%s time=%.1fms%s",
        message.queue_id or "NOQUEUE",
        message.client,
        message.sender_address,
        len(message.recipients),
        message.size,
        decision.verdict.value,
        seconds * 1000,
        f" filters={steps}" if steps else "",
    )
