"""The README's "Five minutes with Postfix", followed as literally as a test can: in a fresh
clone, with the README's own commands and main.cf lines read from the clone's README.

What differs from a real machine, and why: the install's /opt/pipx and /usr/local/bin, and
/etc/mail, become directories of the test (a test must not install into the system); pipx is
installed from PyPI into a virtualenv of the system Python (as Debian's `apt-get install pipx`
would give one); the daemon runs as `nobody` instead of a new `_milter-agent` (other tests
check that no such user exists) on a free port instead of 8890, with its control socket and
spool in the test's directory; Postfix is the suite's private instance, not the system one.
Step 1's installation of the example scripts is not run: the example config of step 3 needs
none.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.postfix import PostfixInstance
from support.sink import SmtpSink
from support.smtp import build_message, send_message
from support.util import free_port, public_tmpdir

ROOT = Path(__file__).resolve().parents[2]
SYSTEM_PYTHON = "/usr/bin/python3"


def run(argv: list[str | Path], **kwargs: object) -> str:
    out = subprocess.run(
        [str(a) for a in argv],
        capture_output=True,
        text=True,
        timeout=480,
        **kwargs,  # type: ignore[call-overload]
    )
    assert out.returncode == 0, f"{argv}: {out.stdout}{out.stderr}"
    return str(out.stdout)


def postfix_steps(readme: str) -> dict[str, str]:
    """The commands and the main.cf block of the README's Postfix quick start."""
    section = readme.split("## Five minutes with Postfix", 1)[1].split("\n## ", 1)[0]
    flat = " ".join(section.split())  # inline commands may wrap across lines

    def command(pattern: str) -> str:
        match = re.search(rf"`({pattern})`", flat)
        assert match, f"README no longer shows {pattern!r}"
        return match.group(1)

    block = re.search(r"```\n(.*?)```", section, re.S)
    assert block, "README no longer shows the main.cf lines"
    return {
        "install": command(r"PIPX_HOME=\S+ PIPX_BIN_DIR=\S+ pipx install \."),
        "check": command(r"milter-agent -c \S+ --check"),
        "start": command(r"milter-agent -d 1 -F -p inet:\d+@127\.0\.0\.1"),
        "main.cf": block.group(1),
    }


@pytest.fixture
def machine() -> Iterator[Path]:
    """The test's stand-in for the machine's directories, traversable by the daemon's user."""
    with public_tmpdir("ma-readme-") as path:
        yield path


def pipx_install(command: str, clone: Path, machine: Path) -> Path:
    """Step 1 as written, with its directories moved into the test's; returns PIPX_BIN_DIR."""
    tools = machine / "tools"
    run([SYSTEM_PYTHON, "-m", "venv", tools])
    run([tools / "bin" / "pip", "install", "-q", "pipx"])
    *assignments, program, verb, what = shlex.split(command)
    assert (program, verb, what) == ("pipx", "install", ".")
    moved = {"/opt/pipx": machine / "opt-pipx", "/usr/local/bin": machine / "bin"}
    env = {name: str(moved[value]) for name, value in (a.split("=", 1) for a in assignments)}
    env |= {
        "PATH": f"{tools / 'bin'}:/usr/bin:/bin",
        "HOME": str(machine / "home"),  # pipx and pip keep their caches and logs there
        "PIPX_MAN_DIR": str(machine / "man"),
    }
    run([tools / "bin" / "pipx", "install", "."], cwd=clone, env=env)
    return Path(env["PIPX_BIN_DIR"])


@pytest.mark.timeout(900)
def test_readme_postfix_quick_start(
    machine: Path, postfix: PostfixInstance, sink: SmtpSink
) -> None:
    clone = machine / "milter-agent"
    run(["git", "clone", "-q", ROOT, clone])
    steps = postfix_steps((clone / "README.md").read_text())

    # 1. Install; the program's names, old ones included, are where the unit expects them.
    bin_dir = pipx_install(steps["install"], clone, machine)
    for name in ("milter-agent", "ma-client", "milter_agent", "ma_client"):
        assert os.access(bin_dir / name, os.X_OK), name
    # 3. The configuration from the example, checked with the README's command.
    conf = machine / "etc-mail" / "milter-agent.conf"
    conf.parent.mkdir()
    shutil.copy(clone / "examples" / "milter-agent.conf", conf)
    conf.chmod(0o644)
    check = shlex.split(steps["check"])
    check[0], check[check.index("-c") + 1] = str(bin_dir / check[0]), str(conf)
    assert "[Filter]" in run(check)

    # 4. Start it in the foreground as written (2.: as nobody, see the module docstring).
    port = free_port()
    start = shlex.split(steps["start"].replace(":8890@", f":{port}@"))
    start[0] = str(bin_dir / start[0])
    start += ["-c", conf, "-u", "nobody", "-i", f"unix:{machine}/cmd"]
    start += ["--spool-dir", machine / "spool"]
    log = machine / "daemon.log"
    with open(log, "wb") as out:
        daemon = subprocess.Popen([str(a) for a in start], stderr=out, cwd="/")
    try:
        deadline = time.monotonic() + 30
        while " started (pid" not in log.read_text():
            assert daemon.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)

        # 5. The README's main.cf lines, pointed at our port.
        params = dict(
            (name.strip(), value.strip())
            for name, _, value in (ln.partition("=") for ln in steps["main.cf"].splitlines())
            if name.strip()
        )
        assert set(params) == {
            "smtpd_milters",
            "non_smtpd_milters",
            "milter_protocol",
            "milter_default_action",
        }
        params["smtpd_milters"] = params["smtpd_milters"].replace(":8890", f":{port}")
        postfix.set(**params)

        # 6. A message goes through, and the log has its line.
        result = send_message(postfix.address, "a@example.org", ["b@example.net"], build_message())
        assert result.accepted, result
        (msg,) = sink.wait_for(1)
        assert msg.header_values("X-Milter-Agent") == ["checked for a@example.org"]
        line = (
            r": client=\S+ from=<a@example\.org> rcpts=1 size=\d+ decision=continue time=\S+ "
            r"filters=stamp:\+h:X-Milter-Agent\(\d+ms\) refuse_test_marker:continue\(\d+ms\)"
        )
        deadline = time.monotonic() + 10
        while not re.search(line, log.read_text()):
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
    finally:
        daemon.terminate()
        daemon.wait(timeout=45)

    # milter_default_action = tempfail: with the milter gone, mail is refused for now, not let in.
    result = send_message(postfix.address, "a@example.org", ["b@example.net"], build_message())
    assert not result.accepted and 400 <= result.code < 500, result
