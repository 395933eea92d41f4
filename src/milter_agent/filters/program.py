"""``[Filter]`` sections with ``exec_cmd``: run an external program on the spooled message.

The command line is a list of words (split like a shell at load time, never run by one); each
word expands to exactly one argument whatever the message contains. The program gets a clean
environment with the message facts in ``MILTER_*`` variables, stdin from /dev/null or the
message, the spool as working directory, and files for its reply (%r), new body (%n) and
headers (%h). Failures (cannot start, killed by a signal, timeout) raise :class:`FilterError`.
A spool that cannot take the filter's files (full disk) raises :class:`SpoolError` and no free
instance within the timeout :class:`~milter_agent.registry.NoFreeInstance`: the engine answers
both for every kind of filter, neither as the filter's error.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from milter_agent import procs, variables
from milter_agent.config.model import FilterSpec, Settings
from milter_agent.errors import FilterError
from milter_agent.filters.results import (
    FilterResult,
    body_file_written,
    header_file_changes,
    parse_header_lines,
    read_text,
    text_lines,
)
from milter_agent.registry import FilterState
from milter_agent.work import MessageWork, remove_file, variable_values

log = logging.getLogger("milter_agent.filters.program")

SAFE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_SUFFIX = {variables.REPLY_FILE: "reply", variables.BODY_FILE: "body", variables.HEADER_FILE: "hdr"}
_STDERR_LINES = 10
_NOTE_OUTPUT = 500


def program_environment(
    spec: FilterSpec, work: MessageWork, values: Mapping[str, str | Sequence[str]]
) -> dict[str, str]:
    """A minimal, clean environment plus the message facts."""

    def one(name: str) -> str:
        value = values.get(name, "")
        return value if isinstance(value, str) else "\n".join(value)

    return {
        "PATH": SAFE_PATH,
        "LANG": "C",
        "MILTER_FILTER": spec.name,
        "MILTER_FILE": one(variables.FILE),
        "MILTER_SENDER": one(variables.SENDER),
        "MILTER_RECIPIENT": one(variables.RECIPIENT),
        "MILTER_RECIPIENTS": one(variables.RECIPIENTS),
        "MILTER_QUEUE_ID": one(variables.QUEUE_ID),
        "MILTER_CLIENT_ADDR": one(variables.CLIENT_ADDR),
        "MILTER_CLIENT_NAME": one(variables.CLIENT_NAME),
        "MILTER_HELO": one(variables.HELO),
        "MILTER_SUBJECT": one(variables.SUBJECT),
        "MILTER_AUTH_AUTHEN": one(variables.AUTH_AUTHEN),
        "MILTER_SIZE": str(work.message.size),
    }


async def run_program_filter(
    spec: FilterSpec, work: MessageWork, state: FilterState, settings: Settings
) -> FilterResult:
    files = {name: work.temp_file(_SUFFIX[name]) for name in spec.required_files}
    current = work.current_file()
    values = variable_values(work, {variables.FILE: current, **files} if current else files)
    argv = variables.expand_all(spec.argv, values)
    try:
        async with state.slot(spec.timeout):
            result = await procs.run_program(
                argv,
                env=program_environment(spec, work, values),
                cwd=str(work.spool.directory),
                stdin_path=str(current) if spec.stdin == "message" and current else None,
                timeout=spec.timeout,
                kill=settings.allow_kill_program,
                kill_grace=settings.kill_grace,
                on_exit=lambda: _remove(files.values()),
            )
    except procs.SpawnError as exc:
        raise FilterError(str(exc)) from None
    _log_stderr(spec.name, result.stderr)
    return _interpret(spec, result, files, work, state)


def _interpret(
    spec: FilterSpec,
    result: procs.ProcessResult,
    files: Mapping[str, Path],
    work: MessageWork,
    state: FilterState,
) -> FilterResult:
    if result.timed_out:
        state.timeouts += 1
        if result.killed:
            state.kills += 1
            raise FilterError(f"timed out after {spec.timeout:g}s and was killed")
        raise FilterError(f"timed out after {spec.timeout:g}s; left running, no verdict")
    if result.signal is not None:
        raise FilterError(f"killed by signal {signal.Signals(result.signal).name}")
    assert result.returncode is not None
    verdict = spec.verdict_for(result.returncode)
    text = text_lines(read_text(files.get(variables.REPLY_FILE)))
    if not text:
        first = result.stdout.decode("utf-8", "surrogateescape").split("\n", 1)[0]
        text = text_lines(first)
    outcome = FilterResult(verdict, text, note=_note(result))
    body = files.get(variables.BODY_FILE)
    if body is not None and body_file_written(body):
        work.release(body)
        outcome.new_body = body
    headers, problems = parse_header_lines(read_text(files.get(variables.HEADER_FILE)))
    outcome.headers, outcome.add_headers = header_file_changes(
        headers, lambda name: work.header(name) is not None
    )
    for problem in problems:
        log.warning("filter %s: header file %s", spec.name, problem)
    return outcome


def _remove(paths: Iterable[Path]) -> None:
    """Remove a left-running program's files again once it ends (it may have written them
    after its message was done and they were removed)."""
    for path in paths:
        remove_file(path)


def _note(result: procs.ProcessResult) -> str:
    """Exit code and the start of the output, for the offline test and the control socket."""
    parts = [f"exit {result.returncode}"]
    for name, data in (("stdout", result.stdout), ("stderr", result.stderr)):
        text = data[:_NOTE_OUTPUT].decode("utf-8", "replace").strip()
        if text:
            parts.append(f"{name}: {text}")
    return "; ".join(parts)


def _log_stderr(name: str, stderr: bytes) -> None:
    lines = stderr.decode("utf-8", "replace").splitlines()
    for line in lines[:_STDERR_LINES]:
        log.info("filter %s: stderr: %s", name, line[:500])
    if len(lines) > _STDERR_LINES:
        log.info("filter %s: stderr: (%d more lines)", name, len(lines) - _STDERR_LINES)
