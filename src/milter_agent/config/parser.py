"""Reading the configuration file: lines into raw sections of ``key = value`` entries, then
(through ``build``) into a ``Config``.

Syntax::

    # comment                      blank lines are ignored
    regex = yes                    global keys: before the first section, or in [Global]
    [Filter]                       section names are case-insensitive
    task_name = virus_check        bare value: up to a "#" that starts a word
    exec_cmd = "/bin/scan %f"      quoted value: "\\"" and "\\\\" are escapes, other "\\" stay

This module owns the file (open, shared lock, decode) and the line syntax; the meaning of the
keys is in ``build``.
"""

from __future__ import annotations

import fcntl
import os
import re
import stat
import time
from dataclasses import dataclass, field

from milter_agent.config.build import build_config
from milter_agent.config.keys import SECTION_TITLES
from milter_agent.config.model import Config, FileStamp
from milter_agent.config.options import CommandLine
from milter_agent.config.problems import Problems
from milter_agent.errors import ConfigError

#: How long to wait for a shared lock (-a) before giving up; a writer holding an exclusive
#: lock for longer than this is stuck, and the old configuration stays. The wait blocks the
#: calling thread: the daemon reads the file in a worker thread, never on its event loop.
LOCK_TIMEOUT = 5.0
_LOCK_POLL = 0.05

_SECTION = re.compile(r"\[([^\]]*)\]\s*(?:#.*)?")
_ENTRY = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*=(.*)")
_BARE_COMMENT = re.compile(r"(?:^|\s)#")
_NEEDS_ESCAPE = re.compile(r'"|\\(?=[\\"]|$)')


class ConfigLocked(ConfigError):
    """Another process held an exclusive lock on the file (-a) for the whole wait: the file's
    content is unknown, not wrong, so it is to be read again rather than refused."""


@dataclass(frozen=True)
class Entry:
    """One ``key = value`` line; ``key`` lower-cased, ``value`` unquoted."""

    key: str
    value: str
    line: int


@dataclass
class RawSection:
    """A section as written: kind ``global``, ``address`` or ``filter``; line 0 = before any."""

    kind: str
    line: int
    entries: list[Entry] = field(default_factory=list)


def parse_value(rest: str) -> str:
    """The value after ``=``: quoted (with ``\\"`` and ``\\\\`` escapes) or bare."""
    rest = rest.strip()
    if not rest.startswith('"'):
        comment = _BARE_COMMENT.search(rest)
        return (rest[: comment.start()] if comment else rest).strip()
    chars: list[str] = []
    pos = 1
    while pos < len(rest):
        char = rest[pos]
        if char == "\\" and rest[pos + 1 : pos + 2] in {'"', "\\"}:
            chars.append(rest[pos + 1])
            pos += 2
            continue
        if char == '"':
            tail = rest[pos + 1 :].strip()
            if tail and not tail.startswith("#"):
                raise ValueError(f"unexpected text after the closing quote: {tail!r}")
            return "".join(chars)
        chars.append(char)
        pos += 1
    raise ValueError("missing closing quote")


def quote_value(value: str) -> str:
    r"""The inverse of ``parse_value`` for any value without a line break.

    A backslash is doubled only where ``parse_value`` would read it as an escape (before
    ``\\``, ``"`` or the closing quote), so a regex such as ``home\.jp`` is written as is.
    """
    escaped = _NEEDS_ESCAPE.sub(r"\\\g<0>", value)
    return f'"{escaped}"'


def _bad_characters(text: str) -> bool:
    return any((ord(char) < 0x20 and char != "\t") or ord(char) == 0x7F for char in text)


def lex(text: str, problems: Problems) -> list[RawSection]:
    """Split the text into raw sections; syntax errors go to ``problems``."""
    sections = [RawSection("global", 0)]
    current: RawSection | None = sections[0]
    for number, raw_line in enumerate(text.split("\n"), start=1):
        line = raw_line.removesuffix("\r").strip()
        if not line or line.startswith("#"):
            continue
        if _bad_characters(line):
            problems.error(number, None, "control character in the line (is this a text file?)")
            continue
        section = _SECTION.fullmatch(line)
        if section:
            current = _open_section(section.group(1).strip(), number, problems)
            if current is not None:
                sections.append(current)
            continue
        entry = _ENTRY.fullmatch(line)
        if entry is None:
            problems.error(number, None, f"expected 'key = value' or '[Section]', got {line!r}")
            continue
        key = entry.group(1).lower()
        try:
            value = parse_value(entry.group(2))
        except ValueError as exc:
            problems.error(number, key, str(exc))
            continue
        if current is not None:  # entries of an unknown section were already reported
            current.entries.append(Entry(key, value, number))
    return sections


def _open_section(title: str, line: int, problems: Problems) -> RawSection | None:
    kind = title.lower()
    if kind in SECTION_TITLES:
        return RawSection(kind, line)
    known = ", ".join(f"[{name}]" for name in SECTION_TITLES.values())
    problems.error(line, None, f"unknown section [{title}] (known: {known}); its keys are ignored")
    return None


def parse_config_text(
    text: str,
    path: str = "<config>",
    command_line: CommandLine | None = None,
    *,
    stamp: FileStamp | None = None,
) -> Config:
    """Parse a whole configuration; raise ``ConfigErrors`` listing every error found."""
    problems = Problems(path)
    sections = lex(text.removeprefix("\ufeff"), problems)
    if len(sections) == 1 and not sections[0].entries and not problems.errors:
        problems.error(None, None, "no settings and no sections (empty or truncated file?)")
    settings, built = build_config(sections, command_line or CommandLine(), problems)
    problems.raise_if_any()
    return Config(
        settings=settings,
        sections=built,
        path=path,
        stamp=stamp,
        loaded_at=time.time(),
        warnings=tuple(problems.warnings),
    )


def load_config(
    path: str,
    command_line: CommandLine | None = None,
    *,
    lock: bool | None = None,
    lock_timeout: float = LOCK_TIMEOUT,
) -> Config:
    """Read and parse the file at ``path``.

    ``lock`` (default: the command line's -a) holds a shared ``flock`` while reading, so a
    writer that takes an exclusive lock is never read half-written; it is waited for up to
    ``lock_timeout`` seconds, then ``ConfigLocked`` is raised.
    """
    command_line = command_line or CommandLine()
    if lock is None:
        lock = command_line.settings.lock_config
    data, stamp = read_config_file(path, lock=lock, lock_timeout=lock_timeout)
    return parse_config_text(decode_config(data, path), path, command_line, stamp=stamp)


def read_config_file(
    path: str, *, lock: bool, lock_timeout: float = LOCK_TIMEOUT
) -> tuple[bytes, FileStamp]:
    """The file's bytes and its stamp, taken before reading: if a writer changes the file while
    we read, the stamp is older than the file and the next check reloads it."""
    try:
        # O_NONBLOCK: a FIFO put in the file's place must not hang the daemon in open();
        # anything but a regular file is refused right after.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            file = open(fd, "rb")  # noqa: SIM115 - closed by the with below
        except OSError:
            os.close(fd)  # a directory in the file's place: open(fd) refuses it
            raise
        with file:
            if lock:
                _lock_shared(file.fileno(), path, lock_timeout)
            info = os.fstat(file.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise ConfigError("not a regular file", path=path)
            stamp = FileStamp(info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)
            return file.read(), stamp
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror or exc}", path=path) from None


def _lock_shared(fd: int, path: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise ConfigLocked(
                    f"still locked by another process after {timeout:g}s", path=path
                ) from None
            time.sleep(_LOCK_POLL)


def decode_config(data: bytes, path: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ConfigError("not UTF-8 text (binary or garbage?)", path=path, line=line) from None
