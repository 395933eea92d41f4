"""The daemon and its descriptor limit: the soft RLIMIT_NOFILE is raised to the hard one at
start, and accept() failing for want of descriptors is logged once per interval, not once per
pending connection with a traceback each (Python 3.11's asyncio does that, thousands of lines a
second). No Postfix needed: a blocking milter client plays the MTA."""

from __future__ import annotations

import contextlib
import re
import resource
import time
from collections.abc import Callable

from faults.faultkit import MilterClient, fd_count
from support.daemon import MilterAgentDaemon

Agent = Callable[..., MilterAgentDaemon]
ACCEPT_FAILED = re.compile(
    r"ERROR: cannot accept connections: \[Errno 24\] Too many open files "
    r"\(open files limit (\d+)\)"
)


def test_the_soft_open_files_limit_is_raised_to_the_hard_one(milter_agent: Agent) -> None:
    agent = milter_agent("log_level = 0\n", nofile=(256, 4096))
    assert resource.prlimit(agent.pid, resource.RLIMIT_NOFILE) == (4096, 4096)


def answered(client: MilterClient) -> bool:
    """Whether the daemon answers this connection's negotiation within the client's timeout."""
    try:
        client.handshake()
    except TimeoutError:
        return False
    return True


def test_out_of_descriptors_when_accepting_logs_one_line(milter_agent: Agent) -> None:
    agent = milter_agent("log_level = 0\n")
    base = fd_count(agent.pid)
    soft, hard = resource.prlimit(agent.pid, resource.RLIMIT_NOFILE)
    resource.prlimit(agent.pid, resource.RLIMIT_NOFILE, (base + 3, hard))
    mark = len(agent.log_text())
    clients: list[MilterClient] = []
    try:
        for _ in range(10):  # each accepted connection takes a descriptor, until none is left
            clients.append(MilterClient(agent.socket_spec, timeout=1.0))
            if not answered(clients[-1]):
                break
        else:
            raise AssertionError("the daemon accepted 10 connections with 3 descriptors free")
        # more connections in the listen backlog: each wake-up of the loop retries them all
        clients += [MilterClient(agent.socket_spec, timeout=1.0) for _ in range(30)]
        time.sleep(3)
        window = agent.log_text()[mark:]
    finally:
        for client in clients:
            client.close()
    (limit,) = ACCEPT_FAILED.findall(window)  # one line for 3 s of failing accept()s
    assert int(limit) == base + 3
    assert "Traceback" not in window and "out of system resource" not in window, window
    assert len(window.splitlines()) < 10, window

    # descriptors free again: the daemon accepts and answers at once
    resource.prlimit(agent.pid, resource.RLIMIT_NOFILE, (soft, hard))
    with contextlib.closing(MilterClient(agent.socket_spec, timeout=5.0)) as client:
        client.handshake()
        assert client.message() == [(b"c", b"")]
    assert agent.stop() == 0
    assert "Traceback" not in agent.log_text(), agent.log_text()[mark:]
