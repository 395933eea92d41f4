"""milter-agent test: the daemon's session and pipeline on a message file, no MTA."""

from __future__ import annotations

import json
import os
import pwd
import subprocess
import sys
from pathlib import Path

import pytest

from milter_agent import protocol as p
from milter_agent.cli import main
from milter_agent.offline import Envelope, commands, split_message
from support import seed

MESSAGE = b"From: a@example.com\nTo: b@example.com\nSubject: hello\n  folded\n\nbody line\n"
ROOT = Path(__file__).resolve().parents[2]
#: As root the test, like the daemon, needs -u; running the filters as ourselves is the point.
ME = pwd.getpwuid(os.geteuid()).pw_name
SYSTEM_PYTHON = "/usr/bin/python3"


def offline(tmp_path: Path, config: str, *args: str, message: bytes = MESSAGE) -> tuple[int, str]:
    conf, eml = tmp_path / "c.conf", tmp_path / "m.eml"
    conf.write_text(config)
    eml.write_bytes(message)
    return main(["test", "-u", ME, "-c", str(conf), *args, str(eml)]), ""


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


def outcomes(report: dict[str, object]) -> list[tuple[str, str]]:
    return [(s["name"], s["outcome"]) for s in report["steps"]]  # type: ignore[attr-defined]


def test_every_section_is_listed_with_why_it_did_not_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = """
[Address]
task_name = elsewhere
message_recipient = "nobody@example.org"
add_header_name = "X-A"
add_header_value = "1"

[Filter]
task_name = no
reject_exit_codes = "1"
exec_cmd = "/bin/false"

[Address]
task_name = later
add_header_name = "X-B"
add_header_value = "2"

[Filter]
task_name = never
exec_cmd = "/bin/true"
"""
    code, report = run_json(tmp_path, capsys, config, "-H")
    assert code == 1
    assert outcomes(report) == [
        ("elsewhere", "not matched"),
        ("no", "reject"),
        ("later", "not reached"),
        ("never", "not reached"),
    ]
    code, _ = offline(tmp_path, config, "-H", "--from", "a@b", "--rcpt", "c@d")
    text = capsys.readouterr().out
    assert "  elsewhere: not matched\n" in text and "  never: not reached\n" in text
    code, report = run_json(tmp_path, capsys, config.replace("/bin/false", "/bin/true"), "-H")
    assert code == 0 and outcomes(report)[0] == ("elsewhere", "not matched")
    assert outcomes(report)[2:] == [("later", "+h:X-B"), ("never", "continue")]


@pytest.mark.parametrize(
    ("table", "exit_code", "verdict"),
    [("", 0, "continue"), ("accept", 5, "accept"), ("discard", 4, "discard")],
)
def test_exit_code_tells_the_answer(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    table: str,
    exit_code: int,
    verdict: str,
) -> None:
    codes = f'{table}_exit_codes = "7"\n' if table else ""
    config = f"[Filter]\ntask_name = f\n{codes}exec_cmd = \"/bin/sh -c 'exit 7'\"\n"
    code, report = run_json(tmp_path, capsys, config)
    assert (code, report["verdict"]) == (exit_code, verdict)


def test_monitor_filter_in_the_report_changes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = """
[Filter]
task_name = watch
mode = monitor
reject_exit_codes = "1"
reject_message = "Would refuse"
exec_cmd = "/bin/sh -c 'echo X-Seen: yes > $0; exit 1' %h"

[Filter]
task_name = tag
mode = monitor
exec_cmd = "/bin/sh -c 'echo X-Tag: 1 > $0' %h"
"""
    code, report = run_json(tmp_path, capsys, config, "-HG")
    assert code == 0 and report["verdict"] == "continue" and report["reply"] == ""
    assert outcomes(report) == [("watch", "monitor:reject"), ("tag", "monitor:continue")]
    steps = report["steps"]
    assert steps[0]["detail"] == "exit 1; would reply 550 5.7.1 Would refuse"  # type: ignore[index]
    assert steps[1]["detail"] == "exit 0; would add header X-Tag: 1"  # type: ignore[index]
    assert report["headers_added"] == [] and report["headers_changed"] == []


def test_help_is_the_test_subcommands_own(capsys: pytest.CaptureFixture[str]) -> None:
    for flag in ("--help", "-h"):
        with pytest.raises(SystemExit) as stop:
            main(["test", "-c", "/nonexistent.conf", flag])
        assert stop.value.code == 0
        out = capsys.readouterr().out
        assert out.startswith("usage: milter-agent test ")
        for option in ("--from", "--rcpt", "--client-addr", "--queue-id", "--json"):
            assert option in out, option
        assert "5  accepted by a filter" in out
        assert "--allow-add-recipient" not in out  # not the daemon's help


def test_addresses_in_brackets_are_not_bracketed_twice(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = '[Filter]\ntask_name = f\nexec_cmd = "/bin/echo %s %{recipients}"\n'
    code, report = run_json(
        tmp_path, capsys, config, sender="<a@x>", rcpts=("<b@y>", " c@z ", "<>")
    )
    assert code == 0 and report["steps"][0]["detail"] == "exit 0; stdout: a@x b@y c@z"  # type: ignore[index]
    script = commands(Envelope("a@x", ["b@y"]), [], b"")
    assert p.Mail("<a@x>") in script and p.Rcpt("<b@y>") in script


def test_ipv6_client_address_is_sent_as_family_6(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = '[Filter]\ntask_name = f\nexec_cmd = "/bin/echo %{client_addr}"\n'
    code, report = run_json(tmp_path, capsys, config, "--client-addr", "::1")
    assert code == 0 and report["steps"][0]["detail"] == "exit 0; stdout: ::1"  # type: ignore[index]
    connects = [
        c
        for c in commands(Envelope("a", ["b"], "2001:db8::25"), [], b"")
        if isinstance(c, p.Connect)
    ]
    assert [(c.family, c.address) for c in connects] == [("6", "2001:db8::25")]
    connects = [
        c for c in commands(Envelope("a", ["b"], "192.0.2.1"), [], b"") if isinstance(c, p.Connect)
    ]
    assert [c.family for c in connects] == ["4"]
    with pytest.raises(SystemExit) as stop:
        offline(tmp_path, config, "--from", "a", "--rcpt", "b", "--client-addr", "mx.example")
    assert stop.value.code == 2 and "not an IP address" in capsys.readouterr().err


def run_as_root_test(tmp_path: Path, *user: str) -> subprocess.CompletedProcess[str]:
    """`milter-agent test` in its own process (dropping privileges is for good)."""
    conf, eml = tmp_path / "c.conf", tmp_path / "m.eml"
    conf.write_text('[Filter]\ntask_name = who\nexec_cmd = "/usr/bin/id -un"\n')
    eml.write_bytes(MESSAGE)
    argv = ["test", *user, "-c", str(conf), "--from", "a@b", "--rcpt", "c@d", "--json", str(eml)]
    # The system Python with this checkout: the user must be able to read the installation
    # (the daemon's check), and the venv's interpreter may live under a 0700 /root.
    site = next(Path(sys.prefix, "lib").glob("python3*/site-packages"))
    return subprocess.run(
        [SYSTEM_PYTHON, "-m", "milter_agent", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        cwd="/",
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": f"{ROOT / 'src'}:{site}"},
    )


def test_filters_run_as_the_user_of_u_as_in_the_daemon(tmp_path: Path) -> None:
    out = run_as_root_test(tmp_path, "-u", "nobody")
    if os.geteuid() != 0:  # only root can switch users, here as in the daemon
        assert out.returncode == 2 and "only root can switch users" in out.stderr
        return
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["steps"][0]["detail"] == "exit 0; stdout: nobody"
    out = run_as_root_test(tmp_path, "-u", "root")
    assert json.loads(out.stdout)["steps"][0]["detail"] == "exit 0; stdout: root"


def test_root_without_u_is_refused_as_in_the_daemon(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        out = run_as_root_test(tmp_path)  # not root: no -u needed, filters run as we are
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["steps"][0]["detail"] == f"exit 0; stdout: {ME}"
        return
    try:
        pwd.getpwnam("_milter-agent")
        pytest.fail("this test expects no _milter-agent user on the machine")
    except KeyError:
        pass
    out = run_as_root_test(tmp_path)
    assert out.returncode == 2 and out.stdout == ""
    assert "user '_milter-agent' does not exist" in out.stderr and "-u root" in out.stderr


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
