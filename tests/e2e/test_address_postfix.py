"""The seed's four address-filter examples, as written, through the real Postfix.

Postfix qualifies bare local parts (``user3``) with $myorigin, here ``mh.localdomain``.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from support.daemon import MilterAgentDaemon
from support.postfix import PostfixInstance
from support.sink import SmtpSink
from support.smtp import build_message, send_message

Agent = Callable[..., MilterAgentDaemon]
ARGS = ["--socket-mode", "0666", "-ARHGX"]
ORIGIN = "mh.localdomain"

EXAMPLES = {
    "add watcher to pair": (
        """
[Address]
message_sender = "user1@domain1.com"
message_recipient = "user2@domain2.com"
add_recipient = "user3"
""",
        "user1@domain1.com",
        ["user2@domain2.com"],
        ["user2@domain2.com", f"user3@{ORIGIN}"],
        {},
    ),
    "redirection": (
        """
[Address]
message_recipient = "^user1@"
message_forward_recipient = "user2 user3"
message_forward_recipient = "user4@domain4.net"
""",
        "someone@example.org",
        ["user1@example.com"],
        [f"user2@{ORIGIN}", f"user3@{ORIGIN}", "user4@domain4.net"],
        {},
    ),
    "duplication of mail traffic": (
        """
[Address]
message_recipient = "user56@domain99.com"
add_recipient = "watching_user"
""",
        "someone@example.org",
        ["user56@domain99.com"],
        ["user56@domain99.com", f"watching_user@{ORIGIN}"],
        {},
    ),
    "forwarding with service mark": (
        """
[Address]
message_recipient = "user1@domain1.com"
message_forward_recipient = "user2@domain2.org"
add_header_name = "X-Forward-Mail-From"
add_header_value = "user1@domain1.com"
""",
        "someone@example.org",
        ["user1@domain1.com"],
        ["user2@domain2.org"],
        {"X-Forward-Mail-From": ["user1@domain1.com"]},
    ),
}


@pytest.mark.parametrize("name", list(EXAMPLES))
def test_seed_address_example(
    name: str, postfix: PostfixInstance, sink: SmtpSink, milter_agent: Agent
) -> None:
    config, sender, rcpts, expected_rcpts, headers = EXAMPLES[name]
    mark = postfix.log_mark()
    agent = milter_agent(config, extra_args=ARGS)
    postfix.set_milter(agent.postfix_spec)
    result = send_message(postfix.address, sender, rcpts, build_message(mail_from=sender, to=rcpts))
    assert result.accepted, result
    (msg,) = sink.wait_for(1)
    assert sorted(msg.rcpt_tos) == sorted(expected_rcpts)
    for header, values in headers.items():
        assert msg.header_values(header) == values
    assert "warning" not in postfix.log_text(mark).lower()


def test_rule_that_does_not_match_changes_nothing(
    postfix: PostfixInstance, sink: SmtpSink, milter_agent: Agent
) -> None:
    agent = milter_agent(EXAMPLES["add watcher to pair"][0], extra_args=ARGS)
    postfix.set_milter(agent.postfix_spec)
    result = send_message(
        postfix.address, "other@domain1.com", ["user2@domain2.com"], build_message()
    )
    assert result.accepted, result
    (msg,) = sink.wait_for(1)
    assert msg.rcpt_tos == ["user2@domain2.com"]


def test_without_permission_the_change_is_refused_and_logged(
    postfix: PostfixInstance, sink: SmtpSink, milter_agent: Agent
) -> None:
    agent = milter_agent(
        EXAMPLES["duplication of mail traffic"][0], extra_args=["--socket-mode", "0666"]
    )
    postfix.set_milter(agent.postfix_spec)
    for _ in range(2):
        result = send_message(
            postfix.address, "a@example.org", ["user56@domain99.com"], build_message()
        )
        assert result.accepted, result
    messages = sink.wait_for(2)
    assert [m.rcpt_tos for m in messages] == [["user56@domain99.com"]] * 2
    log = agent.log_text()
    assert "add recipient watching_user refused: option -A is not given" in log
    assert log.count("refused: option -A") == 1  # once per filter, not per message
