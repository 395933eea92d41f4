"""Stopping the daemon: SIGTERM and SIGINT alike, no new connections during the grace, the
message in flight finished, and ``shutdown_grace`` bounding the wait for a hung filter. A
blocking milter client plays the MTA (no Postfix needed)."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest

from faults.faultkit import MilterClient, Packet, children, spool_files, write_script
from support.daemon import MilterAgentDaemon
from support.util import wait_until

Agent = Callable[..., MilterAgentDaemon]
SIGNALS = pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=lambda s: s.name)


def message_in_flight(pool: ThreadPoolExecutor, agent: MilterAgentDaemon) -> Future[list[Packet]]:
    """Send a message and return once its filter program runs (the answer is still to come)."""

    def mta() -> list[Packet]:
        with MilterClient(agent.socket_spec, timeout=30) as client:
            client.handshake()
            return client.message()

    verdict = pool.submit(mta)
    wait_until(lambda: children(agent.pid), 10, message="the filter program never started")
    return verdict


def exit_status(agent: MilterAgentDaemon) -> int:
    assert agent.proc is not None
    return agent.proc.wait(15)


@SIGNALS
def test_a_stop_signal_refuses_new_connections_and_lets_the_message_finish(
    tmp_path: Path, milter_agent: Agent, sig: signal.Signals
) -> None:
    slow = write_script(tmp_path / "slow.sh", "#!/bin/sh\nsleep 1.5\n")
    agent = milter_agent(f'[Filter]\ntask_name = slow\nexec_cmd = "{slow}"\n')
    with ThreadPoolExecutor(1) as pool:
        verdict = message_in_flight(pool, agent)
        agent.send_signal(sig)
        agent.wait_for_log("waiting up to 30s for 1 connection(s)")  # the listener is closed
        assert not verdict.done()
        with pytest.raises(ConnectionRefusedError):
            MilterClient(agent.socket_spec, timeout=5)
        assert verdict.result(timeout=20) == [(b"c", b"")]
    assert exit_status(agent) == 0
    log = agent.log_text()
    assert "stopping: no new connections" in log and log.rstrip().endswith("INFO: stopped")
    assert "decision=continue" in log and "filters=slow:continue" in log
    assert "Traceback" not in log and "KeyboardInterrupt" not in log, log
    assert spool_files(agent) == []


@SIGNALS
def test_shutdown_grace_bounds_the_wait_for_a_hung_filter(
    tmp_path: Path, milter_agent: Agent, sig: signal.Signals
) -> None:
    hung = write_script(tmp_path / "hung.sh", "#!/bin/sh\nexec sleep 120\n")
    agent = milter_agent(
        f'shutdown_grace = 1\n[Filter]\ntask_name = hung\nexec_cmd = "{hung}"\n',
        extra_args=["-T"],  # a program outliving the grace is killed
    )
    with ThreadPoolExecutor(1) as pool:
        verdict = message_in_flight(pool, agent)
        agent.send_signal(sig)
        stopped = time.monotonic()
        assert verdict.result(timeout=20) == [(b"t", b"")]  # tempfailed: the MTA retries
        assert exit_status(agent) == 0
        assert time.monotonic() - stopped < 10  # the 1 s grace, not the default 30 s
    log = agent.log_text()
    assert "waiting up to 1s for 1 connection(s)" in log
    assert "shutting down; message tempfailed" in log
    assert "decision=tempfail" in log and "filters=shutdown:grace over" in log
    assert "decision=lost" not in log  # one line for the message, the tempfail
    assert "Traceback" not in log, log
    assert agent._group_members(agent.pid) == []  # the hung program did not outlive the daemon
