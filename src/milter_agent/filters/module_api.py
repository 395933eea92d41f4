"""The stable, typed API between milter-agent and Python filter modules.

A module defines ``process_message_by_module(args, message)`` (plain or ``async def``) and may
define ``setup(config)`` and ``teardown()``. It gets the expanded ``exec_cmd`` words and a
read-only :class:`ModuleMessage`, and returns an ``int`` (meaning what a program's exit code
means for the filter), ``None`` (same as 0) or a :class:`ModuleResult`. See docs/modules.md.

This file imports nothing of the daemon, so worker processes start fast and modules can import
it cheaply.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.parser import BytesParser
from email.policy import default as default_policy
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal, TypeAlias

__all__ = [
    "ModuleConfig",
    "ModuleMessage",
    "ModuleOutcome",
    "ModuleResult",
    "ModuleVerdict",
    "ProcessFunction",
]

ModuleVerdict = Literal["continue", "reject", "tempfail", "accept", "discard"]
VERDICTS: frozenset[str] = frozenset({"continue", "reject", "tempfail", "accept", "discard"})


@dataclass(frozen=True)
class ModuleConfig:
    """What ``setup(config)`` is told about the filter that loaded the module."""

    filter_name: str
    module_name: str
    #: the ``exec_cmd`` words as written, variables not expanded
    args: tuple[str, ...] = ()
    safe: bool = False
    timeout: float = 60.0


@dataclass(frozen=True)
class ModuleResult:
    """A richer answer than an exit code. Every field is optional.

    ``reply_code`` (``"550 5.7.1"``) overrides the filter's ``reject_code`` / ``tempfail_code``.
    ``change_headers`` sets the first header of that name (or adds it); ``add_headers`` always
    appends. ``new_body`` replaces the body (LF line ends become CRLF; empty means unchanged).
    Changes need the same switches as everywhere (-A -R -H -G -B) and are applied only when the
    verdict is continue or accept.
    """

    verdict: ModuleVerdict = "continue"
    text: str = ""
    reply_code: str | None = None
    add_headers: Sequence[tuple[str, str]] = ()
    change_headers: Sequence[tuple[str, str]] = ()
    remove_headers: Sequence[str] = ()
    add_recipients: Sequence[str] = ()
    remove_recipients: Sequence[str] = ()
    new_body: bytes | str | None = None


@dataclass(frozen=True, eq=False)
class ModuleMessage:
    """One message as the filter chain has left it so far. Read-only.

    ``headers`` are ``(name, value)`` pairs with values unfolded; ``path`` is the message file
    (``%f``, CRLF line ends); ``email`` parses that file on first use.
    """

    sender: str
    recipients: tuple[str, ...]
    headers: tuple[tuple[str, str], ...]
    macros: Mapping[str, str]
    queue_id: str = ""
    client_address: str = ""
    client_name: str = ""
    helo: str = ""
    size: int = 0
    path: Path | None = None
    _parsed: list[EmailMessage] = field(default_factory=list, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "macros", MappingProxyType(dict(self.macros)))

    def header(self, name: str) -> str | None:
        """The first header called ``name`` (case-insensitive), None if there is none."""
        lname = name.lower()
        return next((value for hname, value in self.headers if hname.lower() == lname), None)

    @property
    def subject(self) -> str:
        return self.header("Subject") or ""

    @property
    def email(self) -> EmailMessage:
        """The message file parsed with ``email.policy.default`` (parsed once, on first use)."""
        if not self._parsed:
            if self.path is None:
                raise FileNotFoundError("this message has no file")
            parser = BytesParser(_class=EmailMessage, policy=default_policy)
            with open(self.path, "rb") as f:
                self._parsed.append(parser.parse(f))
        return self._parsed[0]

    def __getstate__(self) -> dict[str, Any]:
        """For worker processes: plain values only, the parsed message is not sent."""
        state = {name: getattr(self, name) for name in self.__dataclass_fields__}
        state["macros"] = dict(self.macros)
        state["_parsed"] = []
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        for name, value in state.items():
            object.__setattr__(self, name, value)
        object.__setattr__(self, "macros", MappingProxyType(state["macros"]))


#: What process_message_by_module may return.
ModuleOutcome: TypeAlias = int | ModuleResult | None

#: The signature of process_message_by_module.
ProcessFunction: TypeAlias = Callable[
    [list[str], ModuleMessage], "ModuleOutcome | Awaitable[ModuleOutcome]"
]
