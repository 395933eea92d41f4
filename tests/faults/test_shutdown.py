"""SIGTERM with messages in flight: each finishes with all of its changes or is tempfailed,
never half-modified; the daemon exits cleanly and leaves no process or spool file behind."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from faults.faultkit import MilterClient, children, message_commands, spool_files, write_script
from milter_agent import procs
from milter_agent import protocol as p
from milter_agent.message import Message
from milter_agent.pipeline import Decision
from milter_agent.server import MilterServer
from milter_agent.session import Services
from milter_agent.socketspec import SocketSpec
from milter_agent.spool import Spool
from support.daemon import MilterAgentDaemon
from support.postfix import PostfixInstance
from support.sink import SmtpSink
from support.smtp import SmtpResult, build_message, send_message
from support.util import pid_alive, wait_until

Agent = Callable[..., MilterAgentDaemon]

# Three changes of different kinds: a delivered message must carry all three.
SLOW = """#!/bin/sh
sleep 1
printf 'X-One: 1\\nX-Two: 2\\n' > "$2"
printf 'new body\\r\\n' > "$3"
"""


def test_sigterm_with_messages_in_flight(
    tmp_path: Path, postfix: PostfixInstance, sink: SmtpSink, milter_agent: Agent
) -> None:
    script = write_script(tmp_path / "slow.sh", SLOW)
    agent = milter_agent(
        f'[Filter]\ntask_name = slow\nexec_cmd = "{script} %f %h %n"\n', extra_args=["-HB"]
    )
    postfix.set_milter(agent.postfix_spec)

    def one(i: int) -> SmtpResult:
        data = build_message(subject=f"in flight {i}", body_size=20_000)
        return send_message(postfix.address, "a@example.org", ["b@example.net"], data)

    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(one, i) for i in range(8)]
        wait_until(lambda: len(children(agent.pid)) == 8, 10, interval=0.01)
        agent.send_signal(signal.SIGTERM)
        stopped = time.monotonic()
        results = [f.result(timeout=60) for f in futures]
    assert agent.proc is not None
    assert agent.proc.wait(10) == 0
    assert time.monotonic() - stopped < 5
    assert "Traceback" not in agent.log_text()
    assert agent._group_members(agent.pid) == []  # no filter outlived the daemon
    assert spool_files(agent) == []
    accepted = {f"in flight {i}" for i, r in enumerate(results) if r.accepted}
    assert all(r.accepted or 400 <= r.code < 500 for r in results), [str(r) for r in results]
    assert len(accepted) == 8, [str(r) for r in results]  # all finished within the grace
    postfix.wait_drained()
    for msg in sink.messages:
        assert str(msg.headers["Subject"]) in accepted
        assert (msg.header_values("X-One"), msg.header_values("X-Two")) == (["1"], ["2"])
        assert msg.body == b"new body\r\n"
    assert len(sink.messages) == 8
    # the daemon is gone: Postfix now answers 4xx (milter_default_action = tempfail)
    late = one(99)
    assert late.code // 100 == 4, late


class Hang:
    """A pipeline running a program that never ends, as a hung filter with -T."""

    wants_content = False

    def __init__(self, pid_file: Path) -> None:
        self.pid_file = pid_file

    async def run(self, message: Message) -> Decision:
        await procs.run_program(
            ["/bin/sh", "-c", f"echo $$ > {self.pid_file}; exec sleep 3600"],
            env={"PATH": "/usr/bin:/bin"},
            timeout=0,
            kill=True,
            kill_grace=0.5,
        )
        return Decision()


def test_after_the_grace_a_hung_filter_is_tempfailed_and_killed(tmp_path: Path) -> None:
    """The daemon's grace (30 s) is too long to wait for here, so this drives the server
    itself with a short grace: the waiting message gets TEMPFAIL and the program is killed
    (with -T), instead of outliving the daemon."""
    spec = SocketSpec("unix", path=str(tmp_path / "s"))
    spool = Spool(tmp_path / "spool")
    spool.prepare()
    pid_file = tmp_path / "pid"
    services = Services(policy=p.Policy, pipeline=lambda: Hang(pid_file), spool=spool)

    async def go() -> bytes:
        server = MilterServer(spec, services, shutdown_grace=0.3)
        await server.start()
        loop = asyncio.get_running_loop()

        def mta() -> bytes:
            with MilterClient(f"unix:{spec.path}") as client:
                client.handshake()
                return client.message(message_commands())[-1][0]

        verdict = loop.run_in_executor(None, mta)
        for _ in range(500):
            if pid_file.exists() and pid_file.read_text().strip():
                break
            await asyncio.sleep(0.01)
        await asyncio.wait_for(server.stop(), 10)
        answer = await asyncio.wait_for(verdict, 10)
        pid = int(pid_file.read_text())
        for _ in range(300):
            if not pid_alive(pid):
                break
            await asyncio.sleep(0.01)
        assert not pid_alive(pid), "the hung program outlived the stop"
        return answer

    assert asyncio.run(go()) == b"t"
