"""The original document's examples, as written: the address-filter examples 1-4 (with what
an MTA must deliver for each), the message-filter examples 1-5 and the two module examples,
and stand-in scripts for the programs they name (so tests can run them without the real
scanners).

The golden config test (unit/config) and the Postfix and Sendmail end-to-end tests all use
these texts, so that they test the same examples.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from support.sink import SinkMessage

ADDRESS_EXAMPLES = {
    "add watcher to pair": """\
[Address]
message_sender = "user1@domain1.com"
message_recipient = "user2@domain2.com"
add_recipient = "user3"
""",
    "redirection": """\
[Address]
message_recipient = "^user1@"
message_forward_recipient = "user2 user3"
message_forward_recipient = "user4@domain4.net"
""",
    "duplication of mail traffic": """\
[Address]
message_recipient = "user56@domain99.com"
add_recipient = "watching_user"
""",
    "forwarding with service mark": """\
[Address]
message_recipient = "user1@domain1.com"
message_forward_recipient = "user2@domain2.org"
add_header_name = "X-Forward-Mail-From"
add_header_value = "user1@domain1.com"
""",
}

FILTER_EXAMPLES = {
    "mail_archive": """\
[Filter]
task_name = mail_archive_task
exec_cmd = "/usr/local/sbin/mail_archive.sh %f /usr/local/tmp/mail_archive"
""",
    "text_only": """\
[Filter]
task_name = test_html_mail_task
task_timeout = 0
reject_exit_codes = "1"
reject_message = "HTML mail or attachments not accepted."
run_message_sender = "user1"
run_message_recipient = "user2"
exec_cmd = "/usr/local/sbin/test_html_mail.sh %f"
""",
    "cure": """\
[Filter]
task_name = virus_cure_kav
run_single_instance = 1
exec_cmd = "/usr/local/sbin/kav50_cure_uue.sh %f %n"
""",
    "clamav": """\
[Filter]
task_name = virus_check_clamav
run_single_instance = 1
exec_cmd = "/usr/local/sbin/clamavscanner.sh %f /usr/local/share/clamav /usr/local/tmp/clamav_archive %r %h"
""",
    "various": """\
[Filter]
task_name = virus_check
#reject_exit_codes = "1"
run_single_instance = 1
#skip_recipient = "root"
#skip_message_subject = "ALERT! Virus Scanner Problem!"
exec_cmd = "/usr/local/sbin/virus_scanner.sh /usr/local/tmp/avir_archive %f %r %n %h"
""",
    "module_sample": """\
[Filter]
task_name = module_sample_task
module_name = "/usr/local/libexec/module_sample.so"
exec_cmd = "%f"
""",
    "module_rhta": """\
[Filter]
task_name = test_rhta_mail_module_task
module_name = "/usr/local/libexec/module_test_rhta_mail.so"
exec_cmd = "%f"
""",
}

#: The message-filter examples 1-5 in one file, in the document's order.
SEED_EXAMPLES = "\n" + "\n".join(
    FILTER_EXAMPLES[name] for name in ("mail_archive", "text_only", "cure", "clamav", "various")
)


@dataclass(frozen=True)
class AddressCase:
    """An address example sent through an MTA: the envelope and what must be delivered."""

    config: str
    sender: str
    rcpts: list[str]
    expected_rcpts: list[str]
    headers: dict[str, list[str]] = field(default_factory=dict)

    def check_delivered(self, msg: SinkMessage) -> None:
        assert sorted(msg.rcpt_tos) == sorted(self.expected_rcpts)
        for header, values in self.headers.items():
            assert msg.header_values(header) == values


def address_cases(local: str) -> dict[str, AddressCase]:
    """The address examples through an MTA that delivers a bare local part as ``user@local``."""
    other = "someone@example.org"
    return {
        "add watcher to pair": AddressCase(
            ADDRESS_EXAMPLES["add watcher to pair"],
            "user1@domain1.com",
            ["user2@domain2.com"],
            ["user2@domain2.com", f"user3@{local}"],
        ),
        "redirection": AddressCase(
            ADDRESS_EXAMPLES["redirection"],
            other,
            ["user1@example.com"],
            [f"user2@{local}", f"user3@{local}", "user4@domain4.net"],
        ),
        "duplication of mail traffic": AddressCase(
            ADDRESS_EXAMPLES["duplication of mail traffic"],
            other,
            ["user56@domain99.com"],
            ["user56@domain99.com", f"watching_user@{local}"],
        ),
        "forwarding with service mark": AddressCase(
            ADDRESS_EXAMPLES["forwarding with service mark"],
            other,
            ["user1@domain1.com"],
            ["user2@domain2.org"],
            {"X-Forward-Mail-From": ["user1@domain1.com"]},
        ),
    }


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


def install(root: Path) -> str:
    """Write the stand-ins under ``root`` (for /usr/local) and return the examples' config
    with /usr/local/ pointing there."""
    for name, body in STAND_INS.items():
        path = root / "sbin" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("#!/bin/sh\n" + body)
        path.chmod(0o755)
    return SEED_EXAMPLES.replace("/usr/local/", f"{root}/")
