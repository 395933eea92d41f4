"""Program filters at the edges: output files the program removed or broke, a full disk, the
wait for a free instance, repeated header names in %h."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from test_engine import engine, filter_section, leftovers, message, run

from milter_agent.pipeline import Verdict


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
