"""The shipped systemd unit: systemd accepts it, its command line is a valid one, and it runs
the program where the README installs it. (tests/e2e/test_systemd_unit.py runs a filter under
its restrictions.)"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from milter_agent.config.options import parse_command_line

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "contrib" / "milter-agent.service"


def exec_start() -> list[str]:
    line = next(ln for ln in UNIT.read_text().splitlines() if ln.startswith("ExecStart="))
    return shlex.split(line.removeprefix("ExecStart="))


def test_unit_command_line_is_valid() -> None:
    argv = exec_start()
    assert argv[0] == "/usr/local/bin/milter-agent"
    line = parse_command_line(argv[1:])
    assert line.settings.daemon_mode == 1 and line.settings.log_target == "stdout"
    assert line.settings.watch_config


def test_unit_runs_the_program_the_readme_installs() -> None:
    readme = (ROOT / "README.md").read_text()
    install = "PIPX_HOME=/opt/pipx PIPX_BIN_DIR=/usr/local/bin pipx install ."
    assert install in readme
    assert Path(exec_start()[0]).parent == Path("/usr/local/bin")
    assert "contrib/milter-agent.service" in readme


def test_systemd_accepts_the_unit(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.fail(
            "systemd-analyze is needed to check contrib/milter-agent.service (Debian: systemd)"
        )
    installed = Path(sys.executable).parent / "milter-agent"
    unit = tmp_path / "milter-agent.service"
    unit.write_text(UNIT.read_text().replace("/usr/local/bin/milter-agent", str(installed)))
    out = subprocess.run(
        [analyze, "verify", "--man=no", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        env={"SYSTEMD_LOG_LEVEL": "warning", "PATH": "/usr/bin:/bin"},
    )
    assert out.returncode == 0 and out.stderr == "", out.stderr
