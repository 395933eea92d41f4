"""The seed's message-filter examples 1-5, as written, with stand-in scripts, through Postfix.

Only the paths change: /usr/local/sbin and /usr/local/tmp point into the test's directory.
The seed runs milter-agent with -HIBFGARXavTM, which is what these tests pass too.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from support import seed
from support.daemon import MilterAgentDaemon
from support.postfix import PostfixInstance
from support.sink import SmtpSink
from support.smtp import build_message, send_message

Agent = Callable[..., MilterAgentDaemon]


@pytest.fixture
def seed_agent(
    tmp_path: Path, postfix: PostfixInstance, milter_agent: Agent
) -> tuple[MilterAgentDaemon, Path]:
    root = tmp_path / "usr-local"
    config = seed.install(root)
    agent = milter_agent(config, extra_args=["-HIBFGARXavTM", "-m", "5", "-l", "1"])
    postfix.set_milter(agent.postfix_spec)
    return agent, root


def test_text_mail_is_archived_scanned_and_delivered(
    seed_agent: tuple[MilterAgentDaemon, Path], postfix: PostfixInstance, sink: SmtpSink
) -> None:
    agent, root = seed_agent
    data = build_message(mail_from="user1@example.org", to=["user2@example.net"])
    assert send_message(postfix.address, "user1@example.org", ["user2@example.net"], data).accepted
    (msg,) = sink.wait_for(1)
    assert msg.header_values("X-Virus-Scanned") == [f"ClamAV stand-in ({root}/share/clamav)"]
    assert msg.header_values("X-Virus-Checked") == ["yes"]
    (archived,) = (root / "tmp" / "mail_archive").iterdir()
    assert archived.read_bytes().endswith(data.split(b"\r\n\r\n", 1)[1])
    assert "spool file" in agent.log_text()  # -I logs the spool file name and size


def test_html_mail_from_user1_to_user2_is_rejected(
    seed_agent: tuple[MilterAgentDaemon, Path], postfix: PostfixInstance, sink: SmtpSink
) -> None:
    html = build_message(headers=[("Content-Type", "text/html")]).replace(
        b"Content-Type: text/plain; charset=us-ascii\r\n", b""
    )
    result = send_message(postfix.address, "user1@example.org", ["user2@example.net"], html)
    assert (result.code, result.text) == (550, "5.7.1 HTML mail or attachments not accepted.")
    other = send_message(postfix.address, "user9@example.org", ["user2@example.net"], html)
    assert other.accepted  # the condition does not hold for other senders
    sink.wait_for(1)


def test_infected_mail_is_cured(
    seed_agent: tuple[MilterAgentDaemon, Path], postfix: PostfixInstance, sink: SmtpSink
) -> None:
    data = build_message(body=b"hello\r\nEICAR-INFECTED attachment\r\nbye\r\n")
    assert send_message(postfix.address, "a@example.org", ["b@example.net"], data).accepted
    (msg,) = sink.wait_for(1)
    assert msg.body == b"hello\r\nbye\r\n"
