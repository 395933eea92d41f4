"""Packaging: the sdist and the wheel build, and the wheel installs into a fresh virtualenv
(what pipx does) with working entry points, the original's program names included."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run(*argv: str | Path, cwd: Path = ROOT) -> str:
    out = subprocess.run(
        [str(a) for a in argv], cwd=cwd, capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def test_build_and_install_in_a_fresh_venv(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    run(sys.executable, "-m", "build", "--outdir", dist)
    (wheel,) = dist.glob("milter_agent-*.whl")
    (sdist,) = dist.glob("milter_agent-*.tar.gz")
    listing = run("tar", "tzf", sdist)
    for needed in (
        "man/milter-agent.8",
        "contrib/milter-agent.service",
        "examples/clamav.conf",
        "docs/configuration.md",
    ):
        assert needed in listing, needed
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", venv)
    run(venv / "bin" / "pip", "install", "-q", wheel)
    assert run(venv / "bin" / "milter-agent", "-V").strip().startswith("milter-agent ")
    check = run(
        venv / "bin" / "milter-agent", "-c", ROOT / "examples" / "milter-agent.conf", "--check"
    )
    assert "[Filter]" in check
    for client in ("ma-client", "ma_client"):  # ma_client: the original's name
        usage = subprocess.run(
            [venv / "bin" / client, "--help"], capture_output=True, text=True, timeout=60
        )
        assert usage.returncode == 0 and "ma-client" in usage.stdout, client
    # milter_agent, the original's name, is the same program
    assert run(venv / "bin" / "milter_agent", "-V") == run(venv / "bin" / "milter-agent", "-V")
    old_style = run(
        venv / "bin" / "milter_agent", "-c", ROOT / "examples" / "milter-agent.conf", "-n"
    )
    assert old_style == check
