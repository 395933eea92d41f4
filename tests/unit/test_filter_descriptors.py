"""-C: a filter program inherits no descriptor but its standard input, output and error, with
or without the switch (docs/configuration.md, "Decision — -C")."""

from __future__ import annotations

import asyncio
import os
import re
import socket
from datetime import datetime
from pathlib import Path

import pytest

from support.engine import make_engine, small_message

_FD_LINE = re.compile(r" (\d+) -> (.*)$")


def run_listing_filter(tmp_path: Path, *argv: str) -> dict[int, str]:
    """Run a filter that lists its own descriptors (ls, exec'ed by sh after the redirection,
    so no shell descriptor is left); return fd -> target."""
    out = tmp_path / "fds.txt"
    text = f"""
    [Filter]
    task_name = fds
    exec_cmd = "/bin/sh -c 'exec /bin/ls -l /proc/self/fd > $0' {out}"
    """
    engine = make_engine(tmp_path, text, *argv, now=lambda: datetime(2026, 1, 5, 10, 0))
    decision = asyncio.run(engine.run(small_message(tmp_path / "spool" / "m.msg")))
    assert [step.outcome for step in decision.steps] == ["continue"], decision.steps
    found: dict[int, str] = {}
    for line in out.read_text().splitlines():
        match = _FD_LINE.search(line)
        if match:
            found[int(match.group(1))] = match.group(2)
    return found


@pytest.mark.parametrize("argv", [(), ("-C",)], ids=["without -C", "with -C"])
def test_a_filter_inherits_only_its_standard_descriptors(
    tmp_path: Path, argv: tuple[str, ...]
) -> None:
    # descriptors the daemon has open and marked inheritable on purpose: none may leak
    leaky_file = os.open(os.devnull, os.O_RDONLY)
    leaky_socket = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    os.set_inheritable(leaky_file, True)
    leaky_socket.set_inheritable(True)
    try:
        found = run_listing_filter(tmp_path, *argv)
    finally:
        os.close(leaky_file)
        leaky_socket.close()
    # ls's own handle on the directory it lists is the one other descriptor
    others = {fd: target for fd, target in found.items() if fd > 2}
    assert all(re.fullmatch(r"/proc/\d+/fd", target) for target in others.values()), others
    assert len(others) <= 1, others
    assert {0, 1, 2} <= set(found)
    assert found[1] == str(tmp_path / "fds.txt")
