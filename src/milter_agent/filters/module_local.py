"""A filter module running inside the daemon (``module_safe_use`` off).

The module is loaded once, at its first message, after the filter's previous load (if a reload
replaced one) has unloaded; a failed load is tried again by the next message. Import or dlopen,
``setup``, ``teardown`` and dlclose run on a small pool of loading threads of their own, so the
event loop never waits on them and hung module calls cannot hold them up. ``async def``
functions run on the event loop; plain Python functions and C functions run on a bounded pool
of daemon threads (:mod:`milter_agent.filters.module_threads`), never on the loop.

An importable module is shared with every other runner in the daemon that names it: its
``setup`` runs for the first, its ``teardown`` for the last (:mod:`.module_common`).

On a timeout the message goes on without the verdict. A thread cannot be stopped, with -M or
without: the call keeps its thread until it returns and its result is dropped. An ``async``
function is cancelled with -M, and otherwise left to finish. The module is unloaded only once
no message is using it any more (unloading code that runs would crash).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable, Collection
from typing import Any, TypeVar

from milter_agent.errors import FilterError
from milter_agent.filters.module_api import ModuleConfig, ModuleMessage
from milter_agent.filters.module_common import (
    SHARED,
    DeadlinePassed,
    InUse,
    after_retired,
    within,
)
from milter_agent.filters.module_load import LoadedModule, describe, load_module, normalize_outcome
from milter_agent.filters.module_pool import ModuleTimeout
from milter_agent.filters.module_threads import ThreadPool

log = logging.getLogger("milter_agent.filters.module")
T = TypeVar("T")


class LocalModule:
    """One module loaded in the daemon for one filter.

    ``calls`` runs plain and C process functions, ``loads`` everything else that may block;
    ``after`` are the unloads of the filter's previous runners, which the load waits for.
    """

    def __init__(
        self,
        config: ModuleConfig,
        calls: ThreadPool,
        loads: ThreadPool,
        after: Collection[asyncio.Future[Any]] = (),
    ) -> None:
        self.config = config
        self.calls = calls
        self.loads = loads
        self._after = after
        self._loading: asyncio.Future[LoadedModule] | None = None
        # from before its load to the end of its call (a thread may outlive the timeout)
        self._in_use = InUse()

    async def run(self, args: list[str], message: ModuleMessage, timeout: float, kill: bool) -> Any:
        """The module's (normalised) outcome for one message."""
        self._in_use.enter()
        call: asyncio.Future[Any] | None = None
        try:
            module = await self._module(timeout)
            call = self._start(module, args, message)
            return normalize_outcome(await self._outcome(call, module, timeout, kill))
        finally:
            if call is None or call.done():
                self._in_use.leave()
            else:  # left running after a timeout: the module is in use until it ends
                call.add_done_callback(lambda _: self._in_use.leave())

    def _start(
        self, module: LoadedModule, args: list[str], message: ModuleMessage
    ) -> asyncio.Future[Any]:
        if module.is_async:
            call: asyncio.Future[Any] = asyncio.ensure_future(_guarded(module.call(args, message)))
        else:
            call = asyncio.wrap_future(self.calls.submit(module.call, args, message))
        call.add_done_callback(_consume)
        return call

    async def _outcome(
        self, call: asyncio.Future[Any], module: LoadedModule, timeout: float, kill: bool
    ) -> Any:
        try:
            return await within(timeout, asyncio.shield(call))
        except DeadlinePassed:
            raise self._timed_out(call, module, timeout, kill) from None
        except (FilterError, asyncio.CancelledError):
            raise
        except BaseException as exc:  # SystemExit in a module must not stop the daemon
            log.debug("module %s raised", self.config.module_name, exc_info=True)
            raise FilterError(f"module raised {describe(exc)}") from None

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

    async def _module(self, timeout: float) -> LoadedModule:
        if self._loading is None or _failed(self._loading):
            self._loading = asyncio.ensure_future(self._load())
        try:
            return await within(timeout, asyncio.shield(self._loading))
        except DeadlinePassed:
            raise ModuleTimeout(f"loading took longer than {timeout:g}s", stopped=False) from None

    async def _load(self) -> LoadedModule:
        name, filter_name = self.config.module_name, self.config.filter_name
        await after_retired(self._after, f"module {name} for filter {filter_name}")
        self._after = ()
        module = await self._loader(load_module, name)
        try:
            await self._set_up(module)
        except BaseException as exc:
            await self._loader(module.unload)
            raise FilterError(f"setup of {module.reference} failed: {describe(exc)}") from exc
        log.info("module %s loaded for filter %s", module.reference, filter_name)
        return module

    async def _set_up(self, module: LoadedModule) -> None:
        async def setup() -> None:
            await self._hook(module.setup, self.config)

        if module.owner is None:
            await setup()
        else:
            await SHARED.take(module.owner, setup)

    async def _hook(self, hook: Callable[..., Any] | None, *args: Any) -> None:
        if hook is None:
            return
        if inspect.iscoroutinefunction(hook):
            await hook(*args)
        else:
            await self._loader(hook, *args)

    def _loader(self, function: Callable[..., T], *args: Any) -> Awaitable[T]:
        return asyncio.wrap_future(self.loads.submit(function, *args))

    async def close(self, grace: float | None = None) -> None:
        """Unload once no message uses the module (waits at most ``grace`` if given; a module
        still busy then stays loaded, since unloading code that runs would crash)."""
        try:
            async with asyncio.timeout(grace):
                await self._in_use.none()
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
        async def teardown() -> None:
            try:
                await self._hook(module.teardown)
            except Exception as exc:  # noqa: BLE001 - a failed teardown still unloads
                log.warning("teardown of %s failed: %s", module.reference, describe(exc))

        if module.owner is None:
            await teardown()
        else:
            await SHARED.let_go(module.owner, teardown)
        await self._loader(module.unload)
        log.info("module %s unloaded", module.reference)


def _failed(future: asyncio.Future[Any]) -> bool:
    return future.done() and (future.cancelled() or future.exception() is not None)


def _consume(call: asyncio.Future[Any]) -> None:
    """A call left running may fail later, when nobody waits for it any more."""
    if not call.cancelled():
        call.exception()


async def _guarded(call: Awaitable[Any]) -> Any:
    """An async module call; SystemExit or KeyboardInterrupt from it would stop the event loop."""
    try:
        return await call
    except (SystemExit, KeyboardInterrupt) as exc:
        raise FilterError(f"module raised {describe(exc)}") from None
