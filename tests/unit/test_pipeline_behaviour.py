"""The pipeline as a postmaster relies on it: what a filter sees after address rules, chain
stops, conditions, stdin and stderr, instance limits and concurrency, refused changes."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from pathlib import Path

import pytest
from test_engine import filter_section, message, run

from milter_agent.pipeline import Decision, Verdict
from support.engine import make_engine as engine

DUMP = (
    "import json, os, sys; json.dump({'argv': sys.argv[2:], "
    "'rcpts': os.environ['MILTER_RECIPIENTS']}, open(sys.argv[1], 'w'))"
)


def dump_filter(tmp_path: Path, extra: str = "") -> tuple[str, Path]:
    """A filter section that writes its arguments and MILTER_RECIPIENTS to a JSON file."""
    (tmp_path / "dump.py").write_text(DUMP)
    out = tmp_path / "seen.json"
    return filter_section(f"{sys.executable} {tmp_path}/dump.py {out} %{{recipients}}", extra), out


def outcomes(d: Decision) -> list[tuple[str, str]]:
    return [(s.name, s.outcome) for s in d.steps]


# --- a filter after address rules ------------------------------------------------------------

FORWARD_B = """
[Address]
message_recipient = "b@example.com"
message_forward_recipient = "c@example.com d@example.com"
"""


def test_a_filter_after_an_address_rule_sees_the_changed_recipients(tmp_path: Path) -> None:
    section, out = dump_filter(tmp_path, 'run_message_recipient = "d@example.com"\n')
    _, d = run(tmp_path, FORWARD_B + section, "-AR")
    forwarded = "-b@example.com,+c@example.com,+d@example.com"
    assert outcomes(d) == [("address-1", forwarded), ("f", "continue")]
    seen = json.loads(out.read_text())
    assert seen == {
        "argv": ["c@example.com", "d@example.com"],
        "rcpts": "c@example.com\nd@example.com",
    }


def test_a_recipient_forwarded_away_no_longer_runs_a_filter(tmp_path: Path) -> None:
    section, out = dump_filter(tmp_path, 'run_message_recipient = "b@example.com"\n')
    _, d = run(tmp_path, FORWARD_B + section, "-AR")
    assert outcomes(d)[-1] == ("f", "skipped:run_message_recipient") and not out.exists()


def test_forwarding_acts_on_every_matching_recipient(tmp_path: Path) -> None:
    rule = '[Address]\nmessage_recipient = "^user1@"\nmessage_forward_recipient = "t@example.com"\n'
    section, out = dump_filter(tmp_path)
    rcpts = ("<user1@x.org>", "<other@z.org>", "<USER1@y.org>")
    eng, d = run(tmp_path, rule + section, "-ARX", recipients=rcpts)
    assert d.changes.delete_recipients == ["<user1@x.org>", "<USER1@y.org>"]
    assert d.changes.add_recipients == ["<t@example.com>"]
    assert json.loads(out.read_text())["argv"] == ["other@z.org", "t@example.com"]
    assert eng.registry.get("address-1").changes == 3


# --- refused changes -------------------------------------------------------------------------


def refusals(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and "refused" in r.getMessage()
    ]


def test_a_forward_without_R_is_refused_logged_and_changes_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _, d = run(tmp_path, FORWARD_B, "-A")
    assert not d.changes
    assert refusals(caplog) == [
        "address-1: forward b@example.com to c@example.com d@example.com refused: "
        "option -R is not given"
    ]


def test_header_changes_without_G_are_refused_logged_and_not_made(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rule = """
    [Address]
    task_name = mark
    change_header_name = "Subject"
    change_header_value = "[ext] %{subject}"
    remove_header_name = "To"
    """
    header = filter_section("/bin/sh -c 'echo Subject: from filter > $0' %h")
    _, d = run(tmp_path, rule + header, "-H")
    assert not d.changes
    assert refusals(caplog) == [
        "mark: change header Subject refused: option -G is not given",
        "mark: remove header To refused: option -G is not given",
        "f: change header Subject refused: option -G is not given",
    ]


# --- the chain -------------------------------------------------------------------------------


def test_accept_stops_the_chain_and_keeps_the_changes_made(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    first = filter_section(
        "/bin/sh -c 'echo X-Checked: yes > $0; exit 3' %h", 'accept_exit_codes = "3"\n'
    )
    later = f'[Filter]\ntask_name = g\nexec_cmd = "/usr/bin/touch {marker}"\n'
    _, d = run(tmp_path, first + later, "-H")
    assert d.verdict is Verdict.ACCEPT and outcomes(d) == [("f", "accept")]
    assert d.changes.add_headers == [("X-Checked", "yes")] and not marker.exists()


def test_discard_stops_the_chain_and_sends_no_changes(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    first = filter_section(
        "/bin/sh -c 'echo X-Checked: yes > $0; exit 4' %h", 'discard_exit_codes = "4"\n'
    )
    later = f'[Filter]\ntask_name = g\nexec_cmd = "/usr/bin/touch {marker}"\n'
    _, d = run(tmp_path, first + later, "-H")
    assert d.verdict is Verdict.DISCARD and outcomes(d) == [("f", "discard")]
    assert not d.changes and not marker.exists()


# --- conditions at filter level --------------------------------------------------------------


@pytest.mark.parametrize(
    ("condition", "runs"),
    [
        ('skip_recipient = "b@example.com"', True),  # c@example.com is not skipped
        ('skip_recipient = "b@example.com c@example.com"', False),  # every one matches
        ('skip_recipient = "@example.com"', False),
        ('skip_message_sender = "a@example.com"', False),
        ('skip_message_sender = "z@example.com"', True),
        ('run_message_subject = "Hello there"', True),
        ('run_message_subject = "Hello"', False),  # a whole subject, not a part
        ('run_message_recipient = "c@example.com"', True),  # any recipient will do
        ('run_message_recipient = "z@example.com"', False),
    ],
)
def test_filter_conditions(tmp_path: Path, condition: str, runs: bool) -> None:
    marker = tmp_path / "ran"
    section = filter_section(f"/usr/bin/touch {marker}", condition + "\n")
    _, d = run(tmp_path, section, recipients=("<b@example.com>", "<c@example.com>"))
    assert marker.exists() is runs
    if not runs:
        assert d.steps[0].outcome == f"skipped:{condition.partition(' ')[0]}"


# --- stdin, stderr, a program that cannot run ------------------------------------------------


def test_stdin_is_dev_null_by_default_and_the_message_when_asked(tmp_path: Path) -> None:
    out = tmp_path / "stdin"
    cmd = f"/bin/sh -c 'cat > {out}'"
    run(tmp_path, filter_section(cmd))
    assert out.read_bytes() == b""
    run(tmp_path, filter_section(cmd, "stdin = message\n"))
    assert out.read_bytes() == (tmp_path / "spool" / "m.msg").read_bytes()


def test_stderr_reaches_the_log_bounded(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "milter_agent.filters.program")
    run(
        tmp_path,
        filter_section("/bin/sh -c 'for i in 1 2 3 4 5 6 7 8 9 10 11 12; do echo e$i >&2; done'"),
    )
    lines = [r.getMessage() for r in caplog.records if r.name == "milter_agent.filters.program"]
    assert lines == [f"filter f: stderr: e{i}" for i in range(1, 11)] + [
        "filter f: stderr: (2 more lines)"
    ]


def test_a_program_that_is_not_executable_is_a_filter_error(tmp_path: Path) -> None:
    program = tmp_path / "scan.sh"
    program.write_text("#!/bin/sh\nexit 1\n")
    program.chmod(0o644)
    eng, d = run(tmp_path, filter_section(f"{program} %f", 'reject_exit_codes = "1"\n'))
    assert d.verdict is Verdict.CONTINUE and d.steps[0].outcome == "error:skipped"
    assert "Permission denied" in d.steps[0].detail and eng.registry.get("f").errors == 1


# --- instances and concurrency ---------------------------------------------------------------


async def run_in_order(eng_text: str, tmp_path: Path, count: int) -> list[Decision]:
    """``count`` messages, started one after the other (so they arrive in order), at once."""
    eng = engine(tmp_path, eng_text)
    tasks = []
    for number in range(count):
        msg = message(tmp_path)
        msg.macros["i"] = f"Q{number}"
        tasks.append(asyncio.ensure_future(eng.run(msg)))
        await asyncio.sleep(0.02)  # the previous one is waiting for its instance by now
    return list(await asyncio.gather(*tasks))


def test_single_instance_runs_waiting_messages_in_arrival_order(tmp_path: Path) -> None:
    order = tmp_path / "order"
    cmd = f"/bin/sh -c 'echo $0 >> {order}; sleep 0.1' %{{queue_id}}"
    decisions = asyncio.run(
        run_in_order(filter_section(cmd, "run_single_instance = 1\n"), tmp_path, 5)
    )
    assert all(d.steps[0].outcome == "continue" for d in decisions)
    assert order.read_text().split() == [f"Q{n}" for n in range(5)]


def test_messages_run_a_slow_filter_concurrently(tmp_path: Path) -> None:
    """Six messages through a filter sleeping 1 s take about one sleep, not six (bound loose)."""
    started = time.monotonic()
    decisions = asyncio.run(run_in_order(filter_section("/bin/sleep 1"), tmp_path, 6))
    elapsed = time.monotonic() - started
    assert all(d.steps[0].outcome == "continue" for d in decisions)
    assert elapsed < 4.0, f"{elapsed:.1f}s: the messages ran one after the other"
