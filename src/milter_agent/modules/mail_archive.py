"""A sample filter module: keeps a copy of each message in a directory, then continues.

``exec_cmd = "%f /var/spool/mail-archive"``: the message file and the archive directory. Each
copy is named after the time it was stored (``20261125T104204.123456Z-<queue id>-<random>.eml``)
and appears whole or not at all: it is written to a temporary file in the same directory,
flushed to disk and renamed, and the directory is flushed too, so that the new name survives a
crash. Put the filter after those that may reject, so only messages that go on are archived.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import tempfile
from datetime import UTC, datetime

from milter_agent.filters.module_api import ModuleMessage

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


def archive_name(queue_id: str, now: datetime | None = None) -> str:
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%S.%fZ")
    qid = _UNSAFE.sub("_", queue_id) or "noqueue"
    return f"{stamp}-{qid}-{secrets.token_hex(4)}.eml"


def store(source: str, directory: str, name: str) -> str:
    """Copy ``source`` to ``directory/name`` atomically and durably; returns the new path."""
    os.makedirs(directory, exist_ok=True)
    fd, temp = tempfile.mkstemp(dir=directory, prefix=".incoming-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out, open(source, "rb") as src:
            shutil.copyfileobj(src, out)
            out.flush()
            os.fsync(out.fileno())
        final = os.path.join(directory, name)
        os.rename(temp, final)
    except BaseException:
        os.unlink(temp)
        raise
    _sync_directory(directory)
    return final


def _sync_directory(directory: str) -> None:
    """The rename is an entry in the directory: without this fsync a crash can lose it, and
    the copy with it, although the file's own data is on disk."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def process_message_by_module(args: list[str], message: ModuleMessage) -> int:
    if len(args) != 2:
        raise ValueError('expected exec_cmd = "%f DIRECTORY"')
    source, directory = args
    store(source, directory, archive_name(message.queue_id))
    return 0
