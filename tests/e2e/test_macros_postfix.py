"""The macro lists we ask for (SETSYMLIST) work with the real Postfix: a macro it sends only
when asked reaches a filter program."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from support.daemon import MilterAgentDaemon
from support.postfix import PostfixInstance
from support.sink import SmtpSink
from support.smtp import build_message, send_message

Agent = Callable[..., MilterAgentDaemon]
STAGES = (
    "connect",
    "helo",
    "mail",
    "rcpt",
    "data",
    "end_of_header",
    "end_of_data",
    "unknown_command",
)


def test_client_macros_postfix_sends_only_when_asked_reach_a_program(
    tmp_path: Path, postfix: PostfixInstance, sink: SmtpSink, milter_agent: Agent
) -> None:
    for stage in STAGES:  # not one of Postfix's own lists holds them
        names = postfix.get(f"milter_{stage}_macros").split()
        assert "{client_addr}" not in names and "{client_port}" not in names, (stage, names)
    seen = tmp_path / "seen"
    script = tmp_path / "record.sh"
    script.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" "$MILTER_CLIENT_ADDR" > {seen}\n')
    script.chmod(0o755)
    agent = milter_agent(
        "[Filter]\ntask_name = record\n"
        f'exec_cmd = "{script} %{{macro:client_addr}} %{{macro:{{client_port}}}} %{{client_addr}}"\n',
        extra_args=["--socket-mode", "0666"],
    )
    postfix.set_milter(agent.postfix_spec)
    result = send_message(postfix.address, "a@example.org", ["b@example.net"], build_message())
    assert result.accepted, result
    sink.wait_for(1)
    macro_addr, macro_port, connect_addr, env_addr = seen.read_text().splitlines()
    assert macro_addr == "127.0.0.1"  # Postfix's {client_addr}: the SMTP client's address
    assert macro_port.isdigit() and 1024 <= int(macro_port) < 65536, macro_port
    assert connect_addr == env_addr == "127.0.0.1"  # from the CONNECT packet, for comparison
