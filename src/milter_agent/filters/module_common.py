"""What the two kinds of module runner (in the daemon, in workers) share: bounded waits that
tell the deadline from a module's own ``TimeoutError``, and the order of loads and unloads.

A reload, or a message of an older configuration, can start a new runner for a filter while an
old one is still being unloaded. Both run the same module code and usually reach for the same
external resources (a socket, a lock file, a database), so:

- a new runner loads only once the filter's previous runners have unloaded
  (:func:`after_retired`); the wait is bounded, because an unload first waits for the calls still
  running in the old runner, and one of those may hang;
- an importable module (``package.mod``) is a single object per process, shared by every runner
  that names it, so its ``setup`` runs when the first runner takes it and its ``teardown`` when
  the last one lets go (:data:`SHARED`). A ``.py`` file is loaded anew by each runner, and
  ``dlopen`` counts the users of a library itself.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, field
from typing import Any, TypeVar

log = logging.getLogger("milter_agent.filters.module")
T = TypeVar("T")

#: How long a new runner waits for the previous runners of its filter to unload.
RETIRE_WAIT = 5.0


class DeadlinePassed(Exception):
    """The time given to a wait ran out (as opposed to a TimeoutError the awaited code raised:
    a module's own ``socket.timeout`` is the module's error, not a filter timeout)."""


async def within(seconds: float, awaitable: Awaitable[T]) -> T:
    """The result of ``awaitable``, or DeadlinePassed after ``seconds`` (0 = no limit)."""
    try:
        async with asyncio.timeout(seconds or None) as limit:
            return await awaitable
    except TimeoutError:
        if limit.expired():
            raise DeadlinePassed from None
        raise


async def after_retired(retiring: Collection[asyncio.Future[Any]], what: str) -> None:
    """Wait (at most RETIRE_WAIT) until the previous runners of a filter have unloaded."""
    pending = [job for job in retiring if not job.done()]
    if not pending:
        return
    _, late = await asyncio.wait(pending, timeout=RETIRE_WAIT)
    if late:
        log.warning(
            "%s: the previous load is still being unloaded after %gs; loading anyway",
            what,
            RETIRE_WAIT,
        )


class InUse:
    """How many messages are using a runner, so that its unload can wait until none is."""

    def __init__(self) -> None:
        self._count = 0
        self._none = asyncio.Event()
        self._none.set()

    def enter(self) -> None:
        self._count += 1
        self._none.clear()

    def leave(self) -> None:
        self._count -= 1
        if self._count == 0:
            self._none.set()

    async def none(self) -> None:
        await self._none.wait()


@dataclass(slots=True)
class _Use:
    owner: object  # held, so that its id cannot be reused while it is the key
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0


class SharedSetups:
    """Who uses an importable module in this process; ``setup`` on the first, ``teardown`` on the
    last. The lock also keeps a setup from starting while a teardown of the same module runs.

    Kept per event loop: the daemon has one, tests run several one after the other.
    """

    def __init__(self) -> None:
        self._uses: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[int, _Use]] = (
            weakref.WeakKeyDictionary()
        )

    def _use(self, owner: object) -> _Use:
        uses = self._uses.setdefault(asyncio.get_running_loop(), {})
        use = uses.get(id(owner))
        if use is None:
            use = uses[id(owner)] = _Use(owner)
        return use

    async def take(self, owner: object, setup: Callable[[], Awaitable[None]]) -> None:
        """Count one more user; run ``setup`` if it is the first (a failed setup counts none)."""
        use = self._use(owner)
        async with use.lock:
            if use.users == 0:
                await setup()
            use.users += 1

    async def let_go(self, owner: object, teardown: Callable[[], Awaitable[None]]) -> None:
        """Count one user less; run ``teardown`` if it was the last."""
        use = self._use(owner)
        async with use.lock:
            use.users -= 1
            if use.users == 0:
                await teardown()


#: The importable modules in use in the daemon.
SHARED = SharedSetups()
