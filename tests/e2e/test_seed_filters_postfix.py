"""The seed's message-filter examples 1-5, as written, with stand-in scripts, through Postfix.

Only the paths change: /usr/local/sbin and /usr/local/tmp point into the test's directory.
The seed runs milter-agent with -HIBFGARXavTM, which is what these tests pass too.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from support.daemon import MilterAgentDaemon
from support.postfix import PostfixInstance
from support.sink import SmtpSink
from support.smtp import build_message, send_message

Agent = Callable[..., MilterAgentDaemon]

SEED_EXAMPLES = """
[Filter]
task_name = mail_archive_task
exec_cmd = "/usr/local/sbin/mail_archive.sh %f /usr/local/tmp/mail_archive"

[Filter]
task_name = test_html_mail_task
task_timeout = 0
reject_exit_codes = "1"
reject_message = "HTML mail or attachments not accepted."
run_message_sender = "user1"
run_message_recipient = "user2"
exec_cmd = "/usr/local/sbin/test_html_mail.sh %f"

[Filter]
task_name = virus_cure_kav
run_single_instance = 1
exec_cmd = "/usr/local/sbin/kav50_cure_uue.sh %f %n"

[Filter]
task_name = virus_check_clamav
run_single_instance = 1
exec_cmd = "/usr/local/sbin/clamavscanner.sh %f /usr/local/share/clamav /usr/local/tmp/clamav_archive %r %h"

[Filter]
task_name = virus_check
#reject_exit_codes = "1"
run_single_instance = 1
#skip_recipient = "root"
#skip_message_subject = "ALERT! Virus Scanner Problem!"
exec_cmd = "/usr/local/sbin/virus_scanner.sh /usr/local/tmp/avir_archive %f %r %n %h"
"""

STAND_INS = {
    "mail_archive.sh": 'mkdir -p "$2" && cp "$1" "$2/$(date +%s%N).eml"\n',
    "test_html_mail.sh": "grep -qi '^Content-Type: text/html' \"$1\" && exit 1\nexit 0\n",
    # "cures" a message by dropping the infected line from the body
    "kav50_cure_uue.sh": (
        'grep -q EICAR-INFECTED "$1" || exit 0\n'
        'sed \'1,/^\\r$/d\' "$1" | grep -v EICAR-INFECTED > "$2"\n'
    ),
    "clamavscanner.sh": 'echo "X-Virus-Scanned: ClamAV stand-in ($2)" > "$5"\n',
    "virus_scanner.sh": 'echo "X-Virus-Checked: yes" > "$5"\n',
}


@pytest.fixture
def seed_agent(
    tmp_path: Path, postfix: PostfixInstance, milter_agent: Agent
) -> tuple[MilterAgentDaemon, Path]:
    root = tmp_path / "usr-local"
    for name, body in STAND_INS.items():
        path = root / "sbin" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("#!/bin/sh\n" + body)
        path.chmod(0o755)
    config = SEED_EXAMPLES.replace("/usr/local/", f"{root}/")
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
