"""The seed's four address-filter examples, as written, through the real Postfix, and
changes to a header that occurs several times.

Postfix qualifies bare local parts (``user3``) with $myorigin, here ``mh.localdomain``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from support.daemon import MilterAgentDaemon
from support.header_cases import INDEX_CASES, INDEX_SETTINGS, REMOVE_DUPS, deliver_dups
from support.inproc import serve
from support.postfix import PostfixInstance
from support.seed import ADDRESS_EXAMPLES, address_cases
from support.sink import SmtpSink
from support.smtp import build_message, send_message

Agent = Callable[..., MilterAgentDaemon]
ARGS = ["--socket-mode", "0666", "-ARHGX"]
ORIGIN = "mh.localdomain"

CASES = address_cases(ORIGIN)


@pytest.mark.parametrize("name", list(CASES))
def test_seed_address_example(
    name: str, postfix: PostfixInstance, sink: SmtpSink, milter_agent: Agent
) -> None:
    case = CASES[name]
    mark = postfix.log_mark()
    agent = milter_agent(case.config, extra_args=ARGS)
    postfix.set_milter(agent.postfix_spec)
    data = build_message(mail_from=case.sender, to=case.rcpts)
    result = send_message(postfix.address, case.sender, case.rcpts, data)
    assert result.accepted, result
    (msg,) = sink.wait_for(1)
    case.check_delivered(msg)
    assert "warning" not in postfix.log_text(mark).lower()


def test_rule_that_does_not_match_changes_nothing(
    postfix: PostfixInstance, sink: SmtpSink, milter_agent: Agent
) -> None:
    agent = milter_agent(ADDRESS_EXAMPLES["add watcher to pair"], extra_args=ARGS)
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
        ADDRESS_EXAMPLES["duplication of mail traffic"], extra_args=["--socket-mode", "0666"]
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
    assert deliver_dups(postfix.address, sink) == ([], ["kept"])
    assert "warning" not in postfix.log_text(mark).lower()


@pytest.mark.parametrize("case", list(INDEX_CASES))
def test_changes_to_repeated_headers_hit_the_header_meant(
    case: str, tmp_path: Path, postfix: PostfixInstance, sink: SmtpSink
) -> None:
    edit, expected = INDEX_CASES[case]
    mark = postfix.log_mark()
    with serve(edit, tmp_path, INDEX_SETTINGS) as spec:
        postfix.set_milter(spec)
        seen = deliver_dups(postfix.address, sink)
    assert seen == (expected, ["kept"])
    assert "warning" not in postfix.log_text(mark).lower()
