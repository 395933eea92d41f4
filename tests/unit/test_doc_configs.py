"""Every configuration shown in the docs (fenced blocks marked ``conf``) is a valid one."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from milter_agent.config.options import parse_command_line
from milter_agent.config.parser import parse_config_text

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCKS = [
    (f"{path.name}:{text[: m.start()].count(chr(10)) + 2}", m.group(1))
    for path in DOCS
    for text in [path.read_text()]
    for m in re.finditer(r"^```conf\n(.*?)^```", text, re.S | re.M)
]


def test_the_docs_show_configs() -> None:
    assert len(BLOCKS) >= 2


@pytest.mark.parametrize(("where", "text"), BLOCKS, ids=[w for w, _ in BLOCKS])
def test_doc_config_parses(where: str, text: str) -> None:
    config = parse_config_text(text, where, parse_command_line(["-X"]))
    assert config.sections
