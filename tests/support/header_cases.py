"""Changes to a header that occurs several times, for the Postfix and Sendmail tests.

A milter names a header by its name and its occurrence (CHGHEADER index). Postfix renumbers the
headers of a name after each deletion, Sendmail does not; milter-agent sends the changes of a
name from the highest index down so that both MTAs change the header meant.
"""

from __future__ import annotations

from milter_agent.config.model import Settings
from milter_agent.work import MessageWork
from support.inproc import Edit, occurrence
from support.sink import SmtpSink
from support.smtp import build_message, send_message

DUPS = [("X-Dup", "one"), ("X-Dup", "two"), ("X-Dup", "three"), ("X-Keep", "kept")]

#: A rule that removes every X-Dup (through the daemon and its configuration).
REMOVE_DUPS = '[Address]\nremove_header_name = "X-Dup"\n'


#: What the in-process server needs to be allowed for INDEX_CASES.
INDEX_SETTINGS = Settings(allow_add_header=True, allow_change_header=True)


def dups_message() -> bytes:
    return build_message(headers=DUPS)


def deliver_dups(mta: tuple[str, int], sink: SmtpSink) -> tuple[list[str], list[str]]:
    """Send the message with the repeated headers through the MTA at ``mta`` and return the
    X-Dup and the X-Keep values the recipient got."""
    result = send_message(mta, "a@example.org", ["b@example.net"], dups_message())
    assert result.accepted, result
    (msg,) = sink.wait_for(1)
    return msg.header_values("X-Dup"), msg.header_values("X-Keep")


def _set(index: int, value: str) -> Edit:
    def edit(work: MessageWork) -> None:
        occurrence(work, "X-Dup", index).raw = " " + value

    return edit


def _delete(index: int) -> Edit:
    def edit(work: MessageWork) -> None:
        occurrence(work, "X-Dup", index).deleted = True

    return edit


def _all(*edits: Edit) -> Edit:
    def edit(work: MessageWork) -> None:
        for one in edits:
            one(work)

    return edit


#: case -> (edit of the working copy, the X-Dup values the recipient must see). No
#: configuration can yet delete one header of several, so these run on the in-process server.
INDEX_CASES: dict[str, tuple[Edit, list[str]]] = {
    "change the 2nd of 3": (_set(2, "new"), ["one", "new", "three"]),
    "remove the 1st, change the 2nd": (_all(_delete(1), _set(2, "new")), ["new", "three"]),
    "remove the 1st, change the 3rd": (_all(_delete(1), _set(3, "new")), ["two", "new"]),
    "change the 1st, remove the others": (_all(_set(1, "new"), _delete(2), _delete(3)), ["new"]),
}
