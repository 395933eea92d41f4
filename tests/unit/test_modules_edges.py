"""Module filters at the edges, answered as for program filters: the wait for a free instance
or worker, a full disk, repeated names in %h, control characters in header values."""

from __future__ import annotations

import asyncio
import resource
from pathlib import Path

import pytest
from test_engine import leftovers
from test_modules import make_engine, message, write_module
from test_program_filters import assert_spool_tempfail

from milter_agent.engine import Engine
from milter_agent.errors import SpoolError
from milter_agent.filters import module as modules
from milter_agent.filters.module_pool import WorkerPool
from milter_agent.message import Message
from milter_agent.pipeline import Decision, Verdict
from milter_agent.spool import Spool


def with_subject(msg: Message, subject: str) -> Message:
    """``msg`` with another Subject (what a module sees as ``message.subject``)."""
    msg.headers = [(n, f" {subject}" if n == "Subject" else v) for n, v in msg.headers]
    return msg


# --- waiting for a free instance or worker ----------------------------------------------------

SLEEPY = """
import time
def process_message_by_module(args, message):
    if message.subject == "hang":
        time.sleep(2)
    return 0
"""


def sleepy_engine(tmp_path: Path, *argv: str, safe: bool = False) -> Engine:
    mod = write_module(tmp_path / "sleepy.py", SLEEPY)
    text = (
        f'[Filter]\ntask_name = m\nmodule_name = "{mod}"\nrun_single_instance = 1\n'
        f"task_timeout = 0.5\nmodule_safe_use = {'yes' if safe else 'no'}\n"
    )
    return make_engine(tmp_path, text, *argv)


def test_no_free_instance_of_a_module_is_not_a_filter_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    eng = sleepy_engine(tmp_path, "-m", "1")

    async def go() -> list[Decision]:
        try:
            async with eng.registry.get("m").slot(0):  # another message holds the one instance
                busy = await eng.run(message(tmp_path))
            return [busy, await eng.run(message(tmp_path))]
        finally:
            await modules.HOST.close()

    busy, later = asyncio.run(go())
    assert busy.verdict is Verdict.CONTINUE
    assert (busy.steps[0].outcome, busy.steps[0].detail) == (
        "skipped:no_free_instance",
        "no free instance within 0.5s",
    )
    state = eng.registry.get("m")
    assert (state.errors, state.timeouts, state.queue_timeouts, state.disabled) == (0, 0, 1, False)
    assert "QID42: filter m: no free instance within 0.5s (1 running, 0 waiting)" in caplog.text
    assert later.steps[0].outcome == "continue"  # still on with -m 1


def hung_then_busy(eng: Engine, tmp_path: Path) -> list[Decision]:
    """A message that hangs the only worker (left running: no -M), then one that finds no free
    worker; then wait until the hung worker has exited."""

    async def go() -> list[Decision]:
        try:
            hung = await eng.run(with_subject(message(tmp_path), "hang"))
            busy = await eng.run(message(tmp_path))
            pool = modules.HOST.loaded["m"]
            assert isinstance(pool, WorkerPool) and len(pool.left_pids) == 1
            for _ in range(200):
                if not pool.left_pids:
                    break
                await asyncio.sleep(0.05)
            return [hung, busy]
        finally:
            await modules.HOST.close()

    return asyncio.run(go())


def test_no_free_module_worker_is_not_a_filter_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """-m 2: the hang is one error; with the busy worker counted as another, the filter would
    be switched off."""
    eng = sleepy_engine(tmp_path, "-m", "2", safe=True)
    hung, busy = hung_then_busy(eng, tmp_path)
    assert hung.steps[0].outcome == "error:skipped"
    assert busy.verdict is Verdict.CONTINUE
    assert busy.steps[0].outcome == "skipped:no_free_instance"
    assert busy.steps[0].detail == (
        "no free module worker within 0.5s (1 of 1 left running after a timeout)"
    )
    state = eng.registry.get("m")
    assert (state.errors, state.timeouts, state.queue_timeouts, state.disabled) == (1, 1, 1, False)
    assert "filter m: no free module worker within 0.5s" in caplog.text


def test_no_free_module_worker_with_E_tempfails_the_message(tmp_path: Path) -> None:
    eng = sleepy_engine(tmp_path, "-E", safe=True)
    _, busy = hung_then_busy(eng, tmp_path)
    assert busy.verdict is Verdict.TEMPFAIL and busy.reply is not None
    assert (busy.reply.code, busy.steps[0].outcome) == ("451", "tempfail:no_free_instance")
    assert eng.registry.get("m").errors == 1  # the hang only


# --- a full disk ----------------------------------------------------------------------------------

BIG_BODY = """
from milter_agent.filters.module_api import ModuleResult
def process_message_by_module(args, message):
    return ModuleResult(new_body=b"x" * (256 * 1024))
"""


def run_module(tmp_path: Path, source: str, extra: str = "", *argv: str) -> tuple[Engine, Decision]:
    mod = write_module(tmp_path / "mod.py", source)
    eng = make_engine(tmp_path, f'[Filter]\ntask_name = m\nmodule_name = "{mod}"\n{extra}', *argv)

    async def go() -> Decision:
        try:
            return await eng.run(message(tmp_path))
        finally:
            await modules.HOST.close()

    return eng, asyncio.run(go())


def test_no_room_for_a_modules_files_tempfails_without_a_filter_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def full(self: Spool, suffix: str) -> Path:
        raise SpoolError(f"cannot create a file in {self.directory}: No space left on device")

    monkeypatch.setattr(Spool, "create_empty", full)
    eng, d = run_module(
        tmp_path, "def process_message_by_module(a, m):\n    return 0\n", 'exec_cmd = "%r"\n'
    )
    assert [s.outcome for s in d.steps] == ["tempfail"]
    assert_spool_tempfail(eng, d, "m")
    assert "QID42: filter m: cannot create a file in" in caplog.text
    assert "message tempfailed" in caplog.text


def test_a_new_body_the_spool_cannot_take_tempfails_without_a_filter_error(
    tmp_path: Path,
) -> None:
    """A real write failure (RLIMIT_FSIZE; Python ignores SIGXFSZ), as a full disk would."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, hard))
    try:
        eng, d = run_module(tmp_path, BIG_BODY, "", "-B")
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert_spool_tempfail(eng, d, "m")
    assert "cannot write the module's new body" in d.steps[0].detail
    assert leftovers(tmp_path, d) == []


def test_a_monitor_modules_spool_failure_lets_the_message_go_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(self: Spool, suffix: str) -> Path:
        raise SpoolError("cannot create a file: No space left on device")

    monkeypatch.setattr(Spool, "create_empty", full)
    source = "def process_message_by_module(a, m):\n    return 0\n"
    eng, d = run_module(tmp_path, source, 'exec_cmd = "%h"\nmode = monitor\n', "-E")
    assert d.verdict is Verdict.CONTINUE and d.steps[0].outcome == "monitor:tempfail"
    assert eng.registry.get("m").errors == 0


def test_a_module_that_removes_its_body_file_changed_nothing(tmp_path: Path) -> None:
    source = "import os\ndef process_message_by_module(args, m):\n    os.unlink(args[0])\n"
    eng, d = run_module(tmp_path, source, 'exec_cmd = "%n"\n', "-B")
    assert (d.verdict, d.steps[0].outcome, d.changes.new_body) == (
        Verdict.CONTINUE,
        "continue",
        None,
    )
    assert eng.registry.get("m").errors == 0


# --- the %h file and header values -------------------------------------------------------------

HEADER_LINES = "X-A: 1\nSubject: ours\nX-B: 1\nX-A: 2\nsubject: second\n"


@pytest.mark.parametrize("returns", ["0", "ModuleResult(add_headers=[('X-R', 'r')])"])
def test_the_first_h_line_of_a_name_sets_and_later_lines_add(tmp_path: Path, returns: str) -> None:
    """As for programs: Subject is in the message, so its first line sets it and the second
    adds one; X-A is not, so both its lines add. A ModuleResult's headers come after them."""
    source = (
        "from pathlib import Path\n"
        "from milter_agent.filters.module_api import ModuleResult\n"
        "def process_message_by_module(args, message):\n"
        f"    Path(args[0]).write_text({HEADER_LINES!r})\n"
        f"    return {returns}\n"
    )
    _, d = run_module(tmp_path, source, 'exec_cmd = "%h"\n', "-HG")
    assert d.changes.change_headers == [("Subject", 1, "ours")]
    added = [("X-A", "1"), ("X-B", "1"), ("X-A", "2"), ("subject", "second")]
    assert d.changes.add_headers == added + ([("X-R", "r")] if returns != "0" else [])


#: Every kind of control character but CR, LF and NUL (refused): C0, DEL, C1, Unicode line
#: and paragraph separators. A tab is white space in a header and stays.
CONTROLS = "a\x1b[31mb\x0cc\x0bd\x7fe\x85f\x9bg\u2028h\u2029i\tj"
BLANKED = "a [31mb c d e f g h i\tj"


def test_a_modules_header_values_have_their_control_characters_blanked(tmp_path: Path) -> None:
    source = (
        "from milter_agent.filters.module_api import ModuleResult\n"
        "def process_message_by_module(args, message):\n"
        f"    return ModuleResult(add_headers=[('X-A', {CONTROLS!r})],\n"
        f"                        change_headers=[('Subject', {CONTROLS!r})])\n"
    )
    eng, d = run_module(tmp_path, source, "", "-HG")
    assert d.changes.add_headers == [("X-A", BLANKED)]
    assert d.changes.change_headers == [("Subject", 1, BLANKED)]
    assert eng.registry.get("m").errors == 0


@pytest.mark.parametrize("bad", ["\r", "\n", "\0"])
def test_cr_lf_and_nul_in_a_modules_header_value_are_still_refused(
    tmp_path: Path, bad: str
) -> None:
    source = (
        "from milter_agent.filters.module_api import ModuleResult\n"
        "def process_message_by_module(args, message):\n"
        f"    return ModuleResult(add_headers=[('X-A', {'a' + bad + 'b'!r})])\n"
    )
    eng, d = run_module(tmp_path, source, "", "-H")
    assert d.steps[0].outcome == "error:skipped" and not d.changes
    assert "must not contain CR, LF or NUL" in d.steps[0].detail
    assert eng.registry.get("m").errors == 1
