"""The cap on header bytes held per message (max_header_size) through the real Postfix, which
limits each header (header_size_limit, 100 KB) but not how many there are."""

from __future__ import annotations

from collections.abc import Callable

from faults.faultkit import MilterClient, message_commands, peak_rss_kb, reset_peak_rss
from support.daemon import MilterAgentDaemon
from support.postfix import PostfixInstance, behind_postfix
from support.sink import SmtpSink
from support.smtp import build_message, send_message

Agent = Callable[..., MilterAgentDaemon]
#: One folded header of about 60 KB: under Postfix's header_size_limit, so it is passed on whole.
BIG_VALUE = "\r\n\t".join(["x" * 70] * 850)
REJECTED = "5.3.4 message header too large"


def big_headers(count: int) -> list[tuple[str, str]]:
    return [(f"X-Big-{n}", BIG_VALUE) for n in range(count)]


def test_headers_over_the_cap_are_rejected_and_never_held(
    postfix: PostfixInstance, sink: SmtpSink, milter_agent: Agent
) -> None:
    postfix.set(message_size_limit=64 * 1024 * 1024)
    agent = behind_postfix(milter_agent, postfix, "log_level = 0\n")
    reset_peak_rss(agent.pid)
    before = peak_rss_kb(agent.pid)
    data = build_message(headers=big_headers(300))  # 18 MB: it grew the daemon by 26 MB once
    result = send_message(postfix.address, "a@example.org", ["b@example.net"], data, timeout=120)
    assert (result.stage, result.code, result.text) == ("eom", 552, REJECTED), result
    agent.wait_for_log("decision=reject")
    growth_mb = (peak_rss_kb(agent.pid) - before) / 1024
    assert growth_mb < 6, f"the daemon grew by {growth_mb:.1f} MB for 18 MB of headers"
    log = agent.log_text()
    assert "message header over max_header_size (1048576 bytes); message rejected" in log
    assert "filters=headers:too large" in log
    sink.assert_quiet(0.3)

    # 15 of them (930 KB with the others) stay under the cap: delivered with all of them
    data = build_message(headers=big_headers(15))
    result = send_message(postfix.address, "a@example.org", ["b@example.net"], data)
    assert result.accepted, result
    (msg,) = sink.wait_for(1)
    assert [len(msg.header_values(f"X-Big-{n}")) for n in range(16)] == [1] * 15 + [0]


def test_max_header_size_is_a_setting(milter_agent: Agent) -> None:
    """Straight to the daemon (Postfix would need 100 KB headers to show a small cap)."""
    agent = milter_agent("max_header_size = 4k\n")
    headers = [("X-Pad", " " + "p" * 1000)] * 5  # with From and Subject: over 4 KiB
    with MilterClient(agent.socket_spec) as mta:
        mta.handshake()
        assert mta.message(message_commands(headers=headers[:2])) == [(b"c", b"")]
        answer = mta.message(message_commands(headers=headers))
        assert answer == [(b"y", b"552 5.3.4 message header too large\0")]
    agent.wait_for_log("message header over max_header_size (4096 bytes)")
