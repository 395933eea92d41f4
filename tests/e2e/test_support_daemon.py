"""Tests of the MilterAgentDaemon helper against a stand-in that honours the same CLI
contract (the real daemon is tested through it elsewhere)."""

from __future__ import annotations

import os
import signal
import stat
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from support.daemon import DaemonError, MilterAgentDaemon
from support.util import free_port, pid_alive, wait_until

pytestmark = pytest.mark.e2e

# Behaviour is chosen by FAKE_MODE: ok | exit | silent | stubborn | orphan.
FAKE_MAIN = textwrap.dedent(
    """
    import argparse, os, signal, socket, subprocess, sys, time
    ap = argparse.ArgumentParser()
    for opt in ("-d", "-u", "-c", "-p", "-i", "--spool-dir"):
        ap.add_argument(opt, required=True)
    ap.add_argument("--socket-mode", default="0660")
    args = ap.parse_args()
    mode = os.environ.get("FAKE_MODE", "ok")
    print("argv", sys.argv[1:], file=sys.stderr, flush=True)
    if mode == "exit":
        print("fatal: bad config", file=sys.stderr, flush=True)
        sys.exit(3)
    spec = args.p
    if spec.startswith("unix:"):
        s = socket.socket(socket.AF_UNIX); s.bind(spec[5:])
    else:
        port, host = spec.split(":", 1)[1].split("@")
        s = socket.socket(); s.bind((host, int(port)))
    s.listen()
    if spec.startswith("unix:"):
        os.chmod(spec[5:], int(args.socket_mode, 8))
    if mode == "stubborn":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    else:
        signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
    if mode == "orphan":
        subprocess.Popen(["sleep", "300"])
    junk = b"x" * (8 << 20)  # something for rss_kb to see, resident before "listening on"
    if mode != "silent":
        print(f"listening on {spec}", file=sys.stderr, flush=True)
    while True:
        c, _ = s.accept(); c.close()
    """
)


@pytest.fixture
def fake(tmp_path: Path) -> Path:
    pkg = tmp_path / "lib" / "fake_agent"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "__main__.py").write_text(FAKE_MAIN)
    return tmp_path


def make(fake: Path, mode: str, *, inet: bool = False) -> MilterAgentDaemon:
    work = fake / f"work-{mode}"
    sock = f"inet:{free_port()}@127.0.0.1" if inet else f"unix:{work / 'milter.sock'}"
    config = fake / "agent.conf"
    config.write_text("# empty\n")
    return MilterAgentDaemon(
        config,
        sock,
        f"unix:{work / 'control.sock'}",
        work / "spool",
        work,
        module="fake_agent",
        env={"PYTHONPATH": str(fake / "lib"), "FAKE_MODE": mode},
    )


@pytest.mark.parametrize("inet", [False, True], ids=["unix", "inet"])
def test_start_ready_stop(fake: Path, inet: bool) -> None:
    d = make(fake, "ok", inet=inet)
    d.start(timeout=10)
    try:
        assert d.running() and pid_alive(d.pid)
        assert "listening on" in d.log_text()
        # The contract's argv, in order.
        assert d.argv[1:4] == ["-m", "fake_agent", "-d"]
        assert "--spool-dir" in d.log_text() and "-u" in d.log_text()
        # one reading of each, the peak last: the peak never falls, so it holds that reading
        rss = d.rss_kb()
        peak = d.peak_rss_kb()
        assert rss > 8 * 1024 and peak >= rss
        if inet:
            assert d.postfix_spec.startswith("inet:127.0.0.1:")
        else:
            assert d.postfix_spec == f"unix:{d.socket.path}"
    finally:
        rc = d.stop()
    assert rc == 0 and not d.running() and d.leftover_pids == []


def test_early_exit_is_reported_with_log(fake: Path) -> None:
    d = make(fake, "exit")
    with pytest.raises(DaemonError, match=r"exited with 3[\s\S]*fatal: bad config"):
        d.start(timeout=10)


def test_not_ready_times_out_and_is_stopped(fake: Path) -> None:
    d = make(fake, "silent")  # listens but never logs "listening on"
    with pytest.raises(DaemonError, match="not ready"):
        d.start(timeout=1.5)
    assert not d.running()


def test_sigterm_ignored_then_killed(fake: Path) -> None:
    d = make(fake, "stubborn")
    d.start(timeout=10)
    assert d.stop(timeout=1.0) == -signal.SIGKILL


def test_leftover_children_are_killed(fake: Path) -> None:
    d = make(fake, "orphan")
    d.start(timeout=10)
    assert d.stop() == 0
    assert d.leftover_pids, "the stand-in's child should have outlived it"
    wait_until(lambda: not any(pid_alive(p) for p in d.leftover_pids), 5.0)


def test_milter_agent_fixture(fake: Path, milter_agent: Callable[..., MilterAgentDaemon]) -> None:
    env = {"PYTHONPATH": str(fake / "lib"), "FAKE_MODE": "ok"}
    d = milter_agent("# config\n", module="fake_agent", env=env)
    assert d.running() and d.config.read_text() == "# config\n"
    assert d.argv[d.argv.index("--socket-mode") + 1] == "0666"
    assert d.socket.path is not None
    assert stat.S_IMODE(os.stat(d.socket.path).st_mode) == 0o666
    d2 = milter_agent("# two\n", inet=True, module="fake_agent", env=env)
    assert "--socket-mode" not in d2.argv and d2.postfix_spec.startswith("inet:127.0.0.1:")
