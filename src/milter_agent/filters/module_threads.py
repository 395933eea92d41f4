"""A bounded pool of daemon threads for module calls that block: plain Python functions and C.

Threads start on demand up to the bound and are then reused, so no thread is created per
message. They are daemon threads: ``concurrent.futures.ThreadPoolExecutor`` joins its threads
when the interpreter exits, so a single hung module call would keep the daemon from stopping.
A call that never returns keeps its thread; once every thread is held, further calls wait in the
queue (and their filters time out).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

T = TypeVar("T")
_Job = tuple["Future[Any]", Callable[[], Any]]


class ThreadPool:
    """``submit`` like an executor; ``close`` lets idle threads end."""

    def __init__(self, size: int, name: str = "module") -> None:
        self.size = size
        self.name = name
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads = 0
        self._idle = 0
        self._queued = 0

    @property
    def threads(self) -> int:
        return self._threads

    def submit(self, function: Callable[..., T], *args: Any) -> Future[T]:
        future: Future[T] = Future()
        with self._lock:
            self._queued += 1
            if self._queued > self._idle and self._threads < self.size:
                self._threads += 1
                name = f"{self.name}-{self._threads}"
                threading.Thread(target=self._work, name=name, daemon=True).start()
        self._jobs.put((future, lambda: function(*args)))
        return future

    def _work(self) -> None:
        while True:
            with self._lock:
                self._idle += 1
            job = self._jobs.get()
            with self._lock:
                self._idle -= 1
                if job is None:
                    self._threads -= 1
                    return
                self._queued -= 1
            future, call = job
            if not future.set_running_or_notify_cancel():
                continue
            try:
                result = call()
            except BaseException as exc:  # noqa: BLE001 - handed to the waiting coroutine
                future.set_exception(exc)
            else:
                future.set_result(result)

    def close(self) -> None:
        """Idle threads end now, busy ones after their call."""
        for _ in range(self._threads):
            self._jobs.put(None)
