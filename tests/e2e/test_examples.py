"""The shipped examples: every config passes --check, the example config does what its comments
say through the real Postfix, and `make run` starts the daemon on a loopback socket."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from support.daemon import MilterAgentDaemon
from support.postfix import PostfixInstance
from support.sink import SmtpSink
from support.smtp import build_message, send_message
from support.util import free_port

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.conf"))
Agent = Callable[..., MilterAgentDaemon]


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_config_passes_check(path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "milter_agent", "-c", str(path), "--check"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    assert "warning" not in out.stderr


def test_example_config_stamps_and_rejects(
    postfix: PostfixInstance, sink: SmtpSink, milter_agent: Agent
) -> None:
    agent = milter_agent(
        (ROOT / "examples/milter-agent.conf").read_text(), extra_args=["--socket-mode", "0666"]
    )
    postfix.set_milter(agent.postfix_spec)
    assert send_message(
        postfix.address, "a@example.org", ["b@example.net"], build_message()
    ).accepted
    (msg,) = sink.wait_for(1)
    assert msg.header_values("X-Milter-Agent") == ["checked for a@example.org"]
    marked = build_message(body=b"hello\r\nMILTER-AGENT-REJECT-TEST\r\n")
    result = send_message(postfix.address, "a@example.org", ["b@example.net"], marked)
    assert (result.code, result.text) == (550, "5.7.1 Test marker found; message refused.")


def test_make_run_starts_the_daemon_on_loopback(tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "run.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            ["make", "-s", "run", f"PORT={port}", f"RUNDIR={tmp_path}/run"],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 60
        while f"listening on inet:{port}@127.0.0.1" not in log.read_text():
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # make and the daemon both get it
        proc.wait(timeout=30)
    deadline = time.monotonic() + 30  # make exits at once; the daemon stops on its own
    while "stopped" not in log.read_text():
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.1)
