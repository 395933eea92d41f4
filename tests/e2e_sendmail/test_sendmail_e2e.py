"""milter-agent through the real Sendmail 8.17: the same cases as with Postfix (pass-through,
a header rule, reject, tempfail, the seed's recipient examples, a new body) and Sendmail's own
macros seen by a filter.

Differences from Postfix that the assertions encode:
- Sendmail does not qualify a bare local part added by the milter (``user3``) with a domain the
  way Postfix does with $myorigin (``user3@mh.localdomain``): it is a *local* user of the
  Sendmail host. Here local users go to the sink through MAIL_HUB ``[127.0.0.1]``, which
  addresses them as ``user3@[127.0.0.1]``.
- Sendmail sends the milter its own ``Received:`` header first and adds no other header to
  these complete test messages.
- A reject or tempfail from the milter at end of message is passed on as milter-agent sent it.
"""

from __future__ import annotations

import re
import smtplib
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from support.daemon import MilterAgentDaemon
from support.filter_cases import BUSY, BUSY_ANSWER, shell_script, virus_check
from support.header_cases import INDEX_CASES, INDEX_SETTINGS, REMOVE_DUPS, deliver_dups
from support.inproc import serve
from support.seed import address_cases
from support.sendmail import LOCAL_DOMAIN_AT_SINK, SendmailInstance, sendmail_queue_id
from support.sink import SmtpSink
from support.smtp import SmtpResult, build_message, make_body, send_message

Agent = Callable[..., MilterAgentDaemon]
LOCAL = LOCAL_DOMAIN_AT_SINK

#: What Sendmail logs when something went wrong between it and the milter.
MILTER_TROUBLE = re.compile(
    r"Milter.*(error|abort|timeout|timed out|bogus|unknown|to error state|too long|"
    r"rejected|tempfail|failed)",
    re.IGNORECASE,
)


HEADER_RULE = """
[Address]
add_header_name = "X-Milter-Agent"
add_header_value = "seen %s"
"""


def start(
    milter_agent: Agent, sendmail: SendmailInstance, config: str, *args: str
) -> MilterAgentDaemon:
    """milter-agent on a free loopback port, and Sendmail pointed at it."""
    agent = milter_agent(config, inet=True, extra_args=list(args))
    sendmail.set_milter(agent.socket_spec)  # inet:PORT@127.0.0.1, Sendmail's own syntax
    return agent


def send(
    sendmail: SendmailInstance,
    sender: str = "a@example.org",
    rcpts: tuple[str, ...] = ("b@example.net",),
    **kw: object,
) -> SmtpResult:
    data = build_message(mail_from=sender, to=rcpts, **kw)  # type: ignore[arg-type]
    return send_message(sendmail.address, sender, list(rcpts), data)


def no_milter_trouble(sendmail: SendmailInstance, since: int) -> None:
    bad = [line for line in sendmail.log_text(since).splitlines() if MILTER_TROUBLE.search(line)]
    assert not bad, "\n".join(bad)


def test_message_passes_unchanged_8bit_body_intact(
    sendmail: SendmailInstance, sink: SmtpSink, milter_agent: Agent
) -> None:
    mark = sendmail.log_mark()
    agent = start(
        milter_agent, sendmail, '[Filter]\ntask_name = look\nexec_cmd = "/usr/bin/cmp -s %f %f"\n'
    )
    data = build_message(body_size=8192, eight_bit=True)
    result = send_message(sendmail.address, "a@example.org", ["b@example.net"], data)
    assert result.accepted, result
    queue_id = sendmail_queue_id(result.text)
    (msg,) = sink.wait_for(1)
    assert (msg.mail_from, msg.rcpt_tos) == ("a@example.org", ["b@example.net"])
    head, body = data.split(b"\r\n\r\n", 1)
    assert msg.body == body
    # Sendmail puts its Received: on top and leaves the client's header block as it was.
    assert msg.data.startswith(b"Received: from client.example.test (localhost [127.0.0.1])")
    assert msg.header_block.endswith(head + b"\r\n\r\n")
    assert "BODY=8BITMIME" in msg.mail_options
    agent.wait_for_log(f"{queue_id}: client=localhost[127.0.0.1] from=<a@example.org>")
    assert "decision=continue" in agent.log_text()
    no_milter_trouble(sendmail, mark)


def test_address_rule_adds_a_header(
    sendmail: SendmailInstance, sink: SmtpSink, milter_agent: Agent
) -> None:
    mark = sendmail.log_mark()
    start(
        milter_agent,
        sendmail,
        """
[Address]
message_recipient = "b@example.net"
add_header_name = "X-Milter-Agent"
add_header_value = "seen %s in %{queue_id}"
""",
        "-H",
    )
    result = send(sendmail)
    assert result.accepted, result
    (msg,) = sink.wait_for(1)
    value = f"seen a@example.org in {sendmail_queue_id(result.text)}"
    assert msg.header_values("X-Milter-Agent") == [value]
    # Exactly one space after the colon (HDR_LEADSPC is negotiated with Sendmail), at the end.
    assert msg.header_block.endswith(f"\r\nX-Milter-Agent: {value}\r\n\r\n".encode())
    no_milter_trouble(sendmail, mark)


def test_unix_socket_milter(
    sendmail: SendmailInstance, sink: SmtpSink, milter_agent: Agent
) -> None:
    """Sendmail runs as root here, so the socket's mode (0660, root) does not lock it out."""
    mark = sendmail.log_mark()
    agent = milter_agent(HEADER_RULE, extra_args=["-H"], socket_mode="0660")
    sendmail.set_milter(agent.socket_spec)  # unix:/path
    result = send(sendmail)
    assert result.accepted, result
    (msg,) = sink.wait_for(1)
    assert msg.header_values("X-Milter-Agent") == ["seen a@example.org"]
    no_milter_trouble(sendmail, mark)


def test_reject_filter_gives_the_client_550_with_its_text(
    sendmail: SendmailInstance, sink: SmtpSink, milter_agent: Agent
) -> None:
    agent = start(milter_agent, sendmail, virus_check("/bin/sh -c 'exit 1' %f"))
    mark = sendmail.log_mark()
    result = send(sendmail)
    assert (result.stage, result.code, result.text) == ("eom", 550, "5.7.1 Virus found")
    sink.assert_quiet(0.3)
    assert sendmail.queue_count() == 0
    assert "decision=reject" in agent.log_text()
    assert re.search(r"Milter: data, reject=550 5\.7\.1 Virus found", sendmail.log_text(mark))


def test_reply_file_text_wins_over_reject_message(
    tmp_path: Path, sendmail: SendmailInstance, sink: SmtpSink, milter_agent: Agent
) -> None:
    scan = shell_script(tmp_path / "scan.sh", 'echo "Found Eicar-Test-Signature" > "$2"; exit 1\n')
    start(milter_agent, sendmail, virus_check(f"{scan} %f %r"))
    result = send(sendmail)
    assert (result.stage, result.code, result.text) == (
        "eom",
        550,
        "5.7.1 Found Eicar-Test-Signature",
    )
    sink.assert_quiet(0.3)


def test_tempfail_exit_code_gives_4xx(
    sendmail: SendmailInstance, sink: SmtpSink, milter_agent: Agent
) -> None:
    start(milter_agent, sendmail, BUSY)
    result = send(sendmail)
    assert (result.stage, result.code, result.text) == BUSY_ANSWER
    sink.assert_quiet(0.3)
    assert sendmail.queue_count() == 0  # refused, not queued


CASES = address_cases(LOCAL)


@pytest.mark.parametrize("name", list(CASES))
def test_seed_recipient_example(
    name: str, sendmail: SendmailInstance, sink: SmtpSink, milter_agent: Agent
) -> None:
    case = CASES[name]
    mark = sendmail.log_mark()
    start(milter_agent, sendmail, case.config, "-ARHGX")
    result = send(sendmail, case.sender, tuple(case.rcpts))
    assert result.accepted, result
    (msg,) = sink.wait_for(1)
    case.check_delivered(msg)
    sendmail.wait_drained(10)  # nothing left behind in the queue (e.g. a local user)
    no_milter_trouble(sendmail, mark)


def test_body_rewrite_through_the_body_file(
    tmp_path: Path, sendmail: SendmailInstance, sink: SmtpSink, milter_agent: Agent
) -> None:
    mark = sendmail.log_mark()
    start(
        milter_agent,
        sendmail,
        """
[Filter]
task_name = rewrite
exec_cmd = "/bin/sh -c 'printf \\"cured body\\\\r\\\\nline 2 \\\\303\\\\244\\\\r\\\\n\\" > $0' %n"
""",
        "-B",
    )
    result = send(sendmail, body=b"original body\r\n")
    assert result.accepted, result
    (msg,) = sink.wait_for(1)
    assert msg.body == "cured body\r\nline 2 ä\r\n".encode()
    no_milter_trouble(sendmail, mark)


def test_filter_sees_sendmails_macros(
    tmp_path: Path, sendmail: SendmailInstance, sink: SmtpSink, milter_agent: Agent
) -> None:
    record = tmp_path / "macros.txt"
    dump = shell_script(tmp_path / "dump.sh", f'for a in "$@"; do echo "$a"; done > {record}\n')
    names = [
        "%{macro:j}",
        "%{queue_id}",
        "%{client_addr}",
        "%{client_name}",
        "%{helo}",
        "%{macro:{daemon_name}}",
        "%{macro:v}",
        "%{macro:{client_resolve}}",
    ]
    start(
        milter_agent,
        sendmail,
        f'[Filter]\ntask_name = record\nexec_cmd = "{dump} {" ".join(names)}"\n',
    )
    result = send(sendmail)
    assert result.accepted, result
    sink.wait_for(1)
    seen = dict(zip(names, record.read_text().splitlines(), strict=True))
    assert seen == {
        "%{macro:j}": sendmail.myhostname,  # $j = confDOMAIN_NAME, sm.localdomain
        "%{queue_id}": sendmail_queue_id(result.text),  # macro i
        "%{client_addr}": "127.0.0.1",
        "%{client_name}": "localhost",  # from the private /etc/hosts
        "%{helo}": "client.example.test",
        "%{macro:{daemon_name}}": "MTA",  # DAEMON_OPTIONS Name=
        "%{macro:v}": "8.17.1.9",
        # Not in Sendmail's default lists: sent only because milter-agent asked for it.
        "%{macro:{client_resolve}}": "OK",
    }


def test_change_and_remove_headers(
    sendmail: SendmailInstance, sink: SmtpSink, milter_agent: Agent
) -> None:
    mark = sendmail.log_mark()
    start(
        milter_agent,
        sendmail,
        """
[Address]
change_header_name = "Subject"
change_header_value = "[checked] %{subject}"
remove_header_name = "X-Remove-Me"
""",
        "-G",
    )
    result = send(sendmail, subject="hello", headers=[("X-Remove-Me", "1"), ("X-Keep-Me", "2")])
    assert result.accepted, result
    (msg,) = sink.wait_for(1)
    assert msg.header_values("Subject") == ["[checked] hello"]
    assert msg.header_values("X-Remove-Me") == []
    assert msg.header_values("X-Keep-Me") == ["2"]
    no_milter_trouble(sendmail, mark)


def test_discard_exit_code_accepts_and_drops(
    sendmail: SendmailInstance, sink: SmtpSink, milter_agent: Agent
) -> None:
    start(
        milter_agent,
        sendmail,
        '[Filter]\ntask_name = drop\ndiscard_exit_codes = "3"\nexec_cmd = "/bin/sh -c \'exit 3\'"\n',
    )
    mark = sendmail.log_mark()
    result = send(sendmail)
    assert result.accepted, result  # the client is told 250; nothing is delivered
    sink.assert_quiet(0.5)
    assert sendmail.queue_count() == 0
    sendmail.wait_for_log(r"Milter: data, discard", since=mark)


def test_big_body_rewrite(
    tmp_path: Path, sendmail: SendmailInstance, sink: SmtpSink, milter_agent: Agent
) -> None:
    """A new body far over one milter packet (65535 bytes) must arrive whole."""
    new_body = make_body(1_000_000, eight_bit=True)
    source = tmp_path / "new-body"
    source.write_bytes(new_body)
    mark = sendmail.log_mark()
    start(
        milter_agent,
        sendmail,
        f'[Filter]\ntask_name = rewrite\nexec_cmd = "/bin/cp {source} %n"\n',
        "-B",
    )
    result = send(sendmail, body_size=200_000)
    assert result.accepted, result
    (msg,) = sink.wait_for(1)
    assert len(msg.body) == len(new_body)
    assert msg.body == new_body
    no_milter_trouble(sendmail, mark)


def test_two_messages_in_one_smtp_session(
    tmp_path: Path, sendmail: SendmailInstance, sink: SmtpSink, milter_agent: Agent
) -> None:
    """Sendmail keeps the milter connection for the whole SMTP session (ABORT between
    messages): each message gets its own queue id and its own changes."""
    mark = sendmail.log_mark()
    start(milter_agent, sendmail, HEADER_RULE.replace("seen %s", "seen %s %{queue_id}"), "-H")
    ids = []
    with smtplib.SMTP(*sendmail.address, timeout=30) as client:
        client.ehlo("client.example.test")
        for sender in ("first@example.org", "second@example.org"):
            data = build_message(mail_from=sender)
            client.mail(sender)
            client.rcpt("b@example.net")
            code, text = client.data(data)
            assert code == 250, text
            ids.append(sendmail_queue_id(text.decode()))
        client.rset()
    messages = sink.wait_for(2)
    got = sorted((m.mail_from, m.header_values("X-Milter-Agent")) for m in messages)
    assert got == [
        ("first@example.org", [f"seen first@example.org {ids[0]}"]),
        ("second@example.org", [f"seen second@example.org {ids[1]}"]),
    ]
    assert ids[0] != ids[1]
    no_milter_trouble(sendmail, mark)


def test_progress_packets_keep_a_slow_filter_within_sendmails_read_timeout(
    sendmail: SendmailInstance, sink: SmtpSink, milter_agent: Agent
) -> None:
    """Sendmail's R timeout bounds each wait for a reply packet; milter-agent's progress
    packets (every 0.3 s here) restart it, so a 3 s filter is not cut short. (Without them
    this setup answers 451 4.3.2 after 2 s: "timeout before data read, where=eom".)
    Sendmail counts these timeouts in whole seconds of time(), so R:1s may fire after a few
    milliseconds; R:2s is the shortest that means at least one second."""
    agent = milter_agent(
        'progress_interval = 0.3\n[Filter]\ntask_name = slow\nexec_cmd = "/bin/sleep 3"\n',
        inet=True,
    )
    sendmail.set_milter(agent.socket_spec, timeouts="C:10s;S:10s;R:2s;E:1m")
    mark = sendmail.log_mark()
    started = time.monotonic()
    result = send(sendmail)
    assert result.accepted, result
    assert time.monotonic() - started >= 3
    sink.wait_for(1)
    no_milter_trouble(sendmail, mark)


def test_removing_a_repeated_header_removes_every_copy(
    sendmail: SendmailInstance, sink: SmtpSink, milter_agent: Agent
) -> None:
    mark = sendmail.log_mark()
    start(milter_agent, sendmail, REMOVE_DUPS, "-G")
    assert deliver_dups(sendmail.address, sink) == ([], ["kept"])
    no_milter_trouble(sendmail, mark)


@pytest.mark.parametrize("case", list(INDEX_CASES))
def test_changes_to_repeated_headers_hit_the_header_meant(
    case: str, tmp_path: Path, sendmail: SendmailInstance, sink: SmtpSink
) -> None:
    edit, expected = INDEX_CASES[case]
    mark = sendmail.log_mark()
    with serve(edit, tmp_path, INDEX_SETTINGS) as spec:
        sendmail.set_milter(spec)
        seen = deliver_dups(sendmail.address, sink)
    assert seen == (expected, ["kept"])
    no_milter_trouble(sendmail, mark)
