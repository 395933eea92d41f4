"""The spool: a private directory, 0600 files with random names, usage, errors as SpoolError."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from milter_agent.errors import SpoolError
from milter_agent.spool import Spool


def test_private_directory_and_files(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool" / "messages")
    spool.prepare()
    assert stat.S_IMODE(os.stat(spool.directory).st_mode) == 0o700
    one, two = spool.create(), spool.create()
    assert one.path != two.path and one.path.parent == spool.directory
    assert stat.S_IMODE(os.stat(one.path).st_mode) == 0o600
    one.write_header("Subject", " a\nb")
    one.write(b"\r\nbody")
    one.finish()
    assert one.path.read_bytes() == b"Subject: a\r\nb\r\n\r\nbody"
    assert spool.usage() == {"spool_files": 2, "spool_bytes": one.size}
    one.remove()
    two.remove()
    assert spool.usage() == {"spool_files": 0, "spool_bytes": 0}


def test_errors_are_spool_errors(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(SpoolError, match="cannot prepare spool directory"):
        Spool(blocker / "sub").prepare()
    with pytest.raises(SpoolError, match="cannot create a file"):
        Spool(tmp_path / "missing").create()
