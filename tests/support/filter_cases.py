"""Program filters that the Postfix and the Sendmail end-to-end tests both run, and what the
SMTP client must be told, so that both MTAs are held to the same cases."""

from __future__ import annotations

from pathlib import Path


def shell_script(path: Path, body: str) -> Path:
    """Write an executable ``/bin/sh`` script (``body`` without the ``#!`` line)."""
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return path


def virus_check(exec_cmd: str) -> str:
    """A filter that rejects with "Virus found" when ``exec_cmd`` exits 1."""
    return f"""
[Filter]
task_name = virus_check
reject_exit_codes = "1"
reject_message = "Virus found"
exec_cmd = "{exec_cmd}"
"""


#: A filter that always exits 75, which it configures as tempfail.
BUSY = """
[Filter]
task_name = busy
tempfail_exit_codes = "75"
tempfail_message = "Scanner busy, try later"
exec_cmd = "/bin/sh -c 'exit 75'"
"""

#: BUSY's answer to the SMTP client: (stage, code, text).
BUSY_ANSWER = ("eom", 451, "4.7.1 Scanner busy, try later")
