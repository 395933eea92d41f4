"""Changes to a header that occurs several times, for the Postfix and Sendmail tests.

A milter names a header by its name and its occurrence (CHGHEADER index). Postfix renumbers the
headers of a name after each deletion, Sendmail does not; milter-agent sends the changes of a
name from the highest index down so that both MTAs change the header meant.
"""

from __future__ import annotations

from milter_agent.work import MessageWork
from support.inproc import Edit, occurrence
from support.smtp import build_message

DUPS = [("X-Dup", "one"), ("X-Dup", "two"), ("X-Dup", "three"), ("X-Keep", "kept")]

#: A rule that removes every X-Dup (through the daemon and its configuration).
REMOVE_DUPS = '[Address]\nremove_header_name = "X-Dup"\n'


def dups_message() -> bytes:
    return build_message(headers=DUPS)


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
