"""The shipped systemd unit still lets filters run: the daemon is started with the unit's
ExecStart options under the unit's restrictions, and a real filter runs as the daemon's user.

systemd itself cannot start the unit here (it is not PID 1, so ``systemd-run`` refuses), so
the restrictions that decide what a filter can do are rebuilt, from the unit file's own values,
with ``unshare --mount`` and ``setpriv``:

- ProtectSystem=full, ProtectHome=read-only: read-only bind mounts of /usr, /boot, /efi, /etc
  and of /home, /root, /run/user;
- PrivateTmp=yes: fresh tmpfs on /tmp and /var/tmp;
- ReadWritePaths (the spool): a fresh /var/spool, so the daemon creates its sockets and spool
  there as on a new machine;
- CapabilityBoundingSet: ``setpriv --bounding-set``; NoNewPrivileges=yes (if the unit had it):
  ``setpriv --no-new-privs``.

Not covered: the seccomp-based settings (RestrictAddressFamilies, RestrictNamespaces,
RestrictRealtime, LockPersonality, ProtectClock, ProtectKernel*, PrivateDevices,
ProtectControlGroups) and RestrictSUIDSGID, which need systemd to apply them.
"""

from __future__ import annotations

import grp
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from faults.faultkit import MilterClient, message_commands
from support.util import public_tmpdir

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "contrib" / "milter-agent.service"
SYSTEM_PYTHON = "/usr/bin/python3"
INSIDE = "/var/spool/test"  # where the test's files appear in the sandbox

FILTER = """#!/bin/sh
# What a filter may need under the unit: its user, a setgid helper (as sendmail's postdrop),
# a private /tmp, and no writing to /etc.
{
  echo "X-User: $(id -un)"
  echo "X-Setgid-Helper: $(%(inside)s/sgid-id -gn)"
  echo "X-Tmp: $(mktemp /tmp/filter.XXXXXX >/dev/null && echo writable)"
  echo "X-Etc: $(touch /etc/milter-agent-test 2>/dev/null && echo writable || echo read-only)"
} > "$1"
"""


def unit_settings(text: str) -> dict[str, str]:
    settings: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and not line.startswith(("#", "[")):
            settings[key.strip()] = value.strip()
    return settings


def read_only(paths: list[str]) -> list[str]:
    return [
        f"if [ -d {d} ]; then mount --bind {d} {d} && mount -o remount,bind,ro {d}; fi"
        for d in paths
    ]


def sandbox_script(settings: dict[str, str], outside: Path, python_path: list[Path]) -> str:
    """The shell commands that set up the unit's restrictions, then exec the daemon."""
    assert settings["ProtectSystem"] == "full" and settings["ProtectHome"] == "read-only"
    assert settings["PrivateTmp"] == "yes"
    spool = settings["ReadWritePaths"]
    # The test's files and the code to run may lie under /tmp (a checkout there), which the
    # private /tmp hides: they are bound into the fresh /var/spool first.
    code = [f"/var/spool/python/{i}" for i in range(len(python_path))]
    steps = [
        "set -eu",
        "mount -t tmpfs -o mode=0755 tmpfs /var/spool",  # a fresh spool tree, as on a new host
        f"mkdir -p {spool} {INSIDE} {' '.join(code)}",
        f"mount --bind {outside} {INSIDE}",
        *(f"mount --bind {path} {inside}" for path, inside in zip(python_path, code, strict=True)),
        f"export PYTHONPATH={':'.join(code)}",
        "mount -t tmpfs tmpfs /tmp",
        "mount -t tmpfs tmpfs /var/tmp",
        *read_only(["/usr", "/boot", "/efi", "/etc"]),
        *read_only(["/home", "/root", "/run/user"]),
    ]
    caps = ",".join(
        "+" + cap.removeprefix("CAP_").lower() for cap in settings["CapabilityBoundingSet"].split()
    )
    setpriv = ["setpriv", f"--bounding-set=-all,{caps}"]
    if settings.get("NoNewPrivileges") == "yes":
        setpriv.append("--no-new-privs")
    argv = shlex.split(settings["ExecStart"])[1:]
    argv[argv.index("-c") + 1] = f"{INSIDE}/milter-agent.conf"
    daemon = [*setpriv, "--", SYSTEM_PYTHON, "-m", "milter_agent", *argv, "-u", "nobody"]
    return "\n".join([*steps, "exec " + shlex.join(daemon)])


@pytest.fixture
def outside() -> Iterator[Path]:
    """The test's files: a config, the filter and a setgid helper, readable by nobody."""
    if os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("setpriv"):
        pytest.fail("needs root, unshare and setpriv (util-linux) to rebuild the unit's sandbox")
    with public_tmpdir("ma-unit-") as path:
        (path / "milter-agent.conf").write_text(
            f'allow_add_header = yes\n\n[Filter]\ntask_name = probe\nexec_cmd = "{INSIDE}/filter.sh %h"\n'
        )
        (path / "filter.sh").write_text(FILTER % {"inside": INSIDE})
        (path / "filter.sh").chmod(0o755)
        helper = path / "sgid-id"  # a stand-in for postdrop: setgid to a group nobody is not in
        shutil.copy("/usr/bin/id", helper)
        os.chown(helper, 0, grp.getgrnam("mail").gr_gid)
        helper.chmod(0o2755)
        yield path


def run_under_unit(unit_text: str, outside: Path) -> dict[str, str]:
    """Start the daemon in the sandbox, send one message, return the headers the filter set."""
    site = next(Path(sys.prefix, "lib").glob("python3*/site-packages"))
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    script = sandbox_script(unit_settings(unit_text), outside, [ROOT / "src", site])
    log = outside / "daemon.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd="/",
        )
    try:
        deadline = time.monotonic() + 30
        while " started (pid" not in log.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        # The unit's socket, reached through the daemon's own view of the file system.
        with MilterClient(f"unix:/proc/{proc.pid}/root/var/spool/milter-agent/sock") as mta:
            mta.handshake()
            replies = mta.message(message_commands())
    finally:
        proc.terminate()
        proc.wait(timeout=45)
    assert replies[-1] == (b"c", b""), (replies, log.read_text())
    headers = {}
    for kind, data in replies:
        if kind == b"h":
            name, value, _ = data.split(b"\0")
            headers[name.decode()] = value.decode().strip()
    return headers


def test_filters_run_under_the_units_restrictions(outside: Path) -> None:
    headers = run_under_unit(UNIT.read_text(), outside)
    assert headers == {
        "X-User": "nobody",
        "X-Setgid-Helper": "mail",  # so sendmail(1) -> postdrop works from a filter
        "X-Tmp": "writable",
        "X-Etc": "read-only",
    }


def test_no_new_privileges_would_break_setgid_helpers(outside: Path) -> None:
    """Why the unit has no NoNewPrivileges=yes: with it, postdrop could not drop mail."""
    text = UNIT.read_text().replace("ProtectSystem=full", "NoNewPrivileges=yes\nProtectSystem=full")
    assert run_under_unit(text, outside)["X-Setgid-Helper"] == "nogroup"
