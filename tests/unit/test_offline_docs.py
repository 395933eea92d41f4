"""The `milter-agent test` reference (docs/testing.md, and so milter-agent(8)) says what the
program does: every option, and the exit codes it really returns."""

from __future__ import annotations

import re
from pathlib import Path

from milter_agent.offline import EXIT, EXIT_STATUS, EXIT_USAGE, build_test_parser

ROOT = Path(__file__).resolve().parents[2]
DOC = (ROOT / "docs" / "testing.md").read_text()
#: How the docs word each answer.
WORDS = {
    "continue": "continue",
    "reject": "rejected",
    "tempfail": "tempfailed",
    "discard": "discarded",
    "accept": "accepted",
}


def documented_exit_codes() -> dict[int, str]:
    table = DOC.split("## Exit status", 1)[1]
    return {int(n): text for n, text in re.findall(r"^\| `(\d+)` \| (.*) \|$", table, re.M)}


def test_every_option_is_documented_in_the_docs_and_the_man_page() -> None:
    man = (ROOT / "man" / "milter-agent.8").read_text().replace("\\-", "-")
    for action in build_test_parser()._actions:
        for flag in action.option_strings:
            assert f"`{flag}" in DOC, flag
            assert flag in man, flag


def test_the_exit_codes_are_the_documented_ones() -> None:
    documented = documented_exit_codes()
    assert set(documented) == {*EXIT.values(), EXIT_USAGE}
    assert "usage" in documented[EXIT_USAGE]
    for verdict, code in EXIT.items():
        assert WORDS[verdict] in documented[code], (verdict, code)
        assert re.search(rf"^  {code}  .*{WORDS[verdict]}", EXIT_STATUS, re.M), verdict
    assert len(set(EXIT.values())) == len(EXIT)  # every answer has its own code
