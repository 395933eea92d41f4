"""Packaging: the sdist and the wheel build, and the wheel installs into a fresh virtualenv
(what pipx does) with working entry points, the original's program names included."""

from __future__ import annotations

import shutil
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


#: Left behind by builds, tests and tools; never part of a source tree to package.
BUILD_LEFTOVERS = shutil.ignore_patterns(
    ".git", ".venv", ".run", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", ".hypothesis"
)


def clean_tree(tmp_path: Path) -> Path:
    """The source tree without build leftovers: setuptools adds the files an earlier build
    listed in src/*.egg-info to the sdist, which would hide a file MANIFEST.in fails to name."""
    tree = tmp_path / "tree"
    shutil.copytree(ROOT, tree, ignore=BUILD_LEFTOVERS)
    return tree


def check_c_sample_builds_from(sdist: Path, tmp_path: Path) -> None:
    """The C module header and sample are in the sdist, and the sample builds from there."""
    top = sdist.name.removesuffix(".tar.gz")
    listing = run("tar", "tzf", sdist).splitlines()
    for needed in ("include/milter_agent_module.h", "modules/Makefile", "modules/module_dummy.c"):
        assert f"{top}/{needed}" in listing, needed
    assert not [name for name in listing if name.endswith(".so")]
    run("tar", "xzf", sdist, "-C", tmp_path)
    run("make", "-s", "-C", tmp_path / top / "modules", f"BUILD={tmp_path / 'lib'}")
    assert (tmp_path / "lib" / "module_dummy.so").stat().st_size > 0


def test_build_and_install_in_a_fresh_venv(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    # python -m build builds in an isolated environment with the setuptools pyproject.toml asks
    # for (>= 77, for its SPDX license string), whatever the venv's own setuptools is
    run(sys.executable, "-m", "build", "--outdir", dist, cwd=clean_tree(tmp_path))
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
    check_c_sample_builds_from(sdist, tmp_path)
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
