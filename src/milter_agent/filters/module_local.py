"""A filter module running inside the daemon (``module_safe_use`` off).

The module is loaded once, at its first message (import or dlopen and ``setup`` run in a pool
thread, so the event loop never waits on them); a failed load is tried again by the next
message. ``async def`` functions run on the event loop; plain Python functions and C functions
run on a bounded pool of daemon threads (:mod:`milter_agent.filters.module_threads`), never on
the loop.

On a timeout the message goes on without the verdict. A thread cannot be stopped, with -M or
without: the call keeps its thread until it returns and its result is dropped. An ``async``
function is cancelled with -M, and otherwise left to finish. The module is unloaded
(``teardown``, then dlclose or dropping the Python module) only once no call is running in it.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from typing import Any, TypeVar

from milter_agent.errors import FilterError
from milter_agent.filters.module_api import ModuleConfig, ModuleMessage
from milter_agent.filters.module_load import LoadedModule, describe, load_module, normalize_outcome
from milter_agent.filters.module_pool import ModuleTimeout
from milter_agent.filters.module_threads import ThreadPool

log = logging.getLogger("milter_agent.filters.module")
T = TypeVar("T")


class LocalModule:
    """One module loaded in the daemon for one filter."""

    def __init__(self, config: ModuleConfig, threads: ThreadPool) -> None:
        self.config = config
        self.threads = threads
        self._loading: asyncio.Future[LoadedModule] | None = None
        self._running = 0
        self._idle = asyncio.Event()
        self._idle.set()

    async def run(self, args: list[str], message: ModuleMessage, timeout: float, kill: bool) -> Any:
        """The module's (normalised) outcome for one message."""
        module = await self._module(timeout)
        if module.is_async:
            call: asyncio.Future[Any] = asyncio.ensure_future(_guarded(module.call(args, message)))
        else:
            call = asyncio.wrap_future(self._in_thread(module.call, args, message))
        self._track(call)
        try:
            async with asyncio.timeout(timeout or None):
                value = await asyncio.shield(call)
        except TimeoutError:
            raise self._timed_out(call, module, timeout, kill) from None
        except (FilterError, asyncio.CancelledError):
            raise
        except BaseException as exc:  # SystemExit in a module must not stop the daemon
            log.debug("module %s raised", self.config.module_name, exc_info=True)
            raise FilterError(f"module raised {describe(exc)}") from None
        return normalize_outcome(value)

    def _timed_out(
        self, call: asyncio.Future[Any], module: LoadedModule, timeout: float, kill: bool
    ) -> ModuleTimeout:
        if module.is_async and kill:
            call.cancel()
            return ModuleTimeout(f"timed out after {timeout:g}s and was cancelled", stopped=True)
        where = "in its thread (-M cannot stop a thread)" if not module.is_async and kill else ""
        where = where or ("in its thread" if not module.is_async else "as a task")
        return ModuleTimeout(
            f"timed out after {timeout:g}s; left running {where}, no verdict", stopped=False
        )

    def _in_thread(self, function: Callable[..., T], *args: Any) -> Future[T]:
        return self.threads.submit(function, *args)

    def _track(self, call: asyncio.Future[Any]) -> None:
        """Count the call as running until it really ends (a thread may outlive a timeout)."""
        self._running += 1
        self._idle.clear()
        call.add_done_callback(self._call_ended)

    def _call_ended(self, call: asyncio.Future[Any]) -> None:
        if not call.cancelled():
            call.exception()  # a call left running may fail later: nobody else will look
        self._running -= 1
        if self._running == 0:
            self._idle.set()

    async def _module(self, timeout: float) -> LoadedModule:
        if self._loading is None or _failed(self._loading):
            self._loading = asyncio.ensure_future(self._load())
        try:
            async with asyncio.timeout(timeout or None):
                module: LoadedModule = await asyncio.shield(self._loading)
                return module
        except TimeoutError:
            raise ModuleTimeout(f"loading took longer than {timeout:g}s", stopped=False) from None

    async def _load(self) -> LoadedModule:
        loading = self._in_thread(load_module, self.config.module_name)
        module: LoadedModule = await asyncio.wrap_future(loading)
        if module.setup is not None:
            try:
                await self._hook(module.setup, self.config)
            except BaseException as exc:
                module.unload()
                raise FilterError(f"setup of {module.reference} failed: {describe(exc)}") from exc
        log.info("module %s loaded for filter %s", module.reference, self.config.filter_name)
        return module

    async def _hook(self, hook: Callable[..., Any], *args: Any) -> None:
        if inspect.iscoroutinefunction(hook):
            await hook(*args)
        else:
            await asyncio.wrap_future(self._in_thread(hook, *args))

    async def close(self, grace: float | None = None) -> None:
        """Unload once no call runs in the module (waits at most ``grace`` if given; a module
        still busy then stays loaded, since unloading code that runs would crash)."""
        try:
            async with asyncio.timeout(grace):
                await self._idle.wait()
                if self._loading is not None and not self._loading.done():
                    await asyncio.wait([self._loading])
        except TimeoutError:
            log.warning("module %s still running; not unloaded", self.config.module_name)
            return
        loading, self._loading = self._loading, None
        if loading is None or _failed(loading):
            return
        await self._unload(loading.result())

    async def _unload(self, module: LoadedModule) -> None:
        if module.teardown is not None:
            try:
                await self._hook(module.teardown)
            except Exception as exc:  # noqa: BLE001 - a failed teardown still unloads
                log.warning("teardown of %s failed: %s", module.reference, describe(exc))
        module.unload()
        log.info("module %s unloaded", module.reference)


def _failed(future: asyncio.Future[Any]) -> bool:
    return future.done() and (future.cancelled() or future.exception() is not None)


async def _guarded(call: Awaitable[Any]) -> Any:
    """An async module call; SystemExit or KeyboardInterrupt from it would stop the event loop."""
    try:
        return await call
    except (SystemExit, KeyboardInterrupt) as exc:
        raise FilterError(f"module raised {describe(exc)}") from None
