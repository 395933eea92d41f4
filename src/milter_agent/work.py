"""A message as the pipeline has changed it so far, and the net changes to send at the end.

Each section sees the result of the ones before it: the recipient list after earlier
redirections, the headers after earlier additions, and (through ``current_file()``) a spool
file rewritten with the new headers and body. The milter actions are derived once, at the end,
from the difference to what the MTA sent, so adding then removing a recipient sends nothing.

Permission switches (-A -R -H -G -B) are checked here, in one place: a refused change is not
made, and ``refused`` is called so the caller can log it once per filter.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from milter_agent import variables
from milter_agent.config.model import Settings
from milter_agent.errors import SpoolError
from milter_agent.message import Message, header_text, strip_brackets
from milter_agent.pipeline import Changes
from milter_agent.spool import Spool

log = logging.getLogger("milter_agent.work")

#: Called with (what, switch) when a change is refused, e.g. ("add recipient x", "-A").
Refusal = Callable[[str, str], None]


def remove_file(path: Path) -> None:
    """Remove one of a message's files. A filter may have put something in its place that
    cannot be unlinked (a directory): that is logged, and never fails the message."""
    try:
        path.unlink(missing_ok=True)
    except OSError as exc:
        log.warning("cannot remove %s: %s", path, exc.strerror)


def address_key(address: str) -> str:
    """Identity of a recipient: brackets stripped, case-insensitive."""
    return strip_brackets(address).lower()


def envelope_form(address: str) -> str:
    """An address as written in RCPT TO and sent in ADDRCPT: inside angle brackets."""
    return f"<{strip_brackets(address)}>"


@dataclass(slots=True)
class HeaderEntry:
    """A header of the working copy; ``index`` is its 1-based occurrence among the MTA's
    headers of that name (None if a filter added it), which is what CHGHEADER needs."""

    name: str
    raw: str
    index: int | None = None
    original_raw: str | None = None
    deleted: bool = False


class MessageWork:
    """The working copy of one message while its pipeline runs."""

    def __init__(self, message: Message, spool: Spool, settings: Settings) -> None:
        self.message = message
        self.spool = spool
        self.settings = settings
        self.recipients: list[str] = list(message.recipients)
        self.entries: list[HeaderEntry] = []
        seen: dict[str, int] = {}
        for name, raw in message.headers:
            seen[name.lower()] = seen.get(name.lower(), 0) + 1
            self.entries.append(HeaderEntry(name, raw, seen[name.lower()], raw))
        self.new_body: Path | None = None
        self._file = message.spool_path
        self._dirty = False
        self._body_offset: int | None = None
        self._temp: list[Path] = []

    def _refuse(self, refused: Refusal, what: str, switch: str) -> None:
        """A change needs a switch that is not given: it is not made. ``refused`` warns once
        per rule for the daemon's lifetime; this says so for every message, at debug level."""
        log.debug(
            "%s: %s refused: option %s is not given; change dropped",
            self.message.queue_id or "NOQUEUE",
            what,
            switch,
        )
        refused(what, switch)

    # --- recipients ---------------------------------------------------------------------------

    def has_recipient(self, address: str) -> bool:
        key = address_key(address)
        return any(address_key(r) == key for r in self.recipients)

    def add_recipient(self, address: str, refused: Refusal) -> bool:
        """Add unless already present (case-insensitive); needs -A."""
        if self.has_recipient(address):
            return False
        if not self.settings.allow_add_recipient:
            self._refuse(refused, f"add recipient {strip_brackets(address)}", "-A")
            return False
        self.recipients.append(envelope_form(address))
        return True

    def remove_recipient(self, address: str, refused: Refusal) -> bool:
        """Remove a present recipient; needs -R."""
        if not self.has_recipient(address):
            return False
        if not self.settings.allow_remove_recipient:
            self._refuse(refused, f"remove recipient {strip_brackets(address)}", "-R")
            return False
        key = address_key(address)
        self.recipients = [r for r in self.recipients if address_key(r) != key]
        return True

    @property
    def recipient_addresses(self) -> list[str]:
        return [strip_brackets(r) for r in self.recipients]

    # --- headers -------------------------------------------------------------------------------

    def _live(self, name: str) -> list[HeaderEntry]:
        lname = name.lower()
        return [e for e in self.entries if not e.deleted and e.name.lower() == lname]

    def header(self, name: str) -> str | None:
        live = self._live(name)
        return header_text(live[0].raw) if live else None

    @property
    def subject(self) -> str:
        return self.header("Subject") or ""

    @property
    def headers(self) -> list[tuple[str, str]]:
        return [(e.name, e.raw) for e in self.entries if not e.deleted]

    def add_header(self, name: str, value: str, refused: Refusal) -> bool:
        """Append a header; needs -H."""
        if not self.settings.allow_add_header:
            self._refuse(refused, f"add header {name}", "-H")
            return False
        self.entries.append(HeaderEntry(name, " " + value))
        self._dirty = True
        return True

    def change_header(self, name: str, value: str, refused: Refusal) -> bool:
        """Set the first header called ``name`` (add it if absent, with -H); needs -G.

        An empty value removes that header, as CHGHEADER with an empty value does at the MTA,
        so later filters see what the recipient will; with none there, it adds nothing.
        """
        live = self._live(name)
        if not live:
            return bool(value) and self.add_header(name, value, refused)
        if not self.settings.allow_change_header:
            self._refuse(refused, f"change header {name}", "-G")
            return False
        if value:
            live[0].raw = " " + value
        else:
            live[0].deleted = True
        self._dirty = True
        return True

    def remove_header(self, name: str, refused: Refusal) -> bool:
        """Remove every header called ``name``; needs -G."""
        live = self._live(name)
        if not live:
            return False
        if not self.settings.allow_change_header:
            self._refuse(refused, f"remove header {name}", "-G")
            return False
        for entry in live:
            entry.deleted = True
        self._dirty = True
        return True

    # --- body and the spool file ----------------------------------------------------------------

    def replace_body(self, path: Path, refused: Refusal) -> bool:
        """Take over ``path`` as the new body; needs -B. The file is ours from now on."""
        if not self.settings.allow_change_body:
            self._refuse(refused, "replace body", "-B")
            path.unlink(missing_ok=True)
            return False
        if self.new_body is not None:
            self.new_body.unlink(missing_ok=True)
        self.new_body = path
        self._dirty = True
        return True

    def temp_file(self, suffix: str) -> Path:
        """A fresh empty 0600 file in the spool, removed with this message (SpoolError if the
        spool cannot take it)."""
        path = self.spool.create_empty(suffix)
        self._temp.append(path)
        return path

    def release(self, path: Path) -> None:
        """Stop tracking ``path`` (someone else removes it)."""
        with contextlib.suppress(ValueError):
            self._temp.remove(path)

    def current_file(self) -> Path | None:
        """The message as changed so far, as a file (rewritten only when something changed).

        Raises :class:`SpoolError` when the file cannot be written (full disk): not the
        fault of any filter, so the caller tempfails the message rather than count an error.
        """
        if self._dirty and self._file is not None:
            self._file = self._rewrite()
            self._dirty = False
        return self._file

    def _rewrite(self) -> Path:
        assert self._file is not None
        path = self.temp_file("msg")
        try:
            offset = self._write_copy(path, self._file)
        except OSError as exc:
            remove_file(path)  # a half-written copy must not be the next filter's %f
            self.release(path)
            raise SpoolError(f"cannot rewrite the message file: {exc}") from exc
        if self._file != self.message.spool_path:
            remove_file(self._file)
            self.release(self._file)
        self._body_offset = offset
        return path

    def _write_copy(self, path: Path, old_file: Path) -> int:
        """Write the working copy's headers and body to ``path``; return the body's offset."""
        if self._body_offset is None:  # the MTA's message: the body ends the file
            self._body_offset = os.path.getsize(old_file) - self.message.body_size
        with open(path, "wb") as out:
            for name, raw in self.headers:
                line = (name + ":" + raw).encode("utf-8", "surrogateescape")
                out.write(line.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n") + b"\r\n")
            out.write(b"\r\n")
            offset = out.tell()
            if self.new_body is not None:
                with open(self.new_body, "rb") as body:
                    shutil.copyfileobj(body, out)
            else:
                with open(old_file, "rb") as old:
                    old.seek(self._body_offset)
                    shutil.copyfileobj(old, out)
        return offset

    # --- the result ---------------------------------------------------------------------------

    def net_changes(self) -> Changes:
        """The milter changes that turn what the MTA sent into the working copy."""
        changes = Changes(new_body=self.new_body)
        current = {address_key(r) for r in self.recipients}
        original = {address_key(r) for r in self.message.recipients}
        changes.delete_recipients = [
            r for r in self.message.recipients if address_key(r) not in current
        ]
        changes.add_recipients = [r for r in self.recipients if address_key(r) not in original]
        for entry in self.entries:
            if entry.index is None:
                if not entry.deleted:
                    changes.add_headers.append((entry.name, entry.raw[1:]))
            elif entry.deleted:
                changes.change_headers.append((entry.name, entry.index, ""))
            elif entry.raw != entry.original_raw:
                changes.change_headers.append((entry.name, entry.index, entry.raw[1:]))
        # Highest index first: Postfix renumbers the headers of a name after a deletion
        # (deleting X-Dup 1 makes the old X-Dup 2 the new 1), Sendmail keeps the numbers.
        # Working from the bottom up, no change moves a header that a later change names,
        # so both MTAs hit the header meant. (A stable sort: equal indexes keep their order.)
        changes.change_headers.sort(key=lambda change: -change[1])
        return changes

    def cleanup(self, keep_body: bool) -> None:
        """Remove our temporary files; the new body stays if the session is to send it."""
        for path in self._temp:
            remove_file(path)
        self._temp.clear()
        if self.new_body is not None and not keep_body:
            remove_file(self.new_body)


def variable_values(
    work: MessageWork, files: Mapping[str, Path] | None = None
) -> dict[str, str | Sequence[str]]:
    """The values of the ``%`` variables for this message as changed so far.

    ``files`` gives the message file and the filter's output files; without it they are "".
    """
    message = work.message
    recipients = work.recipient_addresses
    chosen = (
        (recipients[-1] if work.settings.last_recipient else recipients[0]) if recipients else ""
    )
    values: dict[str, str | Sequence[str]] = {
        variables.SENDER: message.sender_address,
        variables.RECIPIENT: chosen,
        variables.RECIPIENTS: recipients,
        variables.CLIENT_ADDR: message.client.address,
        variables.CLIENT_NAME: message.client.hostname,
        variables.HELO: message.client.helo,
        variables.QUEUE_ID: message.queue_id,
        variables.SUBJECT: work.subject,
        variables.AUTH_AUTHEN: message.macros.get("{auth_authen}", ""),
    }
    for name in (variables.FILE, *variables.OUTPUT_FILES):
        values[name] = str(files[name]) if files and name in files else ""
    for name, value in message.macros.items():
        values[variables.MACRO_PREFIX + name] = value
    return values
