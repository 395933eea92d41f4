"""The configured pipeline: address rules, program filters, chain rules, failures, net actions."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from pathlib import Path

import pytest

from milter_agent.config.options import parse_command_line
from milter_agent.config.parser import parse_config_text
from milter_agent.control import stats
from milter_agent.engine import Engine
from milter_agent.filters.results import make_reply, parse_header_lines, text_lines
from milter_agent.message import Message
from milter_agent.pipeline import Decision, Verdict
from support.engine import BODY, HEADERS, make_engine, spooled_message

MACROS = {"i": "QID42", "{auth_authen}": "alice", "j": "mx.example"}


def message(tmp_path: Path, recipients: tuple[str, ...] = ("<b@example.com>",)) -> Message:
    spool_file = tmp_path / "spool" / "m.msg"
    return spooled_message(spool_file, "<a@example.com>", recipients, HEADERS, BODY, MACROS)


def run(
    tmp_path: Path, text: str, *argv: str, recipients: tuple[str, ...] = ("<b@example.com>",)
) -> tuple[Engine, Decision]:
    eng = make_engine(tmp_path, text, *argv)
    decision = asyncio.run(eng.run(message(tmp_path, recipients)))
    return eng, decision


def leftovers(tmp_path: Path, keep: Decision) -> list[str]:
    allowed = {"m.msg"} | ({keep.changes.new_body.name} if keep.changes.new_body else set())
    return sorted(p.name for p in (tmp_path / "spool").iterdir() if p.name not in allowed)


# --- address rules -----------------------------------------------------------------------------


def test_forward_removes_matching_and_adds_targets(tmp_path: Path) -> None:
    eng, d = run(
        tmp_path,
        """
        [Address]
        message_recipient = "^user1@"
        message_forward_recipient = "user2 user3"
        message_forward_recipient = "user4@domain4.net"
        """,
        "-ARX",
        recipients=("<user1@x.org>", "<other@x.org>"),
    )
    assert d.changes.delete_recipients == ["<user1@x.org>"]
    assert d.changes.add_recipients == ["<user2>", "<user3>", "<user4@domain4.net>"]
    state = eng.registry.get("address-1")
    assert (state.runs, state.changes) == (1, 4)


def test_later_rule_sees_recipients_changed_by_earlier_rule(tmp_path: Path) -> None:
    _, d = run(
        tmp_path,
        """
        [Address]
        message_recipient = "b@example.com"
        message_forward_recipient = "c@example.com"
        [Address]
        message_recipient = "c@example.com"
        add_recipient = "watcher@example.com"
        """,
        "-AR",
    )
    assert d.changes.delete_recipients == ["<b@example.com>"]
    assert d.changes.add_recipients == ["<c@example.com>", "<watcher@example.com>"]


def test_add_then_remove_sends_nothing_and_duplicates_are_not_added(tmp_path: Path) -> None:
    _, d = run(
        tmp_path,
        """
        [Address]
        add_recipient = "x@example.com B@EXAMPLE.COM"
        [Address]
        message_recipient = "x@example.com"
        message_forward_recipient = "b@example.com"
        """,
        "-AR",
    )
    assert d.changes.add_recipients == [] and d.changes.delete_recipients == []


def test_header_add_change_remove_become_the_right_actions(tmp_path: Path) -> None:
    _, d = run(
        tmp_path,
        """
        [Address]
        add_header_name = "X-From"
        add_header_value = "%s via %{client_addr} (%{queue_id})"
        change_header_name = "Subject"
        change_header_value = "[ext] %{subject}"
        remove_header_name = "To"
        """,
        "-HG",
    )
    assert d.changes.add_headers == [("X-From", "a@example.com via 192.0.2.1 (QID42)")]
    assert d.changes.change_headers == [("To", 1, ""), ("Subject", 1, "[ext] Hello there")]


def test_refused_changes_are_logged_once_and_not_made(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    eng = make_engine(
        tmp_path,
        """
        [Address]
        task_name = watcher
        add_recipient = "w@example.com"
        add_header_name = "X-A"
        add_header_value = "1"
        """,
    )
    for _ in range(3):
        d = asyncio.run(eng.run(message(tmp_path)))
        assert not d.changes
    refusals = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert refusals == [
        "watcher: add recipient w@example.com refused: option -A is not given",
        "watcher: add header X-A refused: option -H is not given",
    ]


# --- program filters --------------------------------------------------------------------------


def filter_section(exec_cmd: str, extra: str = "") -> str:
    return f'[Filter]\ntask_name = f\nexec_cmd = "{exec_cmd}"\n{extra}'


def test_exit_codes_map_to_verdicts(tmp_path: Path) -> None:
    table = 'reject_exit_codes = "1"\ntempfail_exit_codes = "2"\naccept_exit_codes = "3"\ndiscard_exit_codes = "4"\n'
    for code, verdict in [
        (0, Verdict.CONTINUE),
        (1, Verdict.REJECT),
        (2, Verdict.TEMPFAIL),
        (3, Verdict.ACCEPT),
        (4, Verdict.DISCARD),
        (9, Verdict.CONTINUE),
    ]:
        _, d = run(tmp_path, filter_section(f"/bin/sh -c 'exit {code}'", table))
        assert d.verdict is verdict, code


def test_reply_text_from_reply_file_wins_over_stdout_and_config(tmp_path: Path) -> None:
    extra = 'reject_exit_codes = "1"\nreject_message = "configured"\nreject_code = "554 5.7.0"\n'
    cmd = "/bin/sh -c 'echo stdout text; printf \\\"line one\\\\nline two\\\\r\\\\n\\\" > $0; exit 1' %r"
    _, d = run(tmp_path, filter_section(cmd, extra))
    assert d.reply is not None
    assert (d.reply.code, d.reply.enhanced, d.reply.lines) == (
        "554",
        "5.7.0",
        ("line one", "line two"),
    )


def test_reply_text_from_stdout_then_configured(tmp_path: Path) -> None:
    extra = 'reject_exit_codes = "1"\nreject_message = "configured"\n'
    _, d = run(tmp_path, filter_section("/bin/sh -c 'echo first line; echo second; exit 1'", extra))
    assert d.reply is not None and d.reply.lines == ("first line",)
    _, d = run(tmp_path, filter_section("/bin/sh -c 'exit 1'", extra))
    assert d.reply is not None and d.reply.lines == ("configured",)


def test_program_sees_variables_environment_and_cwd(tmp_path: Path) -> None:
    out = tmp_path / "seen"
    code = (
        "import os, sys, json; json.dump({'argv': sys.argv[1:], 'cwd': os.getcwd(), "
        "'env': {k: v for k, v in os.environ.items() if k != 'PWD'}}, open(sys.argv[1], 'w'))"
    )
    (tmp_path / "dump.py").write_text(code)
    cmd = (
        f"{sys.executable} {tmp_path}/dump.py {out} %s %{{recipient}} %{{recipients}} %{{client_addr}} "
        "%{client_name} %{helo} %{queue_id} %{subject} %{auth_authen} %{macro:j} %{macro:nope} 100%%"
    )
    run(tmp_path, filter_section(cmd), recipients=("<b@example.com>", "<c@example.com>"))
    seen = json.loads(out.read_text())
    assert seen["argv"][1:] == [
        "a@example.com",
        "b@example.com",
        "b@example.com",
        "c@example.com",
        "192.0.2.1",
        "client.example",
        "helo.example",
        "QID42",
        "Hello there",
        "alice",
        "mx.example",
        "",
        "100%",
    ]
    assert seen["cwd"] == str(tmp_path / "spool")
    env = seen["env"]
    assert env["MILTER_SENDER"] == "a@example.com"
    assert env["MILTER_RECIPIENTS"] == "b@example.com\nc@example.com"
    assert env["MILTER_QUEUE_ID"] == "QID42" and env["MILTER_CLIENT_ADDR"] == "192.0.2.1"
    assert env["PATH"].startswith("/usr/local/sbin") and "HOME" not in env


def test_last_recipient_with_Q(tmp_path: Path) -> None:
    out = tmp_path / "r"
    run(
        tmp_path,
        filter_section(f"/bin/sh -c 'echo $0 > {out}' %{{recipient}}"),
        "-Q",
        recipients=("<b@example.com>", "<c@example.com>"),
    )
    assert out.read_text().strip() == "c@example.com"


def test_filter_error_skips_without_E_and_tempfails_with_E(tmp_path: Path) -> None:
    section = filter_section("/nonexistent/program %f")
    _, d = run(tmp_path, section)
    assert d.verdict is Verdict.CONTINUE and d.steps[0].outcome == "error:skipped"
    _, d = run(tmp_path, section, "-E")
    assert d.verdict is Verdict.TEMPFAIL and d.steps[0].outcome == "error:tempfail"


def test_threshold_switches_filter_off_and_reload_switches_it_on(tmp_path: Path) -> None:
    eng = make_engine(
        tmp_path, filter_section("/bin/sh -c 'kill -TERM $$'", "error_threshold = 2\n")
    )
    for _ in range(4):
        asyncio.run(eng.run(message(tmp_path)))
    state = eng.registry.get("f")
    assert (state.errors, state.skipped, state.disabled) == (2, 2, True)
    eng.registry.configure([("f", 0)])
    assert not state.disabled and state.errors == 2


def test_monitor_mode_counts_but_does_not_apply(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "milter_agent.engine")
    extra = 'reject_exit_codes = "1"\nreject_message = "Go away"\nmode = monitor\n'
    eng, d = run(tmp_path, filter_section("/bin/sh -c 'exit 1'", extra))
    assert d.verdict is Verdict.CONTINUE and d.reply is None
    assert (d.steps[0].outcome, d.steps[0].detail) == (
        "monitor:reject",
        "exit 1; would reply 550 5.7.1 Go away",
    )
    # kept apart from enforced verdicts, in the counts the control socket and metrics show
    assert dict(eng.registry.get("f").verdicts) == {"monitor:reject": 1}
    assert "QID42: filter f (monitor) would reject; would reply 550 5.7.1 Go away" in caplog.text


def test_monitor_changes_are_logged_and_not_applied(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "milter_agent.engine")
    cmd = '/bin/sh -c \'printf \\"new\\\\r\\\\n\\" > $0; printf \\"Subject: changed\\\\nX-New: 1\\\\n  folded\\\\n\\" > $1\' %n %h'
    _, d = run(tmp_path, filter_section(cmd, "mode = monitor\n"), "-BHG")
    assert not d.changes and d.verdict is Verdict.CONTINUE
    would = "would replace the body; would set header Subject: changed; would add header X-New: 1 folded"
    assert d.steps[0].outcome == "monitor:continue" and d.steps[0].detail == f"exit 0; {would}"
    assert f"QID42: filter f (monitor) would continue; {would}" in caplog.text
    assert leftovers(tmp_path, d) == []


def test_monitor_accept_does_not_stop_the_chain(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    _, d = run(
        tmp_path,
        filter_section("/bin/sh -c 'exit 3'", 'accept_exit_codes = "3"\nmode = monitor\n')
        + f'[Filter]\ntask_name = g\nexec_cmd = "/usr/bin/touch {marker}"\n',
    )
    assert marker.exists() and [s.outcome for s in d.steps] == ["monitor:accept", "continue"]


def test_monitor_error_never_decides_the_message_even_with_E(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    section = filter_section("/bin/sh -c 'kill -TERM $$'", "mode = monitor\nerror_threshold = 2\n")
    eng = make_engine(tmp_path, section, "-E")
    state = eng.registry.get("f")
    outcomes = []
    for _ in range(3):
        d = asyncio.run(eng.run(message(tmp_path)))
        assert d.verdict is Verdict.CONTINUE and d.reply is None
        outcomes.append(d.steps[0].outcome)
    # counted as errors, toward the threshold; switched off (visibly) after two
    assert outcomes == ["monitor:error", "monitor:error", "skipped:disabled"]
    assert (state.errors, state.verdicts["monitor:error"], state.disabled) == (2, 2, True)
    d = asyncio.run(make_engine(tmp_path, section, "-E").run(message(tmp_path)))
    assert d.steps[0].detail == (
        "killed by signal SIGTERM; enforced, it would tempfail the message (-E)"
    )
    assert "filter f (monitor, the message goes on) failed: killed by signal SIGTERM" in caplog.text
    assert "filter f switched off: 2 errors" in caplog.text


def test_an_internal_error_in_a_monitor_filter_does_not_decide_the_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(*_args: object) -> None:
        raise OSError("No space left on device")

    monkeypatch.setattr(Engine, "_execute", broken)
    eng = make_engine(tmp_path, filter_section("/bin/true", "mode = monitor\n"))
    d = asyncio.run(eng.run(message(tmp_path)))
    assert d.verdict is Verdict.CONTINUE and d.steps[0].outcome == "monitor:error"
    assert "No space left on device" in d.steps[0].detail
    with pytest.raises(OSError, match="No space left"):  # enforced: the session's default_action
        asyncio.run(make_engine(tmp_path, filter_section("/bin/true")).run(message(tmp_path)))


def test_max_message_size_skip_is_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "milter_agent.engine")
    size = sum(len(f"{n}:{v}\r\n") for n, v in HEADERS) + 2 + len(BODY)
    eng = make_engine(tmp_path, filter_section("/bin/true", f"max_message_size = {size - 1}\n"))
    d = asyncio.run(eng.run(message(tmp_path)))
    assert d.steps[0].outcome == "skipped:max_message_size"
    assert f"QID42: filter f skipped: {size} bytes is over max_message_size" in caplog.text
    assert eng.registry.get("f").skipped == 1
    caplog.clear()
    eng = make_engine(tmp_path, filter_section("/bin/true", f"max_message_size = {size}\n"))
    assert asyncio.run(eng.run(message(tmp_path))).steps[0].outcome == "continue"
    assert "max_message_size" not in caplog.text


def test_reject_stops_the_chain(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    _, d = run(
        tmp_path,
        filter_section("/bin/sh -c 'exit 1'", 'reject_exit_codes = "1"\n')
        + f'[Filter]\ntask_name = g\nexec_cmd = "/usr/bin/touch {marker}"\n',
    )
    assert d.verdict is Verdict.REJECT and not marker.exists()


def test_conditions_decide_who_runs(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    cmd = f"/usr/bin/touch {marker}"
    for extra, runs in [
        ('run_message_sender = "a@example.com"\n', True),
        ('run_message_sender = "z@example.com"\n', False),
        ('skip_message_subject = "Hello there"\n', False),
        ('run_time = "* 9-11 * * *"\n', True),
        ('skip_time = "* 10 * * wed"\n', False),
        ("max_message_size = 10\n", False),
    ]:
        marker.unlink(missing_ok=True)
        run(tmp_path, filter_section(cmd, extra))
        assert marker.exists() is runs, extra


def test_new_body_and_headers_from_files_and_cleanup(tmp_path: Path) -> None:
    cmd = '/bin/sh -c \'printf \\"new\\\\r\\\\n\\" > $0; printf \\"Subject: changed\\\\nX-New: 1\\\\nbad line\\\\n\\" > $1\' %n %h'
    _, d = run(tmp_path, filter_section(cmd), "-BHG")
    assert d.changes.new_body is not None and d.changes.new_body.read_bytes() == b"new\r\n"
    assert d.changes.change_headers == [("Subject", 1, "changed")]
    assert d.changes.add_headers == [("X-New", "1")]
    assert leftovers(tmp_path, d) == []


def test_body_refused_without_B_leaves_no_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    _, d = run(tmp_path, filter_section("/bin/sh -c 'echo x > $0' %n"))
    assert d.changes.new_body is None and leftovers(tmp_path, d) == []
    assert "replace body refused: option -B is not given" in caplog.text


# --- texts --------------------------------------------------------------------------------------


def test_text_lines_sanitise_and_bound() -> None:
    assert text_lines("a\r\n\x00b\x07\n\n" + "c" * 2000) == ("a", "b", "c" * 980)
    assert len(text_lines("x\n" * 100)) == 32


def test_header_lines_with_continuations_and_errors() -> None:
    headers, problems = parse_header_lines("X-A: 1\n  more\nnot a header\nBad Name: x\nX-B:2\n")
    assert headers == [("X-A", "1\r\n\tmore"), ("X-B", "2")]
    assert problems == [
        "line 3: not a 'Name: value' header line",
        "line 4: not a 'Name: value' header line",
    ]


def test_make_reply_uses_configured_codes() -> None:
    config = parse_config_text(
        '[Filter]\ntask_name = f\nexec_cmd = "/bin/true"\ntempfail_code = "421 4.3.2"\n',
        "/t",
        parse_command_line([]),
    )
    spec = config.filters[0]
    reply = make_reply(spec, "tempfail", ())
    assert reply is not None and (reply.code, reply.enhanced, reply.lines) == ("421", "4.3.2", ())
    assert make_reply(spec, "continue", ("x",)) is None


def test_skipped_filters_say_why(tmp_path: Path) -> None:
    _, d = run(tmp_path, filter_section("/bin/true", 'run_message_sender = "z@example.com"\n'))
    assert [(s.name, s.outcome) for s in d.steps] == [("f", "skipped:run_message_sender")]


def test_error_cooldown_switches_the_filter_back_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    eng = make_engine(
        tmp_path,
        filter_section("/bin/sh -c 'kill -TERM $$'", "error_threshold = 1\nerror_cooldown = 60\n"),
    )
    asyncio.run(eng.run(message(tmp_path)))
    state = eng.registry.get("f")
    assert state.disabled and state.by_threshold
    d = asyncio.run(eng.run(message(tmp_path)))
    assert d.steps[0].outcome == "skipped:disabled"
    assert state.disabled_at is not None
    state.disabled_at -= 61  # as if a minute had passed
    d = asyncio.run(eng.run(message(tmp_path)))
    assert d.steps[0].outcome == "error:skipped" and state.reenabled_at is not None
    assert "killed by signal SIGTERM" in d.steps[0].detail


def test_manual_switch_off_is_not_undone_by_cooldown(tmp_path: Path) -> None:
    eng = make_engine(tmp_path, filter_section("/bin/true", "error_cooldown = 1\n"))
    state = eng.registry.get("f")
    state.disable("by hand")
    state.disabled_at = 0.0
    d = asyncio.run(eng.run(message(tmp_path)))
    assert d.steps[0].outcome == "skipped:disabled" and state.disabled


def test_program_output_is_in_the_step_detail(tmp_path: Path) -> None:
    _, d = run(tmp_path, filter_section("/bin/sh -c 'echo clean; echo note >&2; exit 3'"))
    assert d.steps[0].detail == "exit 3; stdout: clean; stderr: note"


def test_control_socket_shows_the_mode_and_the_monitor_counts(tmp_path: Path) -> None:
    extra = 'reject_exit_codes = "1"\nmode = monitor\n'
    eng, _ = run(tmp_path, filter_section("/bin/sh -c 'exit 1'", extra))
    (data,) = stats.filters(eng.config, eng.registry)  # what `ma-client SOCKET filters` shows
    assert data["mode"] == "monitor"
    assert (data["runs"], data["verdicts"], data["errors"]) == (1, {"monitor:reject": 1}, 0)
