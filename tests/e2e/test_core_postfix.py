"""The core through the real Postfix: pass-through, a header added, a reject, a big message,
and no Nagle stall over inet or unix sockets."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import pytest

from support.daemon import MilterAgentDaemon
from support.postfix import PostfixInstance, behind_postfix
from support.sink import SmtpSink
from support.smtp import build_message, send_message

Agent = Callable[..., MilterAgentDaemon]

HEADER_RULE = """
[Address]
add_header_name = "X-Milter-Agent"
add_header_value = "seen %s"
"""

REJECT_FILTER = """
[Filter]
task_name = no_entry
reject_exit_codes = "1"
reject_message = "Message refused by policy"
exec_cmd = "/bin/sh -c 'exit 1'"
"""

SPOOLING_FILTER = """
[Filter]
task_name = reads_the_file
exec_cmd = "/usr/bin/cmp -s %f %f"
"""


def no_milter_warnings(postfix: PostfixInstance, since: int) -> None:
    """Postfix logged no warning at all since ``since`` (a milter protocol problem is logged as
    a warning, and so would be anything else wrong with the test's mail)."""
    log = postfix.log_text(since)
    assert "warning" not in log.lower(), log


def test_pass_through_delivers_the_message_unchanged(
    postfix: PostfixInstance, sink: SmtpSink, milter_agent: Agent
) -> None:
    mark = postfix.log_mark()
    agent = behind_postfix(milter_agent, postfix, "log_level = 0\n")
    data = build_message(body_size=4096, eight_bit=True)
    result = send_message(postfix.address, "a@example.org", ["b@example.net"], data)
    assert result.accepted, result
    (msg,) = sink.wait_for(1)
    assert msg.rcpt_tos == ["b@example.net"]
    assert msg.body == data.split(b"\r\n\r\n", 1)[1]
    agent.wait_for_log(f"{result.queue_id}: client=")
    assert "decision=continue" in agent.log_text()
    no_milter_warnings(postfix, mark)


def test_header_rule_adds_a_header(
    postfix: PostfixInstance, sink: SmtpSink, milter_agent: Agent
) -> None:
    behind_postfix(milter_agent, postfix, HEADER_RULE, "-H")
    result = send_message(postfix.address, "a@example.org", ["b@example.net"], build_message())
    assert result.accepted, result
    (msg,) = sink.wait_for(1)
    assert msg.header_values("X-Milter-Agent") == ["seen a@example.org"]


def test_reject_filter_gives_the_client_5xx_with_its_text(
    postfix: PostfixInstance, sink: SmtpSink, milter_agent: Agent
) -> None:
    agent = behind_postfix(milter_agent, postfix, REJECT_FILTER)
    result = send_message(postfix.address, "a@example.org", ["b@example.net"], build_message())
    assert (result.stage, result.code) == ("eom", 550), result
    assert result.text == "5.7.1 Message refused by policy"
    sink.assert_quiet(0.5)
    assert "decision=reject" in agent.log_text()


def test_20_mb_message_passes_and_memory_stays_small(
    postfix: PostfixInstance, sink: SmtpSink, milter_agent: Agent
) -> None:
    postfix.set(message_size_limit=64 * 1024 * 1024)
    agent = behind_postfix(milter_agent, postfix, SPOOLING_FILTER)
    before = agent.peak_rss_kb()
    data = build_message(body_size=20 * 1024 * 1024)
    result = send_message(postfix.address, "a@example.org", ["b@example.net"], data, timeout=120)
    assert result.accepted, result
    (msg,) = sink.wait_for(1, timeout=60)
    assert len(msg.body) == len(data.split(b"\r\n\r\n", 1)[1])
    agent.wait_for_log(f"{result.queue_id}: client=")
    assert "reads_the_file:continue" in agent.log_text()
    growth_mb = (agent.peak_rss_kb() - before) / 1024
    assert growth_mb < 8, f"daemon grew by {growth_mb:.1f} MB for a 20 MB message"
    assert list((agent.spool_dir / "messages").iterdir()) == []


def sequential_seconds(postfix: PostfixInstance, count: int) -> list[float]:
    times = []
    for i in range(count):
        data = build_message(subject=f"seq {i}")
        started = time.monotonic()
        result = send_message(postfix.address, "a@example.org", ["b@example.net"], data)
        times.append(time.monotonic() - started)
        assert result.accepted, result
    return times


@pytest.mark.parametrize("inet", [True, False], ids=["inet", "unix"])
def test_no_stall_in_sequential_messages(
    postfix: PostfixInstance, sink: SmtpSink, milter_agent: Agent, inet: bool
) -> None:
    """A Nagle / delayed-ACK stall costs ~40 ms per message; compare with no milter, same run."""
    bare = statistics.median(sequential_seconds(postfix, 15))
    behind_postfix(milter_agent, postfix, HEADER_RULE, "-H", inet=inet)
    with_milter = statistics.median(sequential_seconds(postfix, 15))
    sink.wait_for(30)
    assert with_milter - bare < 0.025, f"median {with_milter * 1000:.1f} ms vs {bare * 1000:.1f} ms"
