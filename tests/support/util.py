"""Small helpers shared by the support modules: bounded waiting, free ports, socket specs,
directory permissions for the unprivileged ``postfix`` user, instance directories and the
logs in them."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import stat
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

# sun_path is 108 bytes on Linux, including the terminating NUL.
UNIX_PATH_MAX = 107


def wait_until(
    predicate: Callable[[], T | None],
    timeout: float,
    *,
    interval: float = 0.02,
    message: str | Callable[[], str] = "condition not met",
) -> T:
    """Poll ``predicate`` until it returns a truthy value or ``timeout`` seconds pass.

    Returns that value; raises TimeoutError with ``message`` (a callable is evaluated lazily,
    so it can include e.g. a log tail) otherwise. The predicate is always tried once more at
    the deadline so a slow last poll does not lose a result that is already there."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            text = message() if callable(message) else message
            raise TimeoutError(f"{text} (after {timeout:.1f}s)")
        time.sleep(min(interval, max(0.0, deadline - time.monotonic())))


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free right now on ``host`` (bind to port 0 and ask the kernel).

    There is an unavoidable window before the caller binds it; callers that start external
    servers retry on "address in use" (see PostfixInstance.start)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


@dataclass(frozen=True)
class SocketSpec:
    """A milter socket address. ``family`` is "unix", "inet" or "inet6"."""

    family: str
    path: str | None = None
    host: str | None = None
    port: int | None = None

    @classmethod
    def parse(cls, spec: str) -> SocketSpec:
        """Accept libmilter/Sendmail syntax (``unix:/p``, ``local:/p``, ``inet:PORT@HOST``,
        ``inet6:PORT@HOST``) and Postfix syntax (``inet:HOST:PORT``, ``/path``)."""
        if spec.startswith("/"):
            return cls("unix", path=spec)
        family, sep, rest = spec.partition(":")
        if not sep:
            raise ValueError(f"bad socket spec {spec!r}")
        family = family.lower()
        if family in ("unix", "local"):
            return cls("unix", path=rest)
        if family not in ("inet", "inet6"):
            raise ValueError(f"unsupported socket family in {spec!r}")
        if "@" in rest:
            port_s, _, host = rest.partition("@")
        elif rest.count(":") >= 1 and not rest.isdigit():
            host, _, port_s = rest.rpartition(":")
        else:
            port_s, host = rest, ("::1" if family == "inet6" else "127.0.0.1")
        host = host.strip("[]") or ("::1" if family == "inet6" else "127.0.0.1")
        return cls(family, host=host, port=int(port_s))

    def postfix(self) -> str:
        """The same address in ``smtpd_milters`` syntax."""
        if self.family == "unix":
            return f"unix:{self.path}"
        host = f"[{self.host}]" if self.family == "inet6" else self.host
        return f"{self.family}:{host}:{self.port}"

    def libmilter(self) -> str:
        """The same address in libmilter syntax (what ``milter-agent -p`` takes)."""
        if self.family == "unix":
            return f"unix:{self.path}"
        return f"{self.family}:{self.port}@{self.host}"

    def connect(self, timeout: float = 1.0) -> socket.socket:
        """Open a stream connection (raises OSError when nobody listens)."""
        if self.family == "unix":
            assert self.path is not None
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(timeout)
            try:
                s.connect(self.path)
            except OSError:
                s.close()
                raise
            return s
        assert self.host is not None and self.port is not None
        return socket.create_connection((self.host, self.port), timeout=timeout)

    def accepts(self, timeout: float = 1.0) -> bool:
        """True when something accepts a connection on this address right now."""
        try:
            self.connect(timeout).close()
        except OSError:
            return False
        return True


def check_unix_path(path: Path | str) -> None:
    """Unix socket paths are limited to 107 bytes; fail early with a readable message."""
    if len(os.fsencode(path)) > UNIX_PATH_MAX:
        raise ValueError(f"Unix socket path too long ({len(os.fsencode(path))} bytes): {path}")


def make_traversable(directory: Path | str) -> None:
    """Let other users (Postfix's smtpd runs as ``postfix``) reach entries in ``directory``.

    Adds only the search bit (o+x) on every ancestor that lacks it, so nothing becomes
    listable or writable. Needed because pytest creates its base temp dir with mode 0700."""
    p = Path(directory).resolve()
    for d in (p, *p.parents):
        mode = d.stat().st_mode
        if not mode & stat.S_IXOTH:
            os.chmod(d, stat.S_IMODE(mode) | stat.S_IXOTH)


def pid_alive(pid: int) -> bool:
    """True if a process with this pid exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            state = f.read().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def proc_start_time(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot (guards against pid reuse)."""
    with (
        contextlib.suppress(OSError, IndexError, ValueError),
        open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f,
    ):
        return int(f.read().rpartition(")")[2].split()[19])
    return None


def tail(text: str, lines: int = 40) -> str:
    """The last ``lines`` lines of ``text``, for error messages."""
    return "\n".join(text.splitlines()[-lines:])


def fresh_root(prefix: str, parent_dir: Path | str | None) -> Path:
    """A new, empty directory named ``prefix...`` under ``parent_dir`` (the temp dir by
    default) for one MTA instance."""
    parent = Path(parent_dir) if parent_dir else Path(tempfile.gettempdir())
    parent.mkdir(parents=True, exist_ok=True)
    # A fresh directory every time: leftovers of a killed run can never collide.
    return Path(tempfile.mkdtemp(prefix=prefix, dir=parent))


@contextlib.contextmanager
def public_tmpdir(prefix: str, mode: int = 0o755) -> Iterator[Path]:
    """A new directory ``/tmp/prefix...`` with ``mode``, for what other users (the daemon's
    user, nobody) must reach: pytest's own tmp dir is 0700. Removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    path.chmod(mode)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def file_size(path: Path) -> int:
    """The size of ``path`` (0 while it does not exist): a mark for read_from()."""
    try:
        return path.stat().st_size
    except OSError:
        return 0


def read_from(path: Path, since: int = 0) -> str:
    """The text of ``path`` from byte offset ``since`` ("" while it does not exist)."""
    try:
        with path.open("rb") as f:
            f.seek(since)
            return f.read().decode("utf-8", errors="replace")
    except OSError:
        return ""


def wait_for_match(
    read: Callable[[], str], pattern: str, timeout: float, what: str = "log line"
) -> re.Match[str]:
    """Wait until ``pattern`` (regex) matches what ``read()`` returns; the TimeoutError
    shows the tail of that text."""
    rx = re.compile(pattern)
    return wait_until(
        lambda: rx.search(read()),
        timeout,
        interval=0.05,
        message=lambda: f"no {what} matching {pattern!r}\n{tail(read())}",
    )
