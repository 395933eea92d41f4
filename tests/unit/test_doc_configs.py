"""Every configuration shown in the docs (fenced blocks marked ``conf``) passes the real
``milter-agent --check``, as a postmaster would run it on a copy."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from milter_agent.cli import main

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCKS = [
    (f"{path.name}:{text[: m.start()].count(chr(10)) + 2}", m.group(1))
    for path in DOCS
    for text in [path.read_text()]
    for m in re.finditer(r"^```conf\n(.*?)^```", text, re.S | re.M)
]


def test_the_docs_show_configs() -> None:
    shown = {where.split(":")[0] for where, _ in BLOCKS}
    assert len(BLOCKS) >= 3 and {"configuration.md", "modules.md"} <= shown


@pytest.mark.parametrize(("where", "text"), BLOCKS, ids=[w for w, _ in BLOCKS])
def test_doc_config_passes_check(
    where: str, text: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    conf = tmp_path / "milter-agent.conf"
    conf.write_text(text)
    # -1B: every permission and regex mode (-X, which some examples say they need), so
    # that only a real problem warns
    code = main(["-c", str(conf), "-1B", "--check"])
    out, err = capsys.readouterr()
    assert code == 0, f"{where}: {err}"
    assert err == "", f"{where}: {err}"
    assert re.search(r"^\[(Filter|Address)\]$", out, re.M), out
