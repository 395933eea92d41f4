"""The seam between the session and the filters: a message in, a decision plus changes out.

The session calls :meth:`Pipeline.run` once per message, at end of message, with the message
context; whatever the pipeline raises becomes the configured default action there, never a crash.
The filters of later issues (address rules, programs, modules) plug in behind this interface.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Protocol

from milter_agent.message import Message


class Verdict(Enum):
    """What happens to the message. CONTINUE at the end of the pipeline means deliver."""

    CONTINUE = "continue"
    ACCEPT = "accept"
    REJECT = "reject"
    TEMPFAIL = "tempfail"
    DISCARD = "discard"

    @property
    def stops_chain(self) -> bool:
        return self is not Verdict.CONTINUE


@dataclass(frozen=True, slots=True)
class Reply:
    """An SMTP reply for reject or tempfail: ``550``, ``5.7.1``, lines of text."""

    code: str
    enhanced: str | None
    lines: tuple[str, ...]


@dataclass(slots=True)
class Changes:
    """Modifications to apply at end of message, in the order they are listed here.

    ``change_headers`` entries are ``(name, index, value)``: the index-th (1-based) header of
    that name gets the value; an empty value removes it. ``new_body`` is a file with the whole
    new body (CRLF line ends); the session removes it once sent.
    """

    add_headers: list[tuple[str, str]] = field(default_factory=list)
    change_headers: list[tuple[str, int, str]] = field(default_factory=list)
    add_recipients: list[str] = field(default_factory=list)
    delete_recipients: list[str] = field(default_factory=list)
    new_body: Path | None = None

    def __bool__(self) -> bool:
        return bool(
            self.add_headers
            or self.change_headers
            or self.add_recipients
            or self.delete_recipients
            or self.new_body
        )


@dataclass(frozen=True, slots=True)
class StepResult:
    """What one filter or address rule did to a message, for the log and the statistics."""

    name: str
    outcome: str
    seconds: float = 0.0
    detail: str = ""  # e.g. a program's exit code and output, shown by the offline test


@dataclass(slots=True)
class Decision:
    verdict: Verdict = Verdict.CONTINUE
    reply: Reply | None = None
    changes: Changes = field(default_factory=Changes)
    steps: list[StepResult] = field(default_factory=list)


class Pipeline(Protocol):
    """What the session needs of a pipeline."""

    @property
    def wants_content(self) -> bool:
        """True if some filter reads the message, so the session must spool it."""
        ...

    async def run(self, message: Message) -> Decision:
        """Decide on ``message``; may take long (the session keeps the MTA waiting)."""
        ...


class PassThrough:
    """The empty pipeline: every message continues unchanged, nothing is spooled."""

    wants_content = False

    async def run(self, message: Message) -> Decision:
        return Decision()
