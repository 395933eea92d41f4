"""Run the milter-agent daemon as a subprocess for end-to-end tests.

CLI contract (fixed by the project):
    python -m milter_agent -d 1 -u root -c CONFIG -p SOCKETSPEC -i CONTROLSPEC
        --spool-dir DIR [extra...]
Ready means: its stderr contains "listening on" AND the milter socket accepts a connection.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from .procs import group_members, stop_child
from .util import SocketSpec, check_unix_path, make_traversable, tail, wait_until

READY_MARKER = "listening on"

#: ma-client, as the installed entry point runs it.
MA_CLIENT = [
    sys.executable,
    "-c",
    "from milter_agent.cli import client_main; raise SystemExit(client_main())",
]


class DaemonError(RuntimeError):
    """The daemon exited early or did not become ready in time."""


class MilterAgentDaemon:
    """One milter-agent process.

    ``socket`` / ``control`` are socket specs as the daemon takes them (``unix:/path`` or
    ``inet:PORT@127.0.0.1``). ``socket_mode`` (e.g. "0666") adds ``--socket-mode``: the
    daemon's default 0660 on a root-owned socket locks out Postfix's smtpd (user postfix),
    which then answers 451. ``workdir`` holds the captured stderr (``stderr.log``) and
    stdout (``stdout.log``). ``module`` and ``env`` exist so the helper itself can be
    tested against a stand-in; real tests leave them alone. ``nofile`` (soft, hard) is the
    RLIMIT_NOFILE the daemon starts with."""

    def __init__(
        self,
        config: Path | str,
        socket: str,
        control: str,
        spool_dir: Path | str,
        workdir: Path | str,
        *,
        extra_args: Sequence[str] = (),
        socket_mode: str | None = None,
        module: str = "milter_agent",
        env: Mapping[str, str] | None = None,
        kill_on_parent_death: bool = True,
        nofile: tuple[int, int] | None = None,
    ) -> None:
        self.config = Path(config)
        self.socket = SocketSpec.parse(socket)
        self.socket_spec = socket
        self.control = SocketSpec.parse(control)
        self.control_spec = control
        self.spool_dir = Path(spool_dir)
        self.workdir = Path(workdir)
        self.extra_args = list(extra_args)
        self.socket_mode = socket_mode
        self.module = module
        self.env = dict(env) if env is not None else None
        self.kill_on_parent_death = kill_on_parent_death
        self.nofile = nofile
        self.stderr_path = self.workdir / "stderr.log"
        self.stdout_path = self.workdir / "stdout.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.returncode: int | None = None
        # Processes of the daemon's group still alive when it exited (killed by stop()).
        self.leftover_pids: list[int] = []
        self._files: list[IO[bytes]] = []
        for spec in (self.socket, self.control):
            if spec.family == "unix":
                assert spec.path is not None
                check_unix_path(spec.path)

    @property
    def argv(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            self.module,
            "-d",
            "1",
            "-u",
            "root",
            "-c",
            str(self.config),
            "-p",
            self.socket_spec,
            "-i",
            self.control_spec,
            "--spool-dir",
            str(self.spool_dir),
            *(["--socket-mode", self.socket_mode] if self.socket_mode else []),
            *self.extra_args,  # last, so a test can override anything above
        ]

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise DaemonError("daemon not started")
        return self.proc.pid

    @property
    def postfix_spec(self) -> str:
        """The milter socket in ``smtpd_milters`` syntax."""
        return self.socket.postfix()

    def start(self, timeout: float = 20.0) -> None:
        """Start the daemon and wait until it is ready (bounded)."""
        if self.proc is not None:
            raise DaemonError("already started")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.spool_dir.mkdir(parents=True, exist_ok=True)
        if self.socket.family == "unix":
            assert self.socket.path is not None
            # Postfix's smtpd (user postfix) must be able to reach the socket's directory.
            Path(self.socket.path).parent.mkdir(parents=True, exist_ok=True)
            make_traversable(Path(self.socket.path).parent)
        argv = self.argv
        setpriv = shutil.which("setpriv")
        if self.kill_on_parent_death and setpriv:
            # If the test run is killed, take the daemon with it (setpriv execs, so the
            # pid stays the daemon's). Postfix cannot get this; it daemonizes.
            argv = [setpriv, "--pdeathsig", "KILL", "--", *argv]
        env = dict(os.environ)
        if self.env:
            env.update(self.env)
        err = self.stderr_path.open("ab")
        out = self.stdout_path.open("ab")
        self._files = [err, out]
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            env=env,
            cwd=self.workdir,
            start_new_session=True,  # own process group: filters it spawns die with it
            preexec_fn=self._limit_files if self.nofile else None,
        )
        try:
            self.wait_ready(timeout)
        except DaemonError:
            self.stop()
            raise

    def _limit_files(self) -> None:
        assert self.nofile is not None
        resource.setrlimit(resource.RLIMIT_NOFILE, self.nofile)

    def wait_ready(self, timeout: float = 20.0) -> None:
        def ready() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise DaemonError(
                    f"milter-agent exited with {self.proc.returncode} before it was ready\n"
                    f"{tail(self.log_text())}"
                )
            return READY_MARKER in self.log_text() and self.socket.accepts(0.5)

        try:
            wait_until(ready, timeout, interval=0.05)
        except TimeoutError as e:
            raise DaemonError(
                f"milter-agent not ready on {self.socket_spec}: {e}\n{tail(self.log_text())}"
            ) from e

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def send_signal(self, sig: signal.Signals) -> None:
        if self.running():
            os.kill(self.pid, sig)

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, wait up to ``timeout``, then SIGKILL the whole process group.
        Returns the exit code (negative signal number if killed). Idempotent."""
        proc = self.proc
        if proc is None:
            return self.returncode
        if proc.poll() is None:
            stop_child(proc, timeout, lambda: os.killpg(proc.pid, signal.SIGKILL))
        self.returncode = proc.returncode
        self.leftover_pids = self._group_members(proc.pid)
        if self.leftover_pids:
            # Children that outlived the daemon (e.g. a hung filter): do not leak them.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        for f in self._files:
            f.close()
        self._files = []
        return self.returncode

    _group_members = staticmethod(group_members)

    def __enter__(self) -> MilterAgentDaemon:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- observation -------------------------------------------------------------------

    def log_text(self) -> str:
        """Everything the daemon wrote to stderr so far."""
        try:
            return self.stderr_path.read_text(errors="replace")
        except OSError:
            return ""

    def stdout_text(self) -> str:
        try:
            return self.stdout_path.read_text(errors="replace")
        except OSError:
            return ""

    def wait_for_log(self, needle: str, timeout: float = 10.0) -> None:
        """Wait until ``needle`` (plain text) appears on the daemon's stderr."""
        wait_until(
            lambda: needle in self.log_text(),
            timeout,
            interval=0.05,
            message=lambda: f"{needle!r} not in milter-agent log\n{tail(self.log_text())}",
        )

    def _status_kb(self, field: str) -> int:
        with open(f"/proc/{self.pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
        raise DaemonError(f"{field} not in /proc/{self.pid}/status")

    def rss_kb(self) -> int:
        """Current resident set size in KiB (VmRSS)."""
        return self._status_kb("VmRSS")

    def peak_rss_kb(self) -> int:
        """Peak resident set size in KiB (VmHWM)."""
        return self._status_kb("VmHWM")


def ma_client(
    agent: MilterAgentDaemon, *words: str, check: bool = False
) -> subprocess.CompletedProcess[str]:
    """Run ma-client against ``agent``'s control socket (bounded: 30 s)."""
    return subprocess.run(
        [*MA_CLIENT, agent.control_spec, *words],
        capture_output=True,
        text=True,
        timeout=30,
        check=check,
    )


def ma_json(agent: MilterAgentDaemon, *words: str) -> Any:
    """The --json answer of an ma-client command that must exit 0."""
    return json.loads(ma_client(agent, *words, "--json", check=True).stdout)
