"""Program filters at the edges: output files the program removed or broke, a full disk, the
wait for a free instance, repeated header names in %h."""

from __future__ import annotations

import asyncio
import json
import resource
import sys
from pathlib import Path

import pytest
from test_engine import filter_section, leftovers, message, run

from milter_agent.engine import Engine
from milter_agent.errors import SpoolError
from milter_agent.message import Message
from milter_agent.pipeline import Decision, Verdict
from milter_agent.spool import Spool
from support.engine import make_engine as engine


def test_a_filter_that_removes_its_output_files_just_wrote_nothing(tmp_path: Path) -> None:
    eng, d = run(tmp_path, filter_section("/bin/rm -f %r %n %h"), "-BHG")
    assert (d.verdict, d.steps[0].outcome) == (Verdict.CONTINUE, "continue")
    assert not d.changes and leftovers(tmp_path, d) == []
    assert eng.registry.get("f").errors == 0


def test_a_removed_reply_file_falls_back_to_stdout(tmp_path: Path) -> None:
    extra = 'reject_exit_codes = "1"\nreject_message = "configured"\n'
    cmd = "/bin/sh -c 'echo from stdout; rm -f $0; exit 1' %r"
    _, d = run(tmp_path, filter_section(cmd, extra))
    assert d.verdict is Verdict.REJECT
    assert d.reply is not None and d.reply.lines == ("from stdout",)


def test_an_output_file_replaced_by_a_directory_is_a_filter_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    for var in ("%n", "%h"):
        eng, d = run(tmp_path, filter_section(f"/bin/sh -c 'rm -f $0 && mkdir $0' {var}"), "-BHG")
        assert (d.verdict, d.steps[0].outcome) == (Verdict.CONTINUE, "error:skipped"), var
        assert "file" in d.steps[0].detail and eng.registry.get("f").errors == 1, var
        # the daemon does not remove what the program made instead: it says so and goes on
        assert "cannot remove" in caplog.text
        caplog.clear()
        for left in (tmp_path / "spool").iterdir():
            if left.is_dir():
                left.rmdir()


def test_a_later_filter_after_one_that_removed_its_files(tmp_path: Path) -> None:
    out = tmp_path / "seen"
    text = filter_section("/bin/rm -f %h") + (
        f'[Filter]\ntask_name = g\nexec_cmd = "/bin/cp %f {out}"\n'
    )
    eng = engine(tmp_path, text, "-H")
    d = asyncio.run(eng.run(message(tmp_path)))
    assert d.verdict is Verdict.CONTINUE and [s.outcome for s in d.steps] == ["continue"] * 2
    assert out.read_bytes() == (tmp_path / "spool" / "m.msg").read_bytes()


# --- a full disk --------------------------------------------------------------------------------

SECOND = '[Filter]\ntask_name = g\nexec_cmd = "/usr/bin/cmp -s %f %f"\n'


def with_body(msg: Message, size: int) -> Message:
    """``msg`` with a body of ``size`` bytes in its spool file."""
    assert msg.spool_path is not None
    body = b"x" * (size - 2) + b"\r\n"
    head = msg.spool_path.read_bytes()[: msg.size - msg.body_size]
    msg.spool_path.write_bytes(head + body)
    msg.size, msg.body_size = len(head) + len(body), len(body)
    return msg


def assert_spool_tempfail(eng: Engine, d: Decision, name: str) -> None:
    assert d.verdict is Verdict.TEMPFAIL
    assert d.reply is not None and (d.reply.code, d.reply.enhanced) == ("452", "4.3.1")
    state = eng.registry.get(name)
    assert (state.errors, state.error_count, state.verdicts["tempfail"]) == (0, 0, 1)
    assert d.steps[-1].detail.startswith("spool error: ")


def test_a_file_size_limit_while_rewriting_tempfails_without_a_filter_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A real write failure: RLIMIT_FSIZE makes the daemon's write of the rewritten message
    fail (EFBIG; Python ignores SIGXFSZ) as a full disk would."""
    eng = engine(tmp_path, filter_section("/bin/sh -c 'echo X-A: 1 > $0' %h") + SECOND, "-H")
    msg = with_body(message(tmp_path), 256 * 1024)  # written before the limit is set
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, hard))
    try:
        d = asyncio.run(eng.run(msg))
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert [s.outcome for s in d.steps] == ["continue", "tempfail"]
    assert_spool_tempfail(eng, d, "g")
    assert "filter g: cannot rewrite the message file" in caplog.text
    assert "message tempfailed" in caplog.text
    assert leftovers(tmp_path, d) == []


def test_no_room_for_the_output_files_tempfails_without_a_filter_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(self: Spool, suffix: str) -> Path:
        raise SpoolError(f"cannot create a file in {self.directory}: No space left on device")

    monkeypatch.setattr(Spool, "create_empty", full)
    eng, d = run(tmp_path, filter_section("/bin/true %r"))
    assert [s.outcome for s in d.steps] == ["tempfail"]
    assert_spool_tempfail(eng, d, "f")


# --- waiting for a free instance -------------------------------------------------------------

BUSY = filter_section("/bin/true %f", "run_single_instance = 1\ntask_timeout = 1\n")


def run_while_busy(eng: Engine, msg: Message) -> Decision:
    """Run ``msg`` while something else holds the filter's only instance."""

    async def go() -> Decision:
        async with eng.registry.get("f").slot(0):
            return await eng.run(msg)

    return asyncio.run(go())


def test_no_free_instance_is_not_a_filter_error_and_the_message_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    eng = engine(tmp_path, BUSY, "-m", "1")
    d = run_while_busy(eng, message(tmp_path))
    assert d.verdict is Verdict.CONTINUE
    assert (d.steps[0].outcome, d.steps[0].detail) == (
        "skipped:no_free_instance",
        "no free instance within 1s",
    )
    assert d.steps[0].seconds >= 1  # it waited its task_timeout
    state = eng.registry.get("f")
    assert (state.errors, state.error_count, state.disabled) == (0, 0, False)
    assert (state.queue_timeouts, state.timeouts, state.skipped, state.runs) == (1, 0, 1, 0)
    assert "QID42: filter f: no free instance within 1s (1 running, 0 waiting)" in caplog.text
    assert "message goes on without it" in caplog.text
    d = asyncio.run(eng.run(message(tmp_path)))  # still on, even with -m 1: it runs
    assert d.steps[0].outcome == "continue" and state.runs == 1


def test_no_free_instance_with_E_tempfails_the_message(tmp_path: Path) -> None:
    eng = engine(tmp_path, BUSY, "-E", "-m", "1")
    d = run_while_busy(eng, message(tmp_path))
    assert d.verdict is Verdict.TEMPFAIL and d.reply is not None and d.reply.code == "451"
    assert d.steps[0].outcome == "tempfail:no_free_instance"
    state = eng.registry.get("f")
    assert (state.errors, state.queue_timeouts, state.runs) == (0, 1, 0)


def test_no_free_instance_for_a_monitor_filter_never_decides_the_message(tmp_path: Path) -> None:
    eng = engine(tmp_path, BUSY + "mode = monitor\n", "-E", "-m", "1")
    d = run_while_busy(eng, message(tmp_path))
    assert d.verdict is Verdict.CONTINUE and d.steps[0].outcome == "skipped:no_free_instance"
    state = eng.registry.get("f")
    assert (state.errors, state.queue_timeouts, state.disabled) == (0, 1, False)


# --- repeated names in %h --------------------------------------------------------------------


def header_filter(lines: str) -> str:
    return filter_section(f"/bin/sh -c 'printf \\\"{lines}\\\" > $0' %h")


def test_the_first_line_of_a_name_sets_and_later_lines_add(tmp_path: Path) -> None:
    seen = tmp_path / "seen"
    text = header_filter("X-A: 1\\\\nSubject: ours\\\\nX-B: 1\\\\nX-A: 2\\\\nsubject: second\\\\n")
    text += f'[Filter]\ntask_name = g\nexec_cmd = "/bin/cp %f {seen}"\n'
    _, d = run(tmp_path, text, "-HG")
    assert d.changes.change_headers == [("Subject", 1, "ours")]
    added = [("X-A", "1"), ("X-B", "1"), ("X-A", "2"), ("subject", "second")]
    assert d.changes.add_headers == added  # in file order
    head = seen.read_bytes().split(b"\r\n\r\n")[0].decode()
    assert head.endswith("Subject: ours\r\nX-A: 1\r\nX-B: 1\r\nX-A: 2\r\nsubject: second")


def test_an_empty_value_removes_the_header_and_a_repeated_empty_one_adds_nothing(
    tmp_path: Path,
) -> None:
    seen = tmp_path / "seen"
    text = header_filter("Subject:\\\\nSubject:\\\\nX-None:\\\\n")
    text += f'[Filter]\ntask_name = g\nexec_cmd = "/bin/cp %f {seen}"\n'
    _, d = run(tmp_path, text, "-HG")
    assert (d.changes.change_headers, d.changes.add_headers) == ([("Subject", 1, "")], [])
    assert b"Subject" not in seen.read_bytes()  # the next filter sees it gone too


# --- values that start with "-" ------------------------------------------------------------

PARSE = """
import argparse, json, sys
parser = argparse.ArgumentParser()
parser.add_argument("--sender")
parser.add_argument("--subject")
parser.add_argument("rest", nargs="*")
json.dump(vars(parser.parse_args(sys.argv[2:])), open(sys.argv[1], "w"))
"""


def test_dash_values_stay_values_with_attached_options_and_a_double_dash(tmp_path: Path) -> None:
    """What docs/filters.md advises against argument injection, with a real option parser."""
    (tmp_path / "parse.py").write_text(PARSE)
    out = tmp_path / "parsed.json"
    cmd = (
        f"{sys.executable} {tmp_path}/parse.py {out} --sender=%s --subject=%{{subject}} "
        "-- %{recipients} %{subject}"
    )
    eng = engine(tmp_path, filter_section(cmd))
    msg = message(tmp_path, recipients=("<--help@example.com>",))
    msg.sender = "<-oQ/tmp@example.com>"
    msg.headers[2] = ("Subject", " --version")
    d = asyncio.run(eng.run(msg))
    assert d.steps[0].outcome == "continue"
    assert json.loads(out.read_text()) == {
        "sender": "-oQ/tmp@example.com",
        "subject": "--version",
        "rest": ["--help@example.com", "--version"],
    }
