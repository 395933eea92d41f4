"""The per-message log line for a transaction that ends before its end of data, through the
real Postfix: the SMTP client gives up after RCPT, Postfix sends the milter ABORT."""

from __future__ import annotations

import smtplib
from collections.abc import Callable

from support.daemon import MilterAgentDaemon
from support.postfix import PostfixInstance

Agent = Callable[..., MilterAgentDaemon]


def test_a_transaction_reset_after_rcpt_gets_its_line(
    postfix: PostfixInstance, milter_agent: Agent
) -> None:
    agent = milter_agent("log_level = 0\n", extra_args=["--socket-mode", "0666"])
    postfix.set_milter(agent.postfix_spec)
    with smtplib.SMTP(*postfix.address, timeout=30) as smtp:
        smtp.ehlo("client.example")
        assert smtp.mail("a@example.org")[0] == 250
        assert smtp.rcpt("b@example.net")[0] == 250
        assert smtp.rset()[0] == 250
        assert smtp.mail("c@example.org")[0] == 250  # and one without a recipient
        assert smtp.rset()[0] == 250
    agent.wait_for_log("decision=aborted")
    (line,) = [line for line in agent.log_text().splitlines() if " rcpts=" in line]
    assert " from=<a@example.org> rcpts=1 " in line and "INFO:" in line, line
