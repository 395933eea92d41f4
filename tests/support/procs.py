"""Process helpers shared by the MTA and daemon wrappers (postfix.py, sendmail.py, daemon.py):
stopping a child and whatever it left behind, finding the members of a process group or
session, the ``owner`` file by which a stale-instance reaper knows a run is gone, and running
a check as another user."""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import pwd
import signal
import subprocess
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Generic, Protocol, TypeVar

from milter_agent.control.client import ClientError

from .util import pid_alive, proc_start_time, wait_until


def kill_all(pids: Sequence[int], sig: signal.Signals) -> None:
    """Send ``sig`` to each of ``pids``; those already gone are passed over."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def _wait_none(processes: Callable[[], Sequence[int]], timeout: float) -> None:
    with contextlib.suppress(TimeoutError):
        wait_until(lambda: not processes(), timeout)


def kill_until_gone(
    processes: Callable[[], Sequence[int]], grace: float, settle: float = 5.0
) -> None:
    """SIGTERM what ``processes()`` lists, wait up to ``grace`` seconds for it to be gone,
    then SIGKILL whatever is left and wait up to ``settle`` seconds more. Bounded; never
    raises."""
    pids = processes()
    if not pids:
        return
    kill_all(pids, signal.SIGTERM)
    _wait_none(processes, grace)
    kill_all(processes(), signal.SIGKILL)
    if settle:
        _wait_none(processes, settle)


def alive(pids: Sequence[int]) -> Callable[[], list[int]]:
    """A ``processes`` for kill_until_gone(): those of ``pids`` still alive."""
    return lambda: [p for p in pids if pid_alive(p)]


def stop_child(proc: subprocess.Popen[bytes], timeout: float, kill: Callable[[], None]) -> None:
    """SIGTERM ``proc`` and wait up to ``timeout``; if it is still there, ``kill()`` it and
    wait up to 5 s more."""
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            kill()
        proc.wait(5.0)


def _stat_fields(pid: str) -> list[str]:
    """/proc/PID/stat after the command name: state, ppid, pgrp, session, ..."""
    with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
        return f.read().rpartition(")")[2].split()


def _processes_where(field: int, value: int) -> list[int]:
    found: list[int] = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                if int(_stat_fields(entry)[field]) == value:
                    found.append(int(entry))
    return found


def children_of(ppid: int) -> list[int]:
    """Processes whose parent is ``ppid``."""
    return _processes_where(1, ppid)


def group_members(pgid: int) -> list[int]:
    """Live processes of the process group ``pgid``."""
    return [p for p in _processes_where(2, pgid) if pid_alive(p)]


def session_members(sid: int) -> list[int]:
    """Live processes of the session ``sid``."""
    return [p for p in _processes_where(3, sid) if pid_alive(p)]


def write_owner(root: Path) -> None:
    """Mark ``root`` as belonging to this process (see owner_alive())."""
    (root / "owner").write_text(f"{os.getpid()} {proc_start_time(os.getpid())}\n")


def owner_alive(root: Path) -> bool:
    """True while the process that wrote ``root``'s owner file still runs (not a reused pid)."""
    try:
        pid_s, start_s = (root / "owner").read_text().split()
    except (OSError, ValueError):
        return False
    return pid_alive(int(pid_s)) and str(proc_start_time(int(pid_s))) == start_s


def as_user(
    user: pwd.struct_passwd, action: Callable[[], object], groups: Sequence[int] = ()
) -> tuple[str, int]:
    """Run ``action`` in a child process as ``user`` with the supplementary ``groups``: (its
    answer as JSON, 0), or the text and exit code of a control-client error, or (the text, -1)
    of an OSError."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.setgroups(list(groups))
            os.setgid(user.pw_gid)
            os.setuid(user.pw_uid)
            try:
                answer, code = json.dumps(action()), 0
            except ClientError as exc:
                answer, code = str(exc), exc.code
            except OSError as exc:
                answer, code = str(exc), -1
            os.write(write_end, json.dumps([answer, code]).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    os.waitpid(pid, 0)
    with os.fdopen(read_end, "rb") as pipe:
        answer, code = json.loads(pipe.read())
    return answer, code


class _Stoppable(Protocol):
    def stop(self) -> None: ...


S = TypeVar("S", bound=_Stoppable)


class LiveInstances(Generic[S]):
    """The instances now running; those a test left running are stopped at exit."""

    def __init__(self) -> None:
        self._instances: set[S] = set()
        self._lock = threading.Lock()
        atexit.register(self.stop_all)

    def add(self, instance: S) -> None:
        with self._lock:
            self._instances.add(instance)

    def discard(self, instance: S) -> None:
        with self._lock:
            self._instances.discard(instance)

    def stop_all(self) -> None:
        with self._lock:
            instances = list(self._instances)
        for instance in instances:
            with contextlib.suppress(Exception):
                instance.stop()
