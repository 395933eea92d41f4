"""What a message filter hands back, and how its texts become replies and header changes.

Shared by program and module filters: an exit-code-like verdict, an optional text (the SMTP
reply for reject/tempfail), an optional new body and header lines ``Name: value``. Module
filters may also set the reply code, add or remove headers and add or remove recipients.
"""

from __future__ import annotations

import logging
import re
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from milter_agent.config.model import FilterSpec, Verdict
from milter_agent.errors import FilterError, SpoolError
from milter_agent.pipeline import Reply
from milter_agent.protocol import sanitize_line, valid_header_name

log = logging.getLogger("milter_agent.filters")

MAX_TEXT = 16 * 1024
MAX_REPLY_LINES = 32
MAX_HEADER_VALUE = 8 * 1024


@dataclass(slots=True)
class FilterResult:
    verdict: Verdict
    text: tuple[str, ...] = ()
    new_body: Path | None = None
    headers: list[tuple[str, str]] = field(default_factory=list)
    note: str = ""
    reply_code: str | None = None  # overrides the filter's reject_code / tempfail_code
    add_headers: list[tuple[str, str]] = field(default_factory=list)
    remove_headers: list[str] = field(default_factory=list)
    add_recipients: list[str] = field(default_factory=list)
    remove_recipients: list[str] = field(default_factory=list)


#: The reply when the spool cannot take a filter's files or the rewritten message (a full
#: disk): 452 4.3.1 "insufficient system storage", so the client retries later.
SPOOL_FULL_CODE = "452 4.3.1"
SPOOL_FULL_TEXT = "Insufficient system storage, try again later"


def spool_failed(filter_name: str, queue_id: str, exc: SpoolError) -> FilterResult:
    """The message is tempfailed when the spool fails under a filter (full disk, I/O error).

    Not the filter's fault, so not a filter error toward its threshold: the run is counted
    with the verdict tempfail and the reason logged, and the MTA keeps the message.
    """
    log.warning("%s: filter %s: %s; message tempfailed", queue_id, filter_name, exc)
    return FilterResult(
        "tempfail", (SPOOL_FULL_TEXT,), note=f"spool error: {exc}", reply_code=SPOOL_FULL_CODE
    )


def read_text(path: Path | None) -> str:
    """A filter's output file as text (bounded); empty if absent.

    A filter may remove its own file (``rm -f %r``): that is "nothing written", not an
    error. A file that is there but cannot be read (a directory, no permission) is the
    filter's failure.
    """
    if path is None:
        return ""
    try:
        with open(path, "rb") as f:
            return f.read(MAX_TEXT).decode("utf-8", "surrogateescape")
    except FileNotFoundError:
        return ""
    except OSError as exc:
        raise FilterError(f"cannot read its output file {path.name}: {exc.strerror}") from None


def body_file_written(path: Path) -> bool:
    """True if the filter wrote a new body into its ``%n`` file: a non-empty regular file.
    Removed or left empty means no change; anything else would be streamed to the MTA as the
    body, so it is the filter's failure."""
    try:
        info = path.stat()
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise FilterError(f"cannot read its body file {path.name}: {exc.strerror}") from None
    if not stat.S_ISREG(info.st_mode):
        raise FilterError(f"its body file {path.name} is not a regular file")
    return info.st_size > 0


def lines_of(text: str) -> list[str]:
    """Lines split at LF only (one CR before it dropped). ``str.splitlines`` would also break
    at form feed, NEL, U+2028 and the like, so message data a filter echoes into its output
    could start a header of its own; those stay inside the line and are blanked later."""
    return [line.removesuffix("\r") for line in text.split("\n")]


def text_lines(text: str) -> tuple[str, ...]:
    """Reply lines from free text: sanitised, blank lines dropped, at most 32."""
    lines = (sanitize_line(line) for line in lines_of(text))
    return tuple(line for line in lines if line)[:MAX_REPLY_LINES]


def parse_header_lines(text: str) -> tuple[list[tuple[str, str]], list[str]]:
    """``Name: value`` lines (continuations start with white space) -> headers, problems."""
    headers: list[tuple[str, str]] = []
    problems: list[str] = []
    for number, raw in enumerate(lines_of(text), 1):
        line = blank_controls(raw)
        if not line.strip():
            continue
        if line[0] in " \t" and headers:
            name, value = headers[-1]
            headers[-1] = (name, f"{value}\r\n\t{line.strip()}")
            continue
        name, sep, value = line.partition(":")
        name = name.strip()
        if not sep or not valid_header_name(name):
            problems.append(f"line {number}: not a 'Name: value' header line")
            continue
        headers.append((name, value.strip()))
    return [(n, v[:MAX_HEADER_VALUE]) for n, v in headers], problems


def header_file_changes(
    headers: list[tuple[str, str]], present: Callable[[str], bool]
) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """What the lines of a ``%h`` file do, as (headers to set, headers to add, in file order).

    The first line of a name the message has (``present``) sets its first header of that
    name; every other line adds a header. So a filter can replace an upstream
    ``X-Virus-Scanned:`` and add a second one of its own, or write two ``Received-SPF:``
    lines. An empty value removes on a setting line and adds nothing on an adding one.
    """
    set_: list[tuple[str, str]] = []
    add: list[tuple[str, str]] = []
    seen: set[str] = set()
    for name, value in headers:
        if name.lower() not in seen and present(name):
            set_.append((name, value))
        elif value:
            add.append((name, value))
        seen.add(name.lower())
    return set_, add


def blank_controls(text: str) -> str:
    """``text`` with every control character but tab (C0, DEL, C1 such as NEL, and the Unicode
    line and paragraph separators) made a space: in a header value the MTA would pass them on
    raw, and a mail reader may take some of them for line breaks."""
    return _CONTROLS.sub(" ", text)


_CONTROLS = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]")
_CODE = re.compile(r"\s*([45]\d\d)(?:\s+([45]\.\d{1,3}\.\d{1,3}))?\s*$")


def make_reply(
    spec: FilterSpec, verdict: Verdict, text: tuple[str, ...], code: str | None = None
) -> Reply | None:
    """The SMTP reply for a reject or tempfail: the filter's text, else the configured one;
    ``code`` (checked by the caller) overrides the configured code."""
    if verdict == "reject":
        configured_code, configured = spec.reject_code, spec.reject_message
    elif verdict == "tempfail":
        configured_code, configured = spec.tempfail_code, spec.tempfail_message
    else:
        return None
    code = code or configured_code
    lines = text or text_lines(configured or "")
    match = _CODE.match(code)
    if match is None:  # validated at load; never trust it blindly
        return None
    return Reply(match.group(1), match.group(2), lines)
