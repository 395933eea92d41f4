"""One MTA connection: protocol commands -> message lifecycle -> pipeline -> responses.

The session does no I/O on sockets. Every command but end-of-message is answered at once by
:meth:`Session.respond`. At end of message, :meth:`Session.end_of_message` decides at once when
the pipeline can (no message filter to wait for); otherwise :meth:`Session.decide` runs it, and
:meth:`Session.waiting` yields PROGRESS keep-alives meanwhile. :meth:`Session.handle` wraps all
of it in one async generator. Every message ends in a definite answer: a pipeline failure, or
changes that cannot be sent, become the configured default action, a spool failure a tempfail,
headers over ``max_header_size`` a reject, and the spool file is always removed. Every message
with a recipient gets one log line, also when it ends without an answer (aborted, lost).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from milter_agent import protocol as p
from milter_agent.errors import SpoolError
from milter_agent.message import Client, Message
from milter_agent.pipeline import Changes, Decision, Pipeline, Reply, StepResult, Verdict
from milter_agent.protocol.constants import MAX_SEND_DATA
from milter_agent.spool import Spool, SpoolFile

log = logging.getLogger("milter_agent.session")

#: Macro stages in protocol order; a command of one stage drops the macros of the later ones.
STAGES = b"CHMRTLNBE"


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
    #: called with the seconds a message spent in the milter, once its answer is out
    on_answered: Callable[[float], None] | None = None
    max_header_size: int = 1024 * 1024


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
        self._decision: Decision | None = None
        self._actions: list[p.Response] = []
        self._started = 0.0
        self._connected = 0.0  # the first message of a connection is timed from CONNECT
        self._macro_stage = -1  # the latest stage (index in STAGES) we hold macros of

    # --- dispatch -----------------------------------------------------------------------------

    async def handle(self, event: p.Command) -> AsyncIterator[p.Response]:
        """Yield the responses for one command, in order (for callers without their own loop:
        the offline test, the fuzzer; the server drives the parts below itself)."""
        if not isinstance(event, p.EndOfMessage):
            reply = self.respond(event)
            if reply is not None:
                yield reply
            return
        try:
            now = self.end_of_message(event.chunk)
            if isinstance(now, p.Response):
                yield now
                return
            if now is None:
                task = asyncio.ensure_future(self.decide())
                try:
                    async for progress in self.waiting(task):
                        yield progress
                finally:
                    task.cancel()
                now = task.result()
            for response in self.responses(now):
                yield response
        finally:
            self.finish_message()

    def respond(self, event: p.Command) -> p.Response | None:
        """The answer to any command but end-of-message (None if it gets none)."""
        reply = _HANDLERS[type(event)](self, event)
        return reply if reply is not None and self.conn.awaiting_reply else None

    # One small handler per command (see _HANDLERS).

    def _optneg(self, event: p.OptNeg) -> p.Response:
        return p.negotiate(event, self.services.policy())

    def macro(self, event: p.Macro) -> None:
        self.macros[event.stage] = event.macros
        self._macro_stage = max(self._macro_stage, STAGES.find(event.stage))

    def _connect(self, event: p.Connect) -> p.Response:
        self._enter_stage(0)
        self._connected = time.monotonic()
        self.client = Client(event.hostname, event.address, event.port, event.family)
        return _CONTINUE

    def _helo(self, event: p.Helo) -> p.Response:
        self._end_message(ABORTED)  # a new HELO resets the transaction, as RSET does
        self._enter_stage(1)
        self.client.helo = event.name
        return _CONTINUE

    def _mail(self, event: p.Mail) -> p.Response:
        self._end_message(ABORTED)  # before the stage change drops the old message's macros
        self._enter_stage(2)
        self._start_message(event.sender, event.args)
        return _CONTINUE

    def _rcpt(self, event: p.Rcpt) -> p.Response:
        self._enter_stage(3)
        assert self.message is not None  # the connection enforces MAIL first
        self.message.recipients.append(event.recipient)
        self.message.recipient_args.append(event.args)
        return _CONTINUE

    def _data(self, event: p.Data) -> p.Response:
        self._enter_stage(4)
        return self._content(self._open_spool)

    def _header_event(self, event: p.Header) -> p.Response:
        self._enter_stage(5)
        try:
            held = self._header(event.name, event.value)
        except SpoolError as exc:
            return self._spool_failed(exc)
        return _CONTINUE if held else self._header_too_large()

    def _eoh(self, event: p.EndOfHeaders) -> p.Response:
        self._enter_stage(6)
        return self._content(lambda: self._write(b"\r\n"))

    def _body_event(self, event: p.Body) -> p.Response:
        self._enter_stage(7)
        try:
            self._body(event.chunk)
        except SpoolError as exc:
            return self._spool_failed(exc)
        return _CONTINUE

    def _abort(self, event: p.Abort) -> None:
        self._end_message(ABORTED)

    def _quit(self, event: p.Quit | p.QuitNoClose) -> None:
        self._end_message(ABORTED)
        self.macros.clear()

    def _unknown(self, event: p.Unknown) -> p.Response:
        return _CONTINUE

    def _enter_stage(self, index: int) -> None:
        """A command of stage ``index`` (in STAGES) drops the macros of the later stages,
        which belong to an earlier message; stages mostly come in order, so this is rare."""
        if self._macro_stage > index:
            for letter in STAGES[index + 1 :]:
                self.macros.pop(bytes((letter,)), None)
        self._macro_stage = index

    # --- message lifecycle -----------------------------------------------------------------------

    def _start_message(self, sender: str, args: tuple[str, ...]) -> None:
        self._pipeline = self.services.pipeline()
        self._started = self._connected or time.monotonic()
        self._connected = 0.0
        self.message = Message(self.client, sender, args)

    def _end_message(self, unanswered: str | None) -> None:
        """Drop the message in progress and its spool file. ``unanswered`` (ABORTED, LOST) is
        the outcome logged for a message that ends without our final answer; None when it
        had one (and its line)."""
        if self.message is not None and unanswered is not None:
            self._collect_macros(self.message)  # for its queue id
            log_unanswered(self.message, unanswered, time.monotonic() - self._started)
        if self._spool_file is not None:
            self._spool_file.remove()
            self._spool_file = None
        self.message = None
        self._pipeline = None

    def close(self) -> None:
        """Connection over: drop any message in progress and its spool file."""
        self._end_message(LOST)

    def _content(self, step: Callable[[], None]) -> p.Response:
        """Run a spooling step; a spool failure tempfails this message and ends it."""
        try:
            step()
        except SpoolError as exc:
            return self._spool_failed(exc)
        return _CONTINUE

    def _spool_failed(self, exc: SpoolError) -> p.Response:
        log.error("%s: %s; message tempfailed", self.name, exc)
        return self._end_early(Decision(Verdict.TEMPFAIL, steps=[_SPOOL_FAILED]))

    def _header_too_large(self) -> p.Response:
        """Held headers are memory: past the cap the message is rejected, as it would be too
        large again on every retry (a tempfail would keep it queued for days)."""
        log.warning(
            "%s: message header over max_header_size (%d bytes); message rejected",
            self.name,
            self.services.max_header_size,
        )
        decision = Decision(Verdict.REJECT, _HEADER_TOO_LARGE, steps=[_HEADER_LIMIT])
        return self._end_early(decision)

    def _end_early(self, decision: Decision) -> p.FinalReply:
        """End the message before its end of message, logged and counted like any other."""
        if self.message is not None:
            self._report(self.message, decision)
        self._decision = None  # nothing of it is left to send
        self._end_message(None)
        return final_reply(decision.verdict, decision.reply)

    def _open_spool(self) -> None:
        if self._spool_file is None and self._pipeline is not None and self._pipeline.wants_content:
            self._spool_file = self.services.spool.create()

    def _header(self, name: str, value: str) -> bool:
        """Hold and spool one header; False, holding nothing, if it would take the message's
        headers over ``max_header_size``."""
        message = self.message
        assert message is not None
        raw = value if self.conn.header_leading_space else " " + value
        size = len(name.encode("utf-8", "surrogateescape"))
        size += len(raw.encode("utf-8", "surrogateescape")) + 3
        if message.header_size + size > self.services.max_header_size:
            return False
        message.headers.append((name, raw))
        self._open_spool()
        if self._spool_file is not None:
            self._spool_file.write_header(name, raw)
        message.header_size += size
        message.size += size
        return True

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

    def end_of_message(self, chunk: bytes) -> p.Response | Decision | None:
        """Finish the message; a TEMPFAIL if its spool failed, the decision if the pipeline
        can make it without waiting, else None: then :meth:`decide` runs the pipeline.
        Call :meth:`finish_message` once the answer is sent."""
        self._enter_stage(8)
        message, pipeline = self.message, self._pipeline
        assert message is not None and pipeline is not None
        failed = self._content(lambda: self._finish_spool(chunk))
        if not isinstance(failed, p.Continue):
            return failed
        decide_now = getattr(pipeline, "decide_now", None)
        if decide_now is None:
            return None
        try:
            decision: Decision | None = decide_now(message)
        except Exception as exc:  # noqa: BLE001 (logged by _failed): a bug must end in an answer
            decision = self._failed(message, exc)
        return None if decision is None else self._report(message, decision)

    async def decide(self) -> Decision:
        """Run the pipeline; any failure becomes the default action."""
        message, pipeline = self.message, self._pipeline
        assert message is not None and pipeline is not None
        try:
            decision = await pipeline.run(message)
        except Exception as exc:  # noqa: BLE001 (logged by _failed): a bug must end in an answer
            decision = self._failed(message, exc)
        return self._report(message, decision)

    async def waiting(self, task: asyncio.Future[Decision]) -> AsyncIterator[p.Response]:
        """PROGRESS every ``progress_interval`` until ``task`` is done: it keeps the MTA
        waiting (Sendmail's R timeout is 10 s by default)."""
        while not task.done():
            await asyncio.wait({task}, timeout=self.services.progress_interval)
            if not task.done():
                yield p.Progress()

    def finish_message(self) -> None:
        """The message's answer is out (or the connection is gone): remove its files."""
        decision = self._decision
        self._decision = None
        self._end_message(None if decision is not None else LOST)
        if decision is not None and decision.changes.new_body is not None:
            decision.changes.new_body.unlink(missing_ok=True)

    def _finish_spool(self, chunk: bytes) -> None:
        assert self.message is not None
        if chunk:
            self._body(chunk)
        self._collect_macros(self.message)
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

    def give_up(self) -> p.FinalReply:
        """The daemon is stopping and the pipeline has not decided: a tempfail (the MTA keeps
        the message and retries), logged as this message's decision."""
        if self.message is not None and self._decision is None:
            self._report(self.message, Decision(Verdict.TEMPFAIL, steps=[_SHUTDOWN]))
        return final_reply(Verdict.TEMPFAIL, None)

    def _collect_macros(self, message: Message) -> None:
        """Every stage's macros into the message, a later stage's value winning."""
        for stage in STAGES:
            message.macros.update(self.macros.get(bytes((stage,)), {}))

    def _failed(self, message: Message, exc: Exception) -> Decision:
        log.exception("%s: pipeline failed: %s", message.queue_id or self.name, exc)
        return Decision(
            self.services.default_action, steps=[StepResult("pipeline", f"error: {exc}")]
        )

    def _report(self, message: Message, decision: Decision) -> Decision:
        decision = self._sendable(message, decision)
        self._decision = decision
        seconds = time.monotonic() - self._started
        log_message(message, decision, seconds)
        if self.services.on_message_done is not None:
            self.services.on_message_done(message, decision, seconds)
        return decision

    def responses(self, decision: Decision) -> Iterator[p.Response]:
        """The modifications (if the message is delivered) and the final reply."""
        actions, self._actions = self._actions, []
        body = None
        if decision.verdict in (Verdict.CONTINUE, Verdict.ACCEPT):
            try:
                body = self._open_body(decision.changes.new_body)
            except OSError as exc:
                log.error(
                    "%s: new body unreadable (%s); answering the default action", self.name, exc
                )
                yield final_reply(self.services.default_action, None)
                return
            yield from actions
        if body is not None:
            with body:
                while chunk := body.read(MAX_SEND_DATA):
                    yield p.ReplaceBody(chunk)
        yield final_reply(decision.verdict, decision.reply)

    def _sendable(self, message: Message, decision: Decision) -> Decision:
        """Check every change before anything is sent: one that cannot go on the wire (a
        header name with a space, a NUL in an address, a body file gone) makes the whole
        answer the default action instead of a half-modified message."""
        if decision.verdict not in (Verdict.CONTINUE, Verdict.ACCEPT) or not decision.changes:
            return decision
        try:
            self._actions = self._checked(decision.changes)
            if decision.changes.new_body is not None:
                decision.changes.new_body.stat()
        except (ValueError, OSError) as exc:
            log.error("%s: changes cannot be sent: %s", message.queue_id or self.name, exc)
            self._actions = []
            if decision.changes.new_body is not None:
                decision.changes.new_body.unlink(missing_ok=True)
            return Decision(
                self.services.default_action,
                steps=[*decision.steps, StepResult("changes", f"error: {exc}")],
            )
        return decision

    def _checked(self, changes: Changes) -> list[p.Response]:
        """The header and recipient actions that were negotiated, each encodable."""
        out: list[p.Response] = []
        for action in _modifications(changes):
            needed = p.responses.REQUIRED_ACTION[type(action)]
            if self.conn.actions & needed:
                p.encode_response(action)  # raises ValueError if it cannot go on the wire
                out.append(action)
            else:
                log.warning("%s: %s not negotiated, change not made", self.name, needed.name)
        return out

    def _open_body(self, path: Path | None) -> BinaryIO | None:
        if path is None:
            return None
        if not self.conn.actions & p.Action.CHGBODY:
            log.warning("%s: CHGBODY not negotiated, change not made", self.name)
            return None
        return open(path, "rb")


#: How a message that got no final answer from us ended (the log line's decision).
ABORTED = "aborted"  # the MTA dropped the transaction: ABORT, a new MAIL or HELO, QUIT
LOST = "lost"  # the connection ended first

#: One small handler per command, found by type: this runs for every packet.
_HANDLERS: dict[type, Callable[[Session, Any], p.Response | None]] = {
    p.OptNeg: Session._optneg,
    p.Macro: Session.macro,
    p.Connect: Session._connect,
    p.Helo: Session._helo,
    p.Mail: Session._mail,
    p.Rcpt: Session._rcpt,
    p.Data: Session._data,
    p.Header: Session._header_event,
    p.EndOfHeaders: Session._eoh,
    p.Body: Session._body_event,
    p.Abort: Session._abort,
    p.Quit: Session._quit,
    p.QuitNoClose: Session._quit,
    p.Unknown: Session._unknown,
}

_SPOOL_FAILED = StepResult("spool", "error")
_HEADER_LIMIT = StepResult("headers", "too large")
_HEADER_TOO_LARGE = Reply("552", "5.3.4", ("message header too large",))
_SHUTDOWN = StepResult("shutdown", "grace over")
_CONTINUE = p.Continue()


def _modifications(changes: Changes) -> Iterator[p.ModificationAction]:
    """The milter actions for the header and recipient changes (the body comes apart)."""
    for name, value in changes.add_headers:
        yield p.AddHeader(name, value)
    for name, index, value in changes.change_headers:
        yield p.ChangeHeader(index, name, value)
    for rcpt in changes.delete_recipients:
        yield p.DeleteRecipient(rcpt)
    for rcpt in changes.add_recipients:
        yield p.AddRecipient(rcpt)


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
    filters = f" filters={steps}" if steps else ""
    _log_line(logging.INFO, message, decision.verdict.value, seconds, filters)


def log_unanswered(message: Message, outcome: str, seconds: float) -> None:
    """The line of a message that ended without our answer: at the default level once it has
    a recipient; without one at debug level only (Postfix sends ABORT after refused RCPTs)."""
    _log_line(logging.INFO if message.recipients else logging.DEBUG, message, outcome, seconds)


def _log_line(level: int, message: Message, decision: str, seconds: float, extra: str = "") -> None:
    log.log(
        level,
        "%s: client=%s from=<%s> rcpts=%d size=%d decision=%s time=%.1fms%s",
        message.queue_id or "NOQUEUE",
        message.client,
        message.sender_address,
        len(message.recipients),
        message.size,
        decision,
        seconds * 1000,
        extra,
    )
