"""The man pages are generated from the Markdown docs: they must be up to date and clean."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from milter_agent.config.options import build_parser

ROOT = Path(__file__).resolve().parents[2]


def test_committed_man_pages_match_the_docs(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, str(ROOT / "tools" / "manpages.py"), str(tmp_path)], check=True, timeout=60
    )
    for page in ("milter-agent.8", "milter-agent.conf.5", "ma-client.8"):
        generated = (tmp_path / page).read_text()
        assert (ROOT / "man" / page).read_text() == generated, f"man/{page} is stale: run make man"


@pytest.mark.parametrize("page", ["milter-agent.8", "milter-agent.conf.5", "ma-client.8"])
def test_man_page_renders_without_warnings(page: str) -> None:
    groff = shutil.which("groff")
    if groff is None:
        pytest.fail("groff is needed to check the man pages (Debian: groff-base)")
    out = subprocess.run(
        [groff, "-man", "-Tutf8", "-ww", "-z", str(ROOT / "man" / page)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0 and out.stderr == "", out.stderr


def test_every_option_is_in_the_daemon_page() -> None:
    text = (ROOT / "man" / "milter-agent.8").read_text().replace("\\-", "-")
    for action in build_parser()._actions:
        for flag in action.option_strings:
            assert flag in text, flag
