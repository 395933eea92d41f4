"""The daemon's side of ``module_safe_use``: a bounded pool of worker processes for one module.

Each worker (:mod:`milter_agent.filters.module_worker`) loads the module once when it starts
and then runs one message at a time, so a crash (even a segfault in C), a hang or a leak hurts
only that worker. A worker that dies fails the message it was running (a filter error) and is
replaced by the next message. On a timeout with -M the worker is killed (SIGKILL) at once and
replaced; without -M it is left to finish and exit on its own, like a program without -T, and
its late answer is dropped; it keeps its place in the pool until it exits, so hung workers can
never outnumber the pool. Waits for a free worker and for the load are bounded by the timeout.

Leaks are contained by recycling: after :attr:`WorkerLimits.messages` messages, or once its
resident memory or its open file descriptors have grown by more than
:attr:`WorkerLimits.rss_growth` or :attr:`WorkerLimits.fd_growth` since it loaded the module, a
worker is stopped (``teardown`` runs) and the next message starts a fresh one. The limits are
the filter's ``module_worker_max_*`` keys.

The pipes are ours and read through the event loop; the worker's exit status is collected with
``Popen.poll``; the orphan reaper leaves a worker alone while the pool still waits for it
(``procs.track``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import logging.handlers
import os
import pickle
import signal
import subprocess
import sys
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from milter_agent import procs
from milter_agent.config.model import WORKER_MAX_FDS, WORKER_MAX_MESSAGES, WORKER_MAX_RSS
from milter_agent.errors import FilterError
from milter_agent.filters.module_api import ModuleConfig, ModuleMessage
from milter_agent.filters.module_common import DeadlinePassed, InUse, after_retired, within
from milter_agent.filters.module_worker import FRAME_HEADER, encode_frame
from milter_agent.registry import NoFreeInstance

log = logging.getLogger("milter_agent.filters.module")

_REAP_WAIT = 2.0
#: How long a worker or a module in the daemon gets for teardown at unload.
STOP_GRACE = 5.0
MIB = 1024 * 1024


@dataclass(frozen=True)
class WorkerLimits:
    """When a worker is replaced by a fresh one; 0 turns a limit off."""

    #: messages a worker runs before it is replaced
    messages: int = WORKER_MAX_MESSAGES
    #: growth of the worker's resident memory (VmRSS) since the module was loaded, in bytes
    rss_growth: int = WORKER_MAX_RSS
    #: growth of the worker's open file descriptors since the module was loaded
    fd_growth: int = WORKER_MAX_FDS


def resident_memory(pid: int) -> int | None:
    """VmRSS of a process in bytes, None if it cannot be read (the process is gone)."""
    try:
        with open(f"/proc/{pid}/status", "rb") as status:
            for line in status:
                if line.startswith(b"VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def open_fds(pid: int) -> int | None:
    """How many file descriptors a process has open, None if that cannot be read."""
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


class ModuleTimeout(FilterError):
    """The module did not answer in time; ``stopped`` tells whether it was stopped."""

    def __init__(self, message: str, *, stopped: bool) -> None:
        super().__init__(message)
        self.stopped = stopped


def _wake(ready: asyncio.Future[None]) -> None:
    if not ready.done():
        ready.set_result(None)


async def _ready(fd: int, *, write: bool) -> None:
    loop = asyncio.get_running_loop()
    ready = loop.create_future()
    (loop.add_writer if write else loop.add_reader)(fd, _wake, ready)
    try:
        await ready
    finally:
        (loop.remove_writer if write else loop.remove_reader)(fd)


def log_setup() -> tuple[str, int]:
    """Where the daemon's root logger writes, for the workers to do the same."""
    root = logging.getLogger()
    target = "stderr"
    for handler in root.handlers:
        if isinstance(handler, logging.handlers.SysLogHandler):
            target = "syslog"
        elif isinstance(handler, logging.StreamHandler) and handler.stream is sys.stdout:
            target = "stdout"
    return target, root.getEffectiveLevel()


class WorkerProcess:
    """One worker and our ends of its pipes."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "milter_agent.filters.module_worker", str(os.getpid())],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, sys.path))},
            close_fds=True,
        )
        procs.track(self.proc.pid)
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self._to, self._from = self.proc.stdin, self.proc.stdout
        os.set_blocking(self._to.fileno(), False)
        os.set_blocking(self._from.fileno(), False)
        self._buffer = bytearray()
        self.messages = 0
        self.loaded_rss: int | None = None
        self.loaded_fds: int | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    async def ask(self, request: object) -> tuple[str, Any]:
        """Send one request, wait for its reply; FilterError if the worker dies."""
        await self._send(encode_frame(request))
        size = FRAME_HEADER.unpack(await self._receive(FRAME_HEADER.size))[0]
        reply: tuple[str, Any] = pickle.loads(await self._receive(size))  # noqa: S301
        return reply

    async def _send(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(self._to.fileno(), view) :]
            except BlockingIOError:
                await _ready(self._to.fileno(), write=True)
            except BrokenPipeError:
                raise FilterError(await self.death()) from None

    async def _receive(self, size: int) -> bytes:
        while len(self._buffer) < size:
            try:
                chunk = os.read(self._from.fileno(), 65536)
            except BlockingIOError:
                await _ready(self._from.fileno(), write=False)
                continue
            if not chunk:
                raise FilterError(await self.death())
            self._buffer += chunk
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        return data

    async def death(self) -> str:
        """Why the worker's pipe closed: its exit status, once it is known (bounded wait)."""
        code = await self.reaped(_REAP_WAIT)
        if code is not None and code < 0:
            return f"module worker {self.pid} died: killed by {signal.Signals(-code).name}"
        if code:
            return f"module worker {self.pid} died: exit status {code}"
        return f"module worker {self.pid} died"

    async def reaped(self, wait: float, interval: float = 0.01) -> int | None:
        """The exit status once the worker has exited, None if it still runs after ``wait``."""
        for _ in range(max(1, round(wait / interval))):
            if self.proc.poll() is not None:
                procs.untrack(self.pid)
                return self.proc.returncode
            await asyncio.sleep(interval)
        return self.proc.poll()

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()
        self.close_pipes()

    def close_pipes(self) -> None:
        """The worker gets end of input (and a broken pipe if it answers): it will exit.

        From here on nobody may wait for it, so the orphan reaper is allowed to collect it.
        """
        procs.untrack(self.pid)
        for pipe in (self._to, self._from):
            with contextlib.suppress(OSError):
                pipe.close()

    async def stop(self, grace: float) -> None:
        """Let the worker run teardown and exit; SIGKILL after ``grace``."""
        self.close_pipes()
        if await self.reaped(grace) is None:
            self.kill()
            await self.reaped(_REAP_WAIT)


class WorkerPool:
    """Up to ``size`` workers for one module, busy, idle or left running after a timeout; idle
    ones wait for the next message. ``after`` are the unloads of the filter's previous runners,
    which the first worker's load waits for."""

    def __init__(
        self,
        config: ModuleConfig,
        size: int,
        limits: WorkerLimits | None = None,
        after: Collection[asyncio.Future[Any]] = (),
    ) -> None:
        self.config = config
        self.size = size
        self.limits = limits or WorkerLimits()
        self._after = after
        self._slots = asyncio.Semaphore(size)
        self._idle: list[WorkerProcess] = []
        self._left: set[WorkerProcess] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stopping: set[asyncio.Task[Any]] = set()
        self._in_use = InUse()
        self._closed = False

    @property
    def pids(self) -> list[int]:
        return [worker.pid for worker in self._idle]

    @property
    def left_pids(self) -> list[int]:
        """Workers left running after a timeout (without -M), still holding their place."""
        return sorted(worker.pid for worker in self._left)

    async def run(self, args: list[str], message: ModuleMessage, timeout: float, kill: bool) -> Any:
        """The module's (normalised) outcome for one message."""
        self._in_use.enter()
        try:
            status, value = await self._run(("run", args, message), timeout, kill)
        finally:
            self._in_use.leave()
        if status != "ok":
            raise FilterError(value)
        return value

    async def _run(self, request: object, timeout: float, kill: bool) -> tuple[str, Any]:
        try:
            await within(timeout, self._slots.acquire())
        except DeadlinePassed:
            # every place is held by a busy worker or one left running after a timeout: this
            # message never ran, which is no error of the filter's (the engine decides)
            raise NoFreeInstance(self._no_worker(timeout)) from None
        worker: WorkerProcess | None = None
        try:
            worker = await self._take(timeout)
            reply = await self._ask(worker, request, timeout, kill)
        except BaseException:
            if worker is None or worker not in self._left:  # a left worker keeps its slot
                if worker is not None:
                    self._discard(worker, kill=True)
                self._slots.release()
            raise
        worker.messages += 1
        self._finished(worker)
        self._slots.release()
        return reply

    def _no_worker(self, timeout: float) -> str:
        text = f"no free module worker within {timeout:g}s"
        if self._left:
            text += f" ({len(self._left)} of {self.size} left running after a timeout)"
        return text

    async def _take(self, timeout: float) -> WorkerProcess:
        """An idle worker that is still alive, or a new one."""
        while self._idle:
            worker = self._idle.pop()
            if worker.proc.poll() is None:
                return worker
            self._discard(worker, kill=False)
        return await self._start(timeout)

    async def _start(self, timeout: float) -> WorkerProcess:
        await after_retired(
            self._after, f"module {self.config.module_name} for filter {self.config.filter_name}"
        )
        self._after = ()
        try:
            worker = WorkerProcess()
        except OSError as exc:
            raise FilterError(f"cannot start a module worker: {exc}") from None
        try:
            status, value = await self._ask(worker, ("load", self.config, log_setup()), timeout)
        except BaseException:
            self._discard(worker, kill=True)
            raise
        if status != "ok":
            self._discard(worker, kill=True)
            raise FilterError(value)
        worker.loaded_rss = resident_memory(worker.pid)
        worker.loaded_fds = open_fds(worker.pid)
        log.info("module %s: worker %d started", self.config.module_name, worker.pid)
        return worker

    async def _ask(
        self, worker: WorkerProcess, request: object, timeout: float, kill: bool = True
    ) -> tuple[str, Any]:
        try:
            return await within(timeout, worker.ask(request))
        except DeadlinePassed:
            if not kill:
                self._leave_running(worker)
                raise ModuleTimeout(
                    f"timed out after {timeout:g}s; worker {worker.pid} left running, no verdict",
                    stopped=False,
                ) from None
            raise ModuleTimeout(
                f"timed out after {timeout:g}s; worker {worker.pid} killed", stopped=True
            ) from None

    def _finished(self, worker: WorkerProcess) -> None:
        """After a message: back to the idle workers, or stopped if it is worn out or the pool
        is being closed."""
        worn = "" if self._closed else self._worn_out(worker)
        if worn:
            log.info("module %s: worker %d replaced %s", self.config.module_name, worker.pid, worn)
        if worn or self._closed:
            task = asyncio.ensure_future(worker.stop(STOP_GRACE))
            self._stopping.add(task)
            task.add_done_callback(self._stopping.discard)
        else:
            self._idle.append(worker)

    def _worn_out(self, worker: WorkerProcess) -> str:
        """Why the worker should be replaced now ("" if it should not)."""
        limits = self.limits
        if limits.messages and worker.messages >= limits.messages:
            return f"after {worker.messages} messages"
        return self._memory_grown(worker) or self._fds_grown(worker)

    def _memory_grown(self, worker: WorkerProcess) -> str:
        rss = resident_memory(worker.pid) if self.limits.rss_growth else None
        base = worker.loaded_rss
        if rss is not None and base is not None and rss - base > self.limits.rss_growth:
            return f"after its memory grew from {base / MIB:.0f} to {rss / MIB:.0f} MiB"
        return ""

    def _fds_grown(self, worker: WorkerProcess) -> str:
        """A module that leaks descriptors would otherwise end in EMFILE for every message."""
        fds = open_fds(worker.pid) if self.limits.fd_growth else None
        base = worker.loaded_fds
        if fds is not None and base is not None and fds - base > self.limits.fd_growth:
            return f"after its open file descriptors grew from {base} to {fds}"
        return ""

    def _leave_running(self, worker: WorkerProcess) -> None:
        worker.close_pipes()
        self._left.add(worker)
        self._background(self._forget_when_done(worker))

    async def _forget_when_done(self, worker: WorkerProcess) -> None:
        while await worker.reaped(60.0, interval=0.5) is None:
            pass
        self._left.discard(worker)
        self._slots.release()
        log.info("module worker %d left running after its timeout has now exited", worker.pid)

    def _discard(self, worker: WorkerProcess, *, kill: bool) -> None:
        if worker in self._left:
            return
        if kill:
            worker.kill()
        self._background(worker.reaped(_REAP_WAIT))

    def _background(self, job: Any) -> None:
        task = asyncio.ensure_future(job)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self, grace: float, *, kill_left: bool = False) -> None:
        """Stop every worker (teardown runs in each) once no message uses the pool; at daemon
        shutdown (``kill_left``) wait at most ``grace`` for that, and kill the workers left
        running after a timeout, which are otherwise left to finish."""
        try:
            async with asyncio.timeout(grace if kill_left else None):
                await self._in_use.none()
        except TimeoutError:
            log.warning("module %s: messages still running at shutdown", self.config.module_name)
        self._closed = True
        idle, self._idle = self._idle, []
        await asyncio.gather(*(worker.stop(grace) for worker in idle), *list(self._stopping))
        if not kill_left:
            return
        left, self._left = list(self._left), set()
        for worker in left:
            worker.kill()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.gather(*(worker.reaped(_REAP_WAIT) for worker in left))
