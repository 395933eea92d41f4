"""``[Filter]`` sections with ``module_name``: run a filter module on one message, in the daemon
or, with ``module_safe_use``, in worker processes.

The arguments are ``exec_cmd`` expanded exactly as for a program (``%r %n %h`` files included)
and those files are read back the same way after the call. An int from the module means what a
program's exit code means; a :class:`ModuleResult` is checked here and becomes a
:class:`FilterResult` whose changes the engine applies (with the usual -A -R -H -G -B checks).

Loaded modules live in :data:`HOST` across messages and reloads: loaded at first use (never per
message), unloaded when a reload drops the filter, changes how it is loaded, or finds the module
file changed on disk, so the next message loads the new version.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from milter_agent import variables
from milter_agent.conditions import check_address
from milter_agent.config.model import FilterSpec, Settings
from milter_agent.config.values import check_header_value, parse_header_name, parse_reply_code
from milter_agent.errors import FilterError, SpoolError
from milter_agent.filters.module_api import ModuleConfig, ModuleMessage, ModuleResult
from milter_agent.filters.module_load import module_file
from milter_agent.filters.module_local import LocalModule
from milter_agent.filters.module_pool import STOP_GRACE, ModuleTimeout, WorkerLimits, WorkerPool
from milter_agent.filters.module_threads import ThreadPool
from milter_agent.filters.results import (
    MAX_HEADER_VALUE,
    FilterResult,
    blank_controls,
    body_file_written,
    header_file_changes,
    parse_header_lines,
    read_text,
    text_lines,
)
from milter_agent.message import header_text
from milter_agent.registry import FilterState
from milter_agent.work import MessageWork, variable_values

log = logging.getLogger("milter_agent.filters.module")

#: Threads for plain Python and C module calls, shared by all in-daemon modules.
MODULE_THREADS = 16
#: Threads for loading and unloading in-daemon modules (import, dlopen, setup, teardown), kept
#: apart from the call threads so that hung calls cannot hold up loads and unloads.
LOAD_THREADS = 4
#: Worker processes per safe-mode module when run_single_instance does not say.
SAFE_WORKERS = max(2, min(8, os.cpu_count() or 2))

_SUFFIX = {variables.REPLY_FILE: "reply", variables.BODY_FILE: "body", variables.HEADER_FILE: "hdr"}
_LONE_LF = re.compile(rb"(?<!\r)\n")
Runner = LocalModule | WorkerPool
Stamp = tuple[int, int, int, int]


def module_config(spec: FilterSpec) -> ModuleConfig:
    return ModuleConfig(
        filter_name=spec.name,
        module_name=spec.module_name or "",
        args=tuple(str(word) for word in spec.argv),
        safe=spec.module_safe_use,
        timeout=spec.timeout,
    )


def worker_limits(spec: FilterSpec) -> WorkerLimits:
    """When the filter's workers (module_safe_use) are replaced: its module_worker_max_* keys."""
    return WorkerLimits(
        messages=spec.module_worker_max_messages,
        rss_growth=spec.module_worker_max_rss,
        fd_growth=spec.module_worker_max_fds,
    )


def _identity(spec: FilterSpec) -> tuple[ModuleConfig, int]:
    return module_config(spec), spec.single_instance


def _stamp(reference: str) -> Stamp | None:
    path = module_file(reference)
    try:
        info = os.stat(path) if path is not None else None
    except OSError:
        return None
    return None if info is None else (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)


@dataclass(slots=True)
class _Handle:
    identity: tuple[ModuleConfig, int]
    runner: Runner
    stamp: Stamp | None

    def file_changed(self) -> bool:
        return _stamp(self.identity[0].module_name) != self.stamp


class ModuleHost:
    """The loaded modules of the daemon, by filter name."""

    def __init__(self, threads: int = MODULE_THREADS) -> None:
        self.thread_count = threads
        self._calls: ThreadPool | None = None
        self._loads: ThreadPool | None = None
        self._handles: dict[str, _Handle] = {}
        self._wanted: dict[str, tuple[ModuleConfig, int]] | None = None
        self._closing: dict[asyncio.Task[None], str] = {}  # unloads running, by filter name

    @property
    def loaded(self) -> dict[str, Runner]:
        return {name: handle.runner for name, handle in self._handles.items()}

    def configure(self, filters: Iterable[FilterSpec]) -> None:
        """After a (re)load: let go of the modules of filters that left or changed, and of
        modules whose file changed; the next message loads them anew. A kept worker pool takes
        the new worker limits as they are: they are read after each message, so changing them
        needs no restart of the workers."""
        specs = {spec.name: spec for spec in filters if spec.is_module}
        wanted = {name: _identity(spec) for name, spec in specs.items()}
        for name, handle in list(self._handles.items()):
            if wanted.get(name) != handle.identity or handle.file_changed():
                del self._handles[name]
                self._retire(name, handle.runner)
            elif isinstance(handle.runner, WorkerPool):
                handle.runner.limits = worker_limits(specs[name])
        self._wanted = wanted

    async def call(
        self, spec: FilterSpec, args: list[str], message: ModuleMessage, kill: bool
    ) -> Any:
        """The module's outcome (an int or a checked ModuleResult) for one message."""
        runner, one_off = self._runner(spec)
        try:
            return await runner.run(args, message, spec.timeout, kill)
        finally:
            if one_off:
                self._retire(spec.name, runner)

    def _runner(self, spec: FilterSpec) -> tuple[Runner, bool]:
        identity = _identity(spec)
        handle = self._handles.get(spec.name)
        if handle is not None and handle.identity == identity:
            return handle.runner, False
        if self._wanted is not None and self._wanted.get(spec.name) != identity:
            return self._new_runner(spec), True  # a message of an older configuration
        if handle is not None:
            self._retire(spec.name, handle.runner)
        runner = self._new_runner(spec)  # after the retire: its load waits for that unload
        self._handles[spec.name] = _Handle(identity, runner, _stamp(identity[0].module_name))
        return runner, False

    def _new_runner(self, spec: FilterSpec) -> Runner:
        config = module_config(spec)
        after = [task for task, name in self._closing.items() if name == spec.name]
        if spec.module_safe_use:
            size = spec.single_instance or SAFE_WORKERS
            return WorkerPool(config, size, worker_limits(spec), after)
        if self._calls is None or self._loads is None:
            self._calls = ThreadPool(self.thread_count)
            self._loads = ThreadPool(LOAD_THREADS, "module-load")
        return LocalModule(config, self._calls, self._loads, after)

    def _retire(self, name: str, runner: Runner, *, shutdown: bool = False) -> None:
        if isinstance(runner, WorkerPool):
            job = runner.close(STOP_GRACE, kill_left=shutdown)
        else:
            job = runner.close(STOP_GRACE if shutdown else None)
        task = asyncio.ensure_future(job)
        self._closing[task] = name
        task.add_done_callback(self._closing.pop)

    async def close(self) -> None:
        """Daemon shutdown: unload everything (bounded), stop every worker."""
        handles, self._handles = dict(self._handles), {}
        for name, handle in handles.items():
            self._retire(name, handle.runner, shutdown=True)
        if self._closing:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(STOP_GRACE + 5.0):
                    await asyncio.gather(*self._closing, return_exceptions=True)
        for pool in (self._calls, self._loads):
            if pool is not None:
                pool.close()
        self._calls = self._loads = None
        self._wanted = None


#: The daemon's modules. The daemon calls ``HOST.configure`` at each (re)load and
#: ``HOST.close`` when it stops.
HOST = ModuleHost()


async def run_module_filter(
    spec: FilterSpec,
    work: MessageWork,
    state: FilterState,
    settings: Settings,
    host: ModuleHost | None = None,
) -> FilterResult:
    files = {name: work.temp_file(_SUFFIX[name]) for name in spec.required_files}
    current = work.current_file()
    values = variable_values(work, {variables.FILE: current, **files} if current else files)
    args = variables.expand_all(spec.argv, values)
    message = module_message(work, current)
    try:  # no free instance or worker in time raises NoFreeInstance, which the engine handles
        async with state.slot(spec.timeout):
            outcome = await (host or HOST).call(spec, args, message, settings.allow_kill_module)
    except ModuleTimeout as exc:
        state.timeouts += 1
        state.kills += exc.stopped
        raise
    return module_result(spec, outcome, files, work)


def module_message(work: MessageWork, path: Path | None) -> ModuleMessage:
    """What the module sees: the message as the sections before it left it."""
    message = work.message
    return ModuleMessage(
        sender=message.sender_address,
        recipients=tuple(work.recipient_addresses),
        headers=tuple((name, header_text(raw)) for name, raw in work.headers),
        macros=message.macros,
        queue_id=message.queue_id,
        client_address=message.client.address,
        client_name=message.client.hostname,
        helo=message.client.helo,
        size=message.size,
        path=path,
    )


# --- what the module returned -----------------------------------------------------------------


def module_result(
    spec: FilterSpec,
    outcome: int | ModuleResult,
    files: Mapping[str, Path],
    work: MessageWork,
) -> FilterResult:
    """The FilterResult of an int or a ModuleResult, plus whatever the %r %n %h files say.

    The %h lines mean what they mean for a program (``header_file_changes``): the first line
    of a name the message has sets it, every other line adds; a ModuleResult's own header
    changes come after them."""
    text = text_lines(read_text(files.get(variables.REPLY_FILE)))
    lines, problems = parse_header_lines(read_text(files.get(variables.HEADER_FILE)))
    for problem in problems:
        log.warning("filter %s: header file %s", spec.name, problem)
    changed, added = header_file_changes(lines, lambda name: work.header(name) is not None)
    if isinstance(outcome, int):
        result = FilterResult(spec.verdict_for(outcome), text, headers=changed, add_headers=added)
        result.note = f"returned {outcome}"
        body = None
    else:
        result = _checked(outcome, text, changed, added)
        body = outcome.new_body if isinstance(outcome.new_body, bytes) else None
    result.new_body = _new_body(body, files.get(variables.BODY_FILE), work)
    return result


def _checked(
    outcome: ModuleResult,
    text: tuple[str, ...],
    changed: list[tuple[str, str]],
    added: list[tuple[str, str]],
) -> FilterResult:
    """``outcome`` checked, after the %r text and the %h ``changed`` and ``added`` headers."""
    try:
        return FilterResult(
            outcome.verdict,
            text_lines(outcome.text) or text,
            headers=changed + _headers(outcome.change_headers),
            note="result",
            reply_code=_reply_code(outcome),
            add_headers=added + _headers(outcome.add_headers),
            remove_headers=[parse_header_name(name) for name in outcome.remove_headers],
            add_recipients=[check_address(a) for a in outcome.add_recipients],
            remove_recipients=[check_address(a) for a in outcome.remove_recipients],
        )
    except ValueError as exc:
        raise FilterError(f"returned a bad ModuleResult: {exc}") from None


def _headers(pairs: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """Checked header changes: a CR, LF or NUL in a value is refused (it would start a header
    or end the value early); the other control characters are blanked as in a %h file."""
    return [
        (parse_header_name(name), blank_controls(check_header_value(value))[:MAX_HEADER_VALUE])
        for name, value in pairs
    ]


def _reply_code(outcome: ModuleResult) -> str | None:
    if outcome.reply_code is None or outcome.verdict not in ("reject", "tempfail"):
        return None
    return parse_reply_code(outcome.reply_code, "5" if outcome.verdict == "reject" else "4")


def _new_body(body: bytes | None, body_file: Path | None, work: MessageWork) -> Path | None:
    """The new body as a spool file the engine takes over: the module's bytes (line ends made
    CRLF), else a non-empty %n file (read as for programs: a removed one is no change). A spool
    that cannot take the bytes (full disk) raises SpoolError: the engine tempfails the
    message."""
    if body:
        path = work.temp_file("body")
        try:
            path.write_bytes(_LONE_LF.sub(b"\r\n", body))
        except OSError as exc:  # the half-written file goes with the message's other files
            raise SpoolError(f"cannot write the module's new body: {exc}") from exc
    elif body_file is not None and body_file_written(body_file):
        path = body_file
    else:
        return None
    work.release(path)
    return path
