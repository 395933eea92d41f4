"""milter-agent test: the daemon's session and pipeline on a message file, no MTA."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from milter_agent.cli import main
from milter_agent.offline import split_message
from support import seed

MESSAGE = b"From: a@example.com\nTo: b@example.com\nSubject: hello\n  folded\n\nbody line\n"
ROOT = Path(__file__).resolve().parents[2]


def offline(tmp_path: Path, config: str, *args: str, message: bytes = MESSAGE) -> tuple[int, str]:
    conf, eml = tmp_path / "c.conf", tmp_path / "m.eml"
    conf.write_text(config)
    eml.write_bytes(message)
    return main(["test", "-c", str(conf), *args, str(eml)]), ""


def run_json(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    config: str,
    *args: str,
    message: bytes = MESSAGE,
    sender: str = "a@example.com",
    rcpts: tuple[str, ...] = ("b@example.com",),
) -> tuple[int, dict[str, object]]:
    envelope = ["--from", sender, *(x for r in rcpts for x in ("--rcpt", r))]
    code, _ = offline(tmp_path, config, *envelope, *args, "--json", message=message)
    return code, json.loads(capsys.readouterr().out)


def test_split_message_keeps_folding_and_makes_crlf() -> None:
    headers, body = split_message(MESSAGE)
    assert headers == [
        ("From", " a@example.com"),
        ("To", " b@example.com"),
        ("Subject", " hello\n  folded"),
    ]
    assert body == b"body line\r\n"


def test_reject_gives_exit_1_and_the_reply(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, report = run_json(
        tmp_path,
        capsys,
        '[Filter]\ntask_name = no\nreject_exit_codes = "1"\nreject_message = "Go away"\nexec_cmd = "/bin/false"\n',
    )
    assert code == 1
    assert report["verdict"] == "reject" and report["reply"] == "550 5.7.1 Go away"
    assert report["steps"] == [
        {"name": "no", "outcome": "reject", "ms": report["steps"][0]["ms"], "detail": "exit 1"}
    ]  # type: ignore[index]


def test_changes_are_reported(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = """
[Address]
message_recipient = "b@example.com"
message_forward_recipient = "c@example.com"
add_header_name = "X-Fwd"
add_header_value = "from %s"

[Filter]
task_name = rewrite
exec_cmd = "/bin/sh -c 'printf \\"new body\\\\r\\\\n\\" > $0; echo Subject: changed > $1' %n %h"

[Filter]
task_name = never
run_message_sender = "nobody@example.com"
exec_cmd = "/bin/false"
"""
    code, report = run_json(tmp_path, capsys, config, "-ARHGB")
    assert code == 0 and report["verdict"] == "continue"
    assert report["recipients_added"] == ["<c@example.com>"]
    assert report["recipients_removed"] == ["<b@example.com>"]
    assert report["headers_added"] == [["X-Fwd", "from a@example.com"]]
    assert report["headers_changed"] == [["Subject", 1, "changed"]]
    assert "-body line\r\n+new body\r\n" in str(report["body_diff"])
    assert [s["outcome"] for s in report["steps"]] == [
        "-b@example.com,+c@example.com,+h:X-Fwd",
        "continue",
        "skipped:run_message_sender",
    ]  # type: ignore[index]


def test_text_report_and_config_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _ = offline(
        tmp_path,
        '[Filter]\ntask_name = t\ntempfail_exit_codes = "1"\nexec_cmd = "/bin/false"\n',
        "--from",
        "a@b",
        "--rcpt",
        "c@d",
    )
    out = capsys.readouterr().out
    assert code == 3 and "  t: tempfail (" in out and "answer: tempfail  451 4.7.1" in out
    code, _ = offline(tmp_path, "[Filter]\nexec_cmd =\n", "--from", "a@b", "--rcpt", "c@d")
    assert code == 2 and "task_name" in capsys.readouterr().err


def test_seed_examples_offline(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = seed.install(tmp_path / "usr-local")
    html = b"From: user1@x\nContent-Type: text/html\nSubject: hi\n\n<p>hi</p>\n"
    code, report = run_json(
        tmp_path,
        capsys,
        config,
        "-HIBFGARXavTM",
        message=html,
        sender="user1@x.org",
        rcpts=("user2@y.org",),
    )
    assert code == 1 and report["reply"] == "550 5.7.1 HTML mail or attachments not accepted."
    infected = b"Subject: hi\n\nhello\nEICAR-INFECTED\nbye\n"
    code, report = run_json(tmp_path, capsys, config, "-HIBFGARXavTM", message=infected)
    assert code == 0
    assert "-EICAR-INFECTED\r\n" in str(report["body_diff"])
    assert [h[0] for h in report["headers_added"]] == ["X-Virus-Scanned", "X-Virus-Checked"]  # type: ignore[index]


def test_example_config_offline(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = (ROOT / "examples" / "milter-agent.conf").read_text()
    code, report = run_json(
        tmp_path, capsys, config, message=MESSAGE + b"MILTER-AGENT-REJECT-TEST\n"
    )
    assert code == 1 and report["reply"] == "550 5.7.1 Test marker found; message refused."
