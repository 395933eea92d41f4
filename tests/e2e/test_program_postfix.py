"""Message filters running external programs, through the real Postfix."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from support.daemon import MilterAgentDaemon, ma_json
from support.filter_cases import BUSY, BUSY_ANSWER, shell_script, virus_check
from support.postfix import PostfixInstance, behind_postfix
from support.sink import SmtpSink
from support.smtp import build_message, send_message

Agent = Callable[..., MilterAgentDaemon]


def send(
    postfix: PostfixInstance,
    sender: str = "a@example.org",
    rcpts: tuple[str, ...] = ("b@example.net",),
    **kw: object,
):  # type: ignore[no-untyped-def]
    return send_message(
        postfix.address, sender, list(rcpts), build_message(mail_from=sender, to=rcpts, **kw)
    )  # type: ignore[arg-type]


def test_reject_with_the_filters_own_text(
    tmp_path: Path, postfix: PostfixInstance, sink: SmtpSink, milter_agent: Agent
) -> None:
    scan = shell_script(
        tmp_path / "scan.sh", 'echo "Found Eicar-Test-Signature in %f" > "$2"; exit 1\n'
    )
    behind_postfix(milter_agent, postfix, virus_check(f"{scan} %f %r"))
    result = send(postfix)
    assert (result.stage, result.code) == ("eom", 550), result
    assert result.text == "5.7.1 Found Eicar-Test-Signature in %f"
    sink.assert_quiet(0.3)


def test_tempfail_exit_code_gives_4xx(
    tmp_path: Path, postfix: PostfixInstance, sink: SmtpSink, milter_agent: Agent
) -> None:
    behind_postfix(milter_agent, postfix, BUSY)
    result = send(postfix)
    assert (result.stage, result.code, result.text) == BUSY_ANSWER


def test_new_body_and_headers_from_the_filter(
    tmp_path: Path, postfix: PostfixInstance, sink: SmtpSink, milter_agent: Agent
) -> None:
    cure = shell_script(
        tmp_path / "cure.sh",
        """
printf 'cured body\\r\\nline 2\\r\\n' > "$2"
printf 'X-Virus-Scanned: stand-in 1.0\\nX-Virus-Status: cured\\n' > "$3"
""",
    )
    behind_postfix(
        milter_agent,
        postfix,
        f"""
[Filter]
task_name = virus_cure
exec_cmd = "{cure} %f %n %h"
""",
        "-BHG",
    )
    assert send(postfix).accepted
    (msg,) = sink.wait_for(1)
    assert msg.body == b"cured body\r\nline 2\r\n"
    assert msg.header_values("X-Virus-Scanned") == ["stand-in 1.0"]
    assert msg.header_values("X-Virus-Status") == ["cured"]


def test_repeated_names_in_the_header_file_replace_then_add(
    tmp_path: Path, postfix: PostfixInstance, sink: SmtpSink, milter_agent: Agent
) -> None:
    scan = shell_script(
        tmp_path / "scan.sh",
        "printf 'X-Virus-Scanned: ours\\nX-Seen: a\\nX-Virus-Scanned: second\\nX-Seen: b\\n'"
        ' > "$1"\n',
    )
    behind_postfix(
        milter_agent, postfix, f'[Filter]\ntask_name = scan\nexec_cmd = "{scan} %h"\n', "-HG"
    )
    upstream = [("X-Virus-Scanned", "upstream"), ("X-Virus-Scanned", "upstream 2")]
    assert send(postfix, headers=upstream).accepted
    (msg,) = sink.wait_for(1)
    # the first line replaces the first upstream header; the others add, in file order
    assert msg.header_values("X-Virus-Scanned") == ["ours", "upstream 2", "second"]
    assert msg.header_values("X-Seen") == ["a", "b"]
    assert msg.header_block.endswith(b"X-Seen: a\r\nX-Virus-Scanned: second\r\nX-Seen: b\r\n\r\n")


def test_later_filter_sees_the_changes_of_an_earlier_one(
    tmp_path: Path, postfix: PostfixInstance, sink: SmtpSink, milter_agent: Agent
) -> None:
    seen = tmp_path / "seen.eml"
    behind_postfix(
        milter_agent,
        postfix,
        f"""
[Filter]
task_name = rewrite
exec_cmd = "/bin/sh -c 'printf new-body > $0' %n"

[Filter]
task_name = look
exec_cmd = "/bin/cp %f {seen}"
""",
        "-B",
    )
    assert send(postfix).accepted
    sink.wait_for(1)
    assert seen.read_bytes().endswith(b"\r\n\r\nnew-body")


def test_timeout_kills_the_filter_and_the_message_goes_on(
    postfix: PostfixInstance, sink: SmtpSink, milter_agent: Agent
) -> None:
    agent = behind_postfix(
        milter_agent,
        postfix,
        """
[Filter]
task_name = slow
task_timeout = 1
reject_exit_codes = "0"
exec_cmd = "/bin/sleep 60"
""",
        "-T",
    )
    result = send(postfix)
    assert result.accepted, result
    sink.wait_for(1)
    assert "filter slow failed: timed out after 1s and was killed" in agent.log_text()
    stats = ma_json(agent, "filters")[0]
    assert (stats["timeouts"], stats["kills"], stats["errors"]) == (1, 1, 1)


def test_single_instance_never_runs_twice_at_once(
    tmp_path: Path, postfix: PostfixInstance, sink: SmtpSink, milter_agent: Agent
) -> None:
    lock, overlaps, runs = tmp_path / "lock", tmp_path / "overlaps", tmp_path / "runs"
    guard = shell_script(
        tmp_path / "guard.sh",
        f"""
mkdir {lock} 2>/dev/null || echo overlap >> {overlaps}
echo run >> {runs}
sleep 0.05
rmdir {lock}
""",
    )
    behind_postfix(
        milter_agent,
        postfix,
        f"""
[Filter]
task_name = exclusive
run_single_instance = 1
exec_cmd = "{guard} %f"
""",
    )
    with ThreadPoolExecutor(20) as pool:
        results = list(pool.map(lambda i: send(postfix, subject=f"parallel {i}"), range(20)))
    assert all(r.accepted for r in results), [str(r) for r in results if not r.accepted]
    sink.wait_for(20)
    assert runs.read_text().count("run") == 20
    assert not overlaps.exists()


def test_failing_filter_is_switched_off_after_three_errors(
    postfix: PostfixInstance, sink: SmtpSink, milter_agent: Agent
) -> None:
    agent = behind_postfix(
        milter_agent,
        postfix,
        """
[Filter]
task_name = crashing
reject_exit_codes = "0"
exec_cmd = "/bin/sh -c 'kill -SEGV $$'"
""",
        "-m",
        "3",
    )
    for _ in range(5):
        assert send(postfix).accepted
    sink.wait_for(5)
    stats = ma_json(agent, "filters")[0]
    assert stats["errors"] == 3 and stats["disabled"] is True and stats["skipped"] == 2
    assert "filter crashing switched off" in agent.log_text()
    ma_json(agent, "enable", "crashing")
    assert ma_json(agent, "filters")[0]["disabled"] is False


def test_shell_metacharacters_in_addresses_never_execute(
    tmp_path: Path, postfix: PostfixInstance, sink: SmtpSink, milter_agent: Agent
) -> None:
    record, marker = tmp_path / "argv.json", tmp_path / "pwned"
    dump = tmp_path / "dump.py"
    dump.write_text(
        f"import json, os, sys\njson.dump({{'argv': sys.argv[1:], 'env': os.environ.get('MILTER_SENDER')}}, open({str(record)!r}, 'w'))\n"
    )
    agent = behind_postfix(
        milter_agent,
        postfix,
        f"""
[Filter]
task_name = dump
exec_cmd = "{sys.executable} {dump} %s %{{recipients}} %{{subject}}"
""",
    )
    sender = f'"x;touch {marker}"@example.org'
    rcpt = f'"$(touch {marker})"@example.net'
    result = send(postfix, sender=sender, rcpts=(rcpt,), subject=f"`touch {marker}`; $(id)")
    assert result.accepted, result
    sink.wait_for(1)
    seen = json.loads(record.read_text())
    assert seen["argv"] == [sender, rcpt, f"`touch {marker}`; $(id)"]
    assert seen["env"] == sender
    assert not marker.exists()
    assert os.listdir(agent.spool_dir / "messages") == []
