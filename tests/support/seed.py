"""The original document's message-filter examples 1-5, as written, and stand-in scripts for
the programs they name (so tests can run them without the real scanners)."""

from __future__ import annotations

from pathlib import Path

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


def install(root: Path) -> str:
    """Write the stand-ins under ``root`` (for /usr/local) and return the examples' config
    with /usr/local/ pointing there."""
    for name, body in STAND_INS.items():
        path = root / "sbin" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("#!/bin/sh\n" + body)
        path.chmod(0o755)
    return SEED_EXAMPLES.replace("/usr/local/", f"{root}/")
