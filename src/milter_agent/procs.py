"""Running filter programs: the one place that spawns, times out, kills and reaps processes.

- Programs run from an argv list, never through a shell, in their own process group
  (``start_new_session``), with a clean environment given by the caller.
- stdout and stderr are read concurrently and kept up to a bound; the rest is read and dropped,
  so a program writing 100 MB neither blocks nor grows the daemon.
- A program that exits while a grandchild still holds its stdout open does not hang us: once
  the program has exited, its pipes get a short grace and are then closed.
- Timeout: with ``kill`` the process group gets SIGTERM, then SIGKILL after ``kill_grace``;
  without it the program is left running (the seed's behaviour) and reaped in the background.
- The daemon is a child subreaper, so orphaned grandchildren are re-parented to it and
  :class:`OrphanReaper` reaps them: no zombie is ever left behind.
- A program is started with :class:`subprocess.Popen` (vfork and exec in C, no shell) and its
  exit is seen through a pidfd on the event loop. asyncio's own subprocess support would add a
  transport, a protocol and, on Python 3.11, a thread per program, which cost more CPU than the
  spawn itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

log = logging.getLogger("milter_agent.procs")

OUTPUT_LIMIT = 64 * 1024
_PIPE_GRACE = 0.2
_PR_SET_CHILD_SUBREAPER = 36
_background: set[asyncio.Task[None]] = set()
_children: set[int] = set()
# While a spawn is under way its pid is not yet known: the orphan reaper must not run then.
_spawning = 0


@dataclass(frozen=True, slots=True)
class ProcessResult:
    """How a program ended. ``returncode`` is None when it timed out and was left running."""

    returncode: int | None
    stdout: bytes
    stderr: bytes
    seconds: float
    timed_out: bool = False
    killed: bool = False

    @property
    def signal(self) -> int | None:
        """The signal that ended the program, if one did."""
        if self.returncode is not None and self.returncode < 0:
            return -self.returncode
        return None


class SpawnError(OSError):
    """The program could not be started (missing, not executable, bad working directory)."""


def _wake(ready: asyncio.Future[None]) -> None:
    if not ready.done():
        ready.set_result(None)


async def _drain(fd: int, kept: bytearray, limit: int) -> None:
    """Read pipe ``fd`` to its end into ``kept`` (up to ``limit``; the rest is dropped), close it.

    We own the pipes rather than asyncio: its ``Process.wait()`` also waits for them to close,
    which a grandchild holding stdout would delay for as long as it lives.
    """
    loop = asyncio.get_running_loop()
    os.set_blocking(fd, False)
    try:
        while True:
            try:
                chunk = os.read(fd, 65536)
            except BlockingIOError:
                ready = loop.create_future()
                loop.add_reader(fd, _wake, ready)
                try:
                    await ready
                finally:
                    loop.remove_reader(fd)
                continue
            if not chunk:
                return
            if len(kept) < limit:
                kept += chunk[: limit - len(kept)]
    finally:
        os.close(fd)


async def run_program(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    cwd: str | None = None,
    stdin_path: str | None = None,
    timeout: float = 0.0,
    kill: bool = False,
    kill_grace: float = 5.0,
    output_limit: int = OUTPUT_LIMIT,
    on_exit: Callable[[], None] | None = None,
) -> ProcessResult:
    """Run ``argv`` to completion or timeout; see the module docstring for the rules."""
    global _spawning  # noqa: PLW0603 - one counter for the whole daemon
    started = time.monotonic()
    _spawning += 1
    out_r, out_w = os.pipe2(os.O_CLOEXEC)
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    try:
        with open(stdin_path or os.devnull, "rb") as stdin:
            proc = Child(
                subprocess.Popen(
                    list(argv),
                    stdin=stdin,
                    stdout=out_w,
                    stderr=err_w,
                    env=dict(env),
                    cwd=cwd,
                    start_new_session=True,
                    close_fds=True,
                )
            )
    except OSError as exc:
        os.close(out_r)
        os.close(err_r)
        raise SpawnError(exc.errno, f"cannot run {argv[0]!r}: {exc.strerror}") from exc
    finally:
        _spawning -= 1
        os.close(out_w)
        os.close(err_w)
    _children.add(proc.pid)
    outputs = (bytearray(), bytearray())
    readers = [
        asyncio.ensure_future(_drain(out_r, outputs[0], output_limit)),
        asyncio.ensure_future(_drain(err_r, outputs[1], output_limit)),
    ]
    timed_out = killed = False
    try:
        try:
            async with asyncio.timeout(timeout or None):
                await proc.wait()
        except TimeoutError:
            timed_out = True
            if kill:
                killed = True
                await _terminate(proc, kill_grace)
            else:
                _reap_later(proc, on_exit)
        await _close_pipes(readers, proc)
    except asyncio.CancelledError:
        _abandon(proc, readers, kill, kill_grace, on_exit)
        raise
    if proc.returncode is not None:
        _children.discard(proc.pid)
    return ProcessResult(
        proc.returncode if not (timed_out and not kill) else None,
        bytes(outputs[0]),
        bytes(outputs[1]),
        time.monotonic() - started,
        timed_out,
        killed,
    )


class Child:
    """A started program: its pid, and its exit, seen through a pidfd (polled where the
    kernel has none). Only this object waits for the pid, so nobody else reaps it."""

    _POLL = 0.05

    def __init__(self, popen: subprocess.Popen[bytes]) -> None:
        self._popen = popen
        self.pid = popen.pid
        self.returncode: int | None = None
        self._loop = asyncio.get_running_loop()
        self._exited: asyncio.Future[int] = self._loop.create_future()
        self._pidfd = -1
        try:
            self._pidfd = os.pidfd_open(self.pid)
        except (AttributeError, OSError):  # no pidfd on this kernel: poll
            self._loop.call_later(self._POLL, self._poll)
        else:
            self._loop.add_reader(self._pidfd, self._reap)

    async def wait(self) -> int:
        """The exit code (negative: the signal that ended it); cancellable, the exit is
        still noted when it comes."""
        return await asyncio.shield(self._exited)

    def _reap(self) -> bool:
        try:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:  # reaped elsewhere: cannot happen, but never hang on it
            pid, status = self.pid, 255 << 8
        if pid == 0:
            return False
        self.returncode = self._popen.returncode = os.waitstatus_to_exitcode(status)
        if self._pidfd >= 0:
            self._loop.remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = -1
        if not self._exited.done():
            self._exited.set_result(self.returncode)
        return True

    def _poll(self) -> None:
        if not self._reap():
            self._loop.call_later(self._POLL, self._poll)


async def _close_pipes(readers: Sequence[asyncio.Future[None]], proc: Child) -> None:
    """Let the readers finish; pipes a grandchild keeps open are closed after a short grace."""
    await asyncio.wait(readers, timeout=_PIPE_GRACE if proc.returncode is not None else 0)
    for reader in readers:
        reader.cancel()
    await asyncio.gather(*readers, return_exceptions=True)


def _killpg(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


async def _terminate(proc: Child, grace: float) -> None:
    """SIGTERM to the process group, SIGKILL after ``grace``; always waits for the exit."""
    _killpg(proc.pid, signal.SIGTERM)
    try:
        async with asyncio.timeout(grace):
            await proc.wait()
    except TimeoutError:
        _killpg(proc.pid, signal.SIGKILL)
        await proc.wait()
    # the group may hold grandchildren that ignored SIGTERM
    _killpg(proc.pid, signal.SIGKILL)


def _reap_later(proc: Child, on_exit: Callable[[], None] | None = None) -> None:
    """A program left running: reap it when it ends, then run ``on_exit`` (its owner is gone;
    e.g. remove files the program may have written after its message was done)."""

    async def wait() -> None:
        await proc.wait()
        _children.discard(proc.pid)
        if on_exit is not None:
            on_exit()
        log.info(
            "program %d left running after its timeout has now exited (%s)",
            proc.pid,
            proc.returncode,
        )

    task = asyncio.ensure_future(wait())
    _background.add(task)
    task.add_done_callback(_background.discard)


def _abandon(
    proc: Child,
    readers: Sequence[asyncio.Future[None]],
    kill: bool,
    grace: float,
    on_exit: Callable[[], None] | None = None,
) -> None:
    """Nobody waits for the verdict any more (the MTA hung up, the daemon stops): end the
    program now if we may kill it, else leave it running as after a timeout; either way reap
    it and close its pipes in the background, so no process, zombie or fd is left behind."""

    async def finish() -> None:
        try:
            if proc.returncode is None:
                if kill:
                    await _terminate(proc, grace)
                else:
                    await proc.wait()
            await _close_pipes(readers, proc)
        except asyncio.CancelledError:  # the daemon is exiting
            if kill:
                _killpg(proc.pid, signal.SIGKILL)
            for reader in readers:
                reader.cancel()
            raise
        finally:
            if proc.returncode is not None:
                _children.discard(proc.pid)
                if on_exit is not None:
                    on_exit()

    task = asyncio.ensure_future(finish())
    _background.add(task)
    task.add_done_callback(_background.discard)


def track(pid: int) -> None:
    """A child someone else waits for (a module worker): the orphan reaper leaves it alone."""
    _children.add(pid)


def untrack(pid: int) -> None:
    """Its owner no longer waits for it: if it is a zombie, the orphan reaper collects it."""
    _children.discard(pid)


def become_subreaper() -> bool:
    """Make orphaned descendants our children (Linux), so they can be reaped."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


def reap_orphans() -> int:
    """Reap exited children that are not ours to wait for (orphans re-parented to us)."""
    reaped = 0
    while not _spawning:
        try:
            info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return reaped
        if info is None or info.si_pid == 0 or info.si_pid in _children:
            return reaped
        with contextlib.suppress(ChildProcessError):
            os.waitpid(info.si_pid, os.WNOHANG)
            reaped += 1
    return reaped


class OrphanReaper:
    """Reaps orphans on SIGCHLD-free polling, once a second: cheap and race-free."""

    def __init__(self, interval: float = 1.0) -> None:
        self.interval = interval
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._loop())

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            reap_orphans()

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
