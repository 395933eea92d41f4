"""Module filters through the real Postfix: the html_mail and mail_archive samples, a crashing C
module in safe mode, a changed module file picked up by a reload, and a clean stop."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from support.daemon import MilterAgentDaemon
from support.postfix import PostfixInstance, behind_postfix
from support.sink import SmtpSink
from support.smtp import SmtpResult, build_message, send_message

Agent = Callable[..., MilterAgentDaemon]
REPO = Path(__file__).resolve().parents[2]
HTML_TEXT = "5.7.1 HTML mail or attachments not accepted."
HTML_MAIL = """
[Filter]
task_name = html_mail
module_name = "milter_agent.modules.html_mail"
"""


def send(postfix: PostfixInstance, data: bytes) -> SmtpResult:
    return send_message(postfix.address, "a@example.org", ["b@example.net"], data)


def html_message(subject: str) -> bytes:
    return build_message(subject=subject, headers=[("Content-Type", "text/html")]).replace(
        b"Content-Type: text/plain; charset=us-ascii\r\n", b""
    )


@pytest.mark.parametrize("safe", ["no", "yes"])
def test_html_mail_sample_rejects_html_with_its_text(
    postfix: PostfixInstance, sink: SmtpSink, milter_agent: Agent, safe: str
) -> None:
    behind_postfix(milter_agent, postfix, f"{HTML_MAIL}module_safe_use = {safe}\n")
    result = send(postfix, html_message("html only"))
    assert (result.stage, result.code, result.text) == ("eom", 550, HTML_TEXT), result
    assert send(postfix, build_message(subject="plain text")).accepted
    (msg,) = sink.wait_for(1)
    assert msg.header_values("Subject") == ["plain text"]
    sink.assert_quiet(0.3)


def test_archive_sample_stores_exactly_the_delivered_messages(
    tmp_path: Path, postfix: PostfixInstance, sink: SmtpSink, milter_agent: Agent
) -> None:
    archive = tmp_path / "archive"
    behind_postfix(
        milter_agent,
        postfix,
        f"""{HTML_MAIL}
[Filter]
task_name = mail_archive
module_name = "milter_agent.modules.mail_archive"
exec_cmd = "%f {archive}"
""",
    )
    sent = {f"kept {i}": build_message(subject=f"kept {i}") for i in range(3)}
    for data in sent.values():
        assert send(postfix, data).accepted
    for i in range(2):
        assert send(postfix, html_message(f"refused {i}")).code == 550
    delivered = sink.wait_for(3)
    sink.assert_quiet(0.3)
    stored = sorted(archive.iterdir())
    assert [p.name for p in stored if p.name.startswith(".")] == []  # no temporary files left
    subjects = sorted(
        line.split(b":", 1)[1].strip().decode()
        for path in stored
        for line in path.read_bytes().split(b"\r\n")
        if line.startswith(b"Subject:")
    )
    assert subjects == sorted(sent) == sorted(m.header_values("Subject")[0] for m in delivered)
    for path in stored:
        copy = path.read_bytes()
        (match,) = [m for m in delivered if m.header_values("Message-ID")[0].encode() in copy]
        assert copy.endswith(b"\r\n\r\n" + match.body)


def test_a_crashing_c_module_in_safe_mode_costs_one_message_only(
    tmp_path: Path, postfix: PostfixInstance, sink: SmtpSink, milter_agent: Agent
) -> None:
    source = tmp_path / "crash.c"
    source.write_text(
        '#include <string.h>\n#include <stdlib.h>\n#include "milter_agent_module.h"\n'
        "int process_message_by_module(int argc, char **argv)\n"
        '{ if (strstr(argv[1], "crash")) abort(); return 1; }\n'
    )
    lib = tmp_path / "crash.so"
    subprocess.run(
        ["gcc", "-shared", "-fPIC", f"-I{REPO / 'include'}", "-o", str(lib), str(source)],
        check=True,
        timeout=60,
    )
    agent = behind_postfix(
        milter_agent,
        postfix,
        f"""
[Filter]
task_name = crash
module_name = "{lib}"
module_safe_use = yes
exec_cmd = "%{{subject}}"
tempfail_exit_codes = "1"
tempfail_message = "C module says later"
""",
    )
    assert send(postfix, build_message(subject="please crash")).accepted  # error: skipped
    sink.wait_for(1)
    result = send(postfix, build_message(subject="calm"))
    assert (result.code, result.text) == (451, "4.7.1 C module says later")
    agent.wait_for_log("died: killed by SIGABRT")
    assert agent.running()


def test_a_reload_picks_up_a_changed_module_and_stop_is_clean(
    tmp_path: Path, postfix: PostfixInstance, sink: SmtpSink, milter_agent: Agent
) -> None:
    mod = tmp_path / "verdict.py"
    source = "def process_message_by_module(args, message):\n    return {}\n"
    mod.write_text(source.format(1))
    agent = behind_postfix(
        milter_agent,
        postfix,
        f"""
[Filter]
task_name = verdict
module_name = "{mod}"
reject_exit_codes = "1"
reject_message = "Version one says no."

[Filter]
task_name = verdict_safe
module_name = "{mod}"
module_safe_use = yes
reject_exit_codes = "2"
""",
    )
    assert send(postfix, build_message()).text == "5.7.1 Version one says no."
    mod.write_text(source.format(0))
    os.kill(agent.pid, signal.SIGUSR1)
    agent.wait_for_log(f"module {mod} unloaded")
    assert send(postfix, build_message()).accepted
    sink.wait_for(1)
    assert agent.stop() == 0
    assert agent.leftover_pids == []  # the module workers stopped with the daemon


def test_a_hung_python_worker_is_killed_at_the_timeout_with_dash_m(
    tmp_path: Path, postfix: PostfixInstance, sink: SmtpSink, milter_agent: Agent
) -> None:
    mod = tmp_path / "spin.py"
    mod.write_text(
        "def process_message_by_module(args, message):\n"
        "    while 'spin' in message.subject:\n"
        "        pass\n"
        "    return 1\n"
    )
    agent = behind_postfix(
        milter_agent,
        postfix,
        f"""
[Filter]
task_name = spin
module_name = "{mod}"
module_safe_use = yes
task_timeout = 1
reject_exit_codes = "1"
reject_message = "Spin module answered."
""",
        "-M",
    )
    started = time.monotonic()
    assert send(postfix, build_message(subject="spin forever")).accepted  # error: skipped
    assert time.monotonic() - started < 5
    sink.wait_for(1)
    match = re.search(
        r"filter spin failed: timed out after 1s; worker (\d+) killed", agent.log_text()
    )
    assert match is not None, agent.log_text()
    assert not Path(f"/proc/{match.group(1)}").exists()
    result = send(postfix, build_message(subject="calm"))
    assert (result.code, result.text) == (550, "5.7.1 Spin module answered.")


def running(pid: int) -> bool:
    """The process exists and is not a zombie waiting to be collected."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_without_dash_m_a_message_sent_while_a_worker_hangs_gets_its_verdict(
    tmp_path: Path, postfix: PostfixInstance, sink: SmtpSink, milter_agent: Agent
) -> None:
    mod = tmp_path / "slow.py"
    mod.write_text(
        "import time\n"
        "def process_message_by_module(args, message):\n"
        "    if 'slow' in message.subject:\n"
        "        time.sleep(4)\n"
        "    return 1\n"
    )
    agent = behind_postfix(
        milter_agent,
        postfix,
        f"""
[Filter]
task_name = slow
module_name = "{mod}"
module_safe_use = yes
run_single_instance = 2
task_timeout = 1
reject_exit_codes = "1"
reject_message = "Slow module answered."
""",
    )
    assert send(postfix, build_message(subject="slow one")).accepted  # no verdict in time
    sink.wait_for(1)
    match = re.search(
        r"filter slow failed: timed out after 1s; worker (\d+) left running, no verdict",
        agent.log_text(),
    )
    assert match is not None, agent.log_text()
    hung = int(match.group(1))
    result = send(postfix, build_message(subject="quick"))
    assert (result.code, result.text) == (550, "5.7.1 Slow module answered.")
    assert running(hung)  # answered by the other worker while the hung one still ran
    agent.wait_for_log(f"module worker {hung} left running after its timeout has now exited")
    assert not running(hung)
    assert send(postfix, build_message(subject="quick again")).code == 550
