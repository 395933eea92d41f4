"""The seed's four address-filter examples, as written, through the real Postfix, and
changes to a header that occurs several times.

Postfix qualifies bare local parts (``user3``) with $myorigin, here ``mh.localdomain``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from milter_agent.config.model import Settings
from support.daemon import MilterAgentDaemon
from support.header_cases import INDEX_CASES, REMOVE_DUPS, dups_message
from support.inproc import serve
from support.postfix import PostfixInstance
from support.sink import SmtpSink
from support.smtp import build_message, send_message

Agent = Callable[..., MilterAgentDaemon]
ARGS = ["--socket-mode", "0666", "-ARHGX"]
ORIGIN = "mh.localdomain"
HEADER_SETTINGS = Settings(allow_add_header=True, allow_change_header=True)

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


# --- repeated headers: CHGHEADER indexes (see support/header_cases.py) ---------------------------


def test_removing_a_repeated_header_removes_every_copy(
    postfix: PostfixInstance, sink: SmtpSink, milter_agent: Agent
) -> None:
    mark = postfix.log_mark()
    agent = milter_agent(REMOVE_DUPS, extra_args=[*ARGS[:2], "-G"])
    postfix.set_milter(agent.postfix_spec)
    result = send_message(postfix.address, "a@example.org", ["b@example.net"], dups_message())
    assert result.accepted, result
    (msg,) = sink.wait_for(1)
    assert (msg.header_values("X-Dup"), msg.header_values("X-Keep")) == ([], ["kept"])
    assert "warning" not in postfix.log_text(mark).lower()


@pytest.mark.parametrize("case", list(INDEX_CASES))
def test_changes_to_repeated_headers_hit_the_header_meant(
    case: str, tmp_path: Path, postfix: PostfixInstance, sink: SmtpSink
) -> None:
    edit, expected = INDEX_CASES[case]
    mark = postfix.log_mark()
    with serve(edit, tmp_path, HEADER_SETTINGS) as spec:
        postfix.set_milter(spec)
        result = send_message(postfix.address, "a@example.org", ["b@example.net"], dups_message())
        assert result.accepted, result
        (msg,) = sink.wait_for(1)
    assert (msg.header_values("X-Dup"), msg.header_values("X-Keep")) == (expected, ["kept"])
    assert "warning" not in postfix.log_text(mark).lower()
