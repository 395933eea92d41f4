"""Running as a daemon (``-d 0``): detaching from the terminal, telling the starting process how
start-up went, and the pid file.

The process that was started waits until the detached daemon has bound its sockets, dropped
its privileges and checked what it needs (``Readiness.ready``) and only then exits 0; if
start-up fails it prints the reason and exits 1, so an init script or ``systemd``
``Type=forking`` sees the failure instead of a daemon that is gone a moment later.

The pid file is written as root (its directory is often root's, e.g. /run) and then given to
the daemon's user. After dropping privileges the daemon can remove it only if that user may
write the directory; where it may not, it empties the file instead, so no stale pid is left
for a ``kill $(cat ...)`` to hit an unrelated process.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from pathlib import Path

log = logging.getLogger("milter_agent.daemon")

#: What the daemon writes to the starting process when it is up.
_READY = b"ready\n"


class Readiness:
    """The daemon's end of the pipe to the process that started it; says one thing, once."""

    def __init__(self, fd: int | None) -> None:
        self._fd = fd

    def ready(self) -> None:
        self._say(_READY)

    def failed(self, reason: str) -> None:
        self._say(reason.replace("\n", " ").encode("utf-8", "replace") + b"\n")

    def _say(self, line: bytes) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(OSError):  # the starter was killed: nobody to tell
            os.write(self._fd, line)
        os.close(self._fd)
        self._fd = None


def detach() -> Readiness:
    """Double fork, new session, working directory /, stdio to /dev/null. Returns in the
    daemon only; the starting process exits with the daemon's start-up result."""
    read_end, write_end = os.pipe()  # not inherited by programs the daemon runs
    child = os.fork()
    if child:
        os.close(write_end)
        os._exit(_wait_for_start(read_end, child))
    os.close(read_end)
    os.setsid()
    if os.fork():
        os._exit(0)
    os.chdir("/")
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)
    return Readiness(write_end)


def _wait_for_start(fd: int, child: int) -> int:
    """In the starting process: 0 once the daemon says it is ready, else 1 with its reason."""
    os.waitpid(child, 0)  # the intermediate process exits at once
    said = b""
    # up to the first line, not to EOF: a worker forked later may hold the pipe open
    while not said.endswith(b"\n"):
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        said += chunk
    if said == _READY:
        return 0
    reason = said.decode("utf-8", "replace").strip()
    reason = reason or "the daemon exited during start-up (see the log)"
    print(f"milter-agent: {reason}", file=sys.stderr)
    sys.stderr.flush()
    return 1


def write_pid_file(path: str, owner: tuple[int, int] | None) -> None:
    """Write our pid (as root, before the drop), then give the file to the daemon's user. A
    missing directory is created, as the spool directory (the default place) would be."""
    Path(path).parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    Path(path).write_text(f"{os.getpid()}\n")
    if owner is not None and os.geteuid() == 0:
        os.chown(path, *owner)


def remove_pid_file(path: str) -> None:
    """At exit, as whatever user we are by now: remove the file, or empty it if its directory
    does not let us (see the module docstring)."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        return
    except PermissionError:
        with contextlib.suppress(OSError):
            os.truncate(path, 0)
            log.info("pid file %s emptied: its directory is not writable by this user", path)
    except OSError as exc:
        log.warning("cannot remove pid file %s: %s", path, exc)
