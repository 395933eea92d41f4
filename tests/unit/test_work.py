"""The working copy of a message: header indexes, the rewritten spool file, refusals."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import shutil
from pathlib import Path

import pytest
from test_engine import message

from milter_agent.config.model import Settings
from milter_agent.errors import SpoolError
from milter_agent.message import Client, Message
from milter_agent.spool import Spool
from milter_agent.work import MessageWork
from support.engine import make_engine as engine

DUPS = [("X-Dup", " one"), ("Subject", " s"), ("X-Dup", " two"), ("X-Dup", " three")]
BODY = b"body\r\n"
ALL = Settings(
    allow_add_header=True,
    allow_change_header=True,
    allow_add_recipient=True,
    allow_remove_recipient=True,
)


def never(what: str, switch: str) -> None:
    raise AssertionError(f"refused: {what} {switch}")


def work_for(tmp_path: Path, settings: Settings = ALL) -> MessageWork:
    spool = Spool(tmp_path / "spool")
    spool.prepare()
    path = spool.directory / "m.msg"
    head = b"".join(f"{n}:{v}\r\n".encode() for n, v in DUPS)
    path.write_bytes(head + b"\r\n" + BODY)
    message = Message(
        Client("c", "192.0.2.1", 25, "4", "h"),
        "<a@example.com>",
        recipients=["<b@example.com>"],
        headers=list(DUPS),
        macros={"i": "QID7"},
        spool_path=path,
        size=path.stat().st_size,
        body_size=len(BODY),
    )
    return MessageWork(message, spool, settings)


def test_changes_of_one_name_are_sent_from_the_highest_index_down(tmp_path: Path) -> None:
    work = work_for(tmp_path)
    work.remove_header("X-Dup", never)
    work.change_header("Subject", "new", never)
    assert work.net_changes().change_headers == [
        ("X-Dup", 3, ""),
        ("X-Dup", 2, ""),
        ("X-Dup", 1, ""),
        ("Subject", 1, "new"),
    ]


def test_a_change_after_a_deletion_names_the_original_occurrence(tmp_path: Path) -> None:
    work = work_for(tmp_path)
    work.entries[0].deleted = True  # the first X-Dup
    work.change_header("X-Dup", "new", never)  # now the first live one: the old second
    assert work.net_changes().change_headers == [("X-Dup", 2, "new"), ("X-Dup", 1, "")]
    assert work.header("X-Dup") == "new"


def test_a_full_disk_while_rewriting_is_a_spool_error_and_leaves_no_half_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    work = work_for(tmp_path)
    original = work.current_file()
    work.add_header("X-New", "1", never)

    def full(*args: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(shutil, "copyfileobj", full)
    with pytest.raises(SpoolError, match="No space left on device"):
        work.current_file()
    assert sorted(p.name for p in work.spool.directory.iterdir()) == ["m.msg"]
    monkeypatch.undo()  # space again: the next filter gets the rewritten file
    rewritten = work.current_file()
    assert rewritten is not None and rewritten != original
    assert b"X-New: 1\r\n\r\nbody\r\n" in rewritten.read_bytes()


def test_a_refusal_warns_once_per_rule_and_logs_every_message_at_debug(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    eng = engine(tmp_path, '[Address]\ntask_name = watch\nadd_recipient = "w@example.com"\n')
    for _ in range(3):
        decision = asyncio.run(eng.run(message(tmp_path)))
        assert not decision.changes
    records = [(r.levelno, r.getMessage()) for r in caplog.records if "refused" in r.getMessage()]
    assert records.count((logging.WARNING, WARNED)) == 1
    assert records.count((logging.DEBUG, f"QID42: {DROPPED}")) == 3
    assert len(records) == 4


WARNED = "watch: add recipient w@example.com refused: option -A is not given"
DROPPED = "add recipient w@example.com refused: option -A is not given; change dropped"
