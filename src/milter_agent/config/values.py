"""Converters between configuration text and typed values, shared by the file parser, the
command line and the renderer.

Each ``parse_*`` takes the text of one value and returns the typed value or raises ValueError
with a short human reason (the caller adds file:line and the key). Each ``format_*`` is the
inverse, producing text that parses back to an equal value.
"""

from __future__ import annotations

import math
import re
import shlex
from collections.abc import Iterable

from milter_agent.conditions import list_items
from milter_agent.errors import ConfigError
from milter_agent.socketspec import parse_socket_spec

_TRUE = frozenset({"yes", "true", "on", "1"})
_FALSE = frozenset({"no", "false", "off", "0"})
_SIZE_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}
_SIZE = re.compile(r"(\d+)\s*([kmg]?)", re.IGNORECASE)
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_ACCOUNT = re.compile(r"[A-Za-z0-9_.][A-Za-z0-9_.-]*\$?")
_REPLY_CODE = re.compile(r"([245])\d\d(?: ([245])\.\d{1,3}\.\d{1,3})?")
_HEADER_NAME = re.compile(r"[!-9;-~]+")  # RFC 5322 ftext: printable ASCII except ":"
_PORT_MAX = 65535


def parse_bool(text: str) -> bool:
    word = text.strip().lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise ValueError(f"expected yes/no (or true/false, on/off, 1/0), got {text!r}")


def format_bool(value: bool) -> str:
    return "yes" if value else "no"


def parse_int(text: str, *, minimum: int = 0, maximum: int | None = None) -> int:
    try:
        value = int(text.strip(), 10)
    except ValueError:
        raise ValueError(f"expected a whole number, got {text!r}") from None
    if value < minimum or (maximum is not None and value > maximum):
        upper = f" and {maximum}" if maximum is not None else ""
        bound = f"between {minimum}{upper}" if upper else f"at least {minimum}"
        raise ValueError(f"must be {bound}, got {value}")
    return value


def parse_count(text: str) -> int:
    """A non-negative whole number."""
    return parse_int(text)


def parse_seconds(text: str) -> float:
    """A non-negative number of seconds (fractions allowed)."""
    try:
        value = float(text.strip())
    except ValueError:
        raise ValueError(f"expected a number of seconds, got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"must be a finite number of seconds, 0 or more, got {text!r}")
    return value


def parse_positive_seconds(text: str) -> float:
    value = parse_seconds(text)
    if value == 0:
        raise ValueError("must be more than 0 seconds")
    return value


def format_number(value: float) -> str:
    """``60.0`` as ``60``, ``0.25`` as ``0.25``; always parses back to the same float."""
    return str(int(value)) if float(value).is_integer() else repr(value)


def parse_octal_mode(text: str) -> int:
    word = text.strip().lower().removeprefix("0o")
    try:
        value = int(word, 8)
    except ValueError:
        raise ValueError(f"expected an octal file mode such as 0660, got {text!r}") from None
    if not 0 <= value <= 0o777:
        raise ValueError(f"file mode must be between 000 and 0777, got {text!r}")
    return value


def format_octal_mode(value: int) -> str:
    return f"0{value:03o}"


def parse_socket(text: str) -> str:
    """A milter socket spec in any spelling ``socketspec`` accepts; kept as written."""
    try:
        parse_socket_spec(text)
    except ConfigError as exc:
        raise ValueError(exc.reason) from None
    return text.strip()


def _check_port(port: str, text: str) -> None:
    if not port.isdigit() or not 1 <= int(port) <= _PORT_MAX:
        raise ValueError(f"bad port in {text!r} (1-{_PORT_MAX})")


def parse_host_port(text: str) -> str:
    """``host:port`` or ``[v6addr]:port`` (host may be empty for all addresses)."""
    spec = text.strip()
    host, colon, port = spec.rpartition(":")
    if not colon or (":" in host and not (host.startswith("[") and host.endswith("]"))):
        raise ValueError(f"expected host:port (IPv6 as [addr]:port), got {text!r}")
    _check_port(port, text)
    return spec


def parse_absolute_path(text: str) -> str:
    path = text.strip()
    if not path.startswith("/"):
        raise ValueError(f"expected an absolute path, got {text!r}")
    return path


def parse_account(text: str) -> str:
    """A user or group name, or a numeric id."""
    name = text.strip()
    if not _ACCOUNT.fullmatch(name):
        raise ValueError(f"expected a user or group name, got {text!r}")
    return name


def parse_name(text: str) -> str:
    """A section (task) name: it shows in logs, ma-client output and metric labels."""
    name = text.strip()
    if not _NAME.fullmatch(name):
        raise ValueError(
            f"expected 1-64 letters, digits, '_', '.', '-' (starting with a letter or digit), "
            f"got {text!r}"
        )
    return name


def parse_choice(text: str, choices: Iterable[str]) -> str:
    word = text.strip().lower()
    allowed = tuple(choices)
    if word not in allowed:
        raise ValueError(f"expected one of {', '.join(allowed)}, got {text!r}")
    return word


def parse_command(text: str) -> tuple[str, ...]:
    """A command line split like sh splits words (quotes respected, nothing expanded)."""
    try:
        words = tuple(shlex.split(text, posix=True))
    except ValueError as exc:
        raise ValueError(f"cannot split the command line: {exc}") from None
    if not words:
        raise ValueError("empty command")
    return words


def format_command(words: Iterable[str]) -> str:
    return " ".join(shlex.quote(word) for word in words)


def parse_size(text: str) -> int:
    """Bytes, with an optional binary suffix k/K, m/M, g/G (1k = 1024)."""
    match = _SIZE.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"expected a size in bytes such as 500k or 10M, got {text!r}")
    return int(match.group(1)) * _SIZE_UNITS[match.group(2).lower()]


def format_size(value: int) -> str:
    """Bytes with the largest suffix that divides them exactly (``256M``), for parse_size."""
    for suffix in ("g", "m", "k"):
        unit = _SIZE_UNITS[suffix]
        if value and value % unit == 0:
            return f"{value // unit}{suffix.upper()}"
    return str(value)


def parse_positive_size(text: str) -> int:
    size = parse_size(text)
    if size == 0:
        raise ValueError("must be more than 0 bytes")
    return size


def parse_exit_codes(text: str) -> frozenset[int]:
    """Space-separated exit codes 0-255; ``a-b`` is a range. Split like every list value (at
    ASCII blanks only), so ``1\x852`` is a bad code, not the two codes 1 and 2."""
    codes: set[int] = set()
    for word in list_items(text):
        low, dash, high = word.partition("-")
        first = parse_int(low, maximum=255)
        last = parse_int(high, maximum=255) if dash else first
        if last < first:
            raise ValueError(f"empty range {word!r}")
        codes.update(range(first, last + 1))
    if not codes:
        raise ValueError("no exit codes given")
    return frozenset(codes)


def format_exit_codes(codes: Iterable[int]) -> str:
    return " ".join(str(code) for code in sorted(codes))


def parse_reply_code(text: str, status_class: str) -> str:
    """``550`` or ``550 5.7.1``: the first digit must be ``status_class`` (and match the enhanced
    code's class), because the MTA refuses a reply whose classes disagree."""
    code = " ".join(text.split())
    match = _REPLY_CODE.fullmatch(code)
    if match is None:
        raise ValueError(f"expected an SMTP reply code such as {status_class}xx {status_class}.7.1")
    if match.group(1) != status_class or match.group(2) not in {None, status_class}:
        raise ValueError(f"reply code {code!r} must be of class {status_class}")
    return code


def parse_reply_text(text: str) -> str:
    """A reply message: one line of printable text (the MTA puts it in an SMTP reply)."""
    message = text.strip()
    if not message:
        raise ValueError("empty message")
    if any(ord(char) < 0x20 or ord(char) == 0x7F for char in message):
        raise ValueError("the message must not contain control characters")
    return message


def parse_header_name(text: str) -> str:
    name = text.strip()
    if not _HEADER_NAME.fullmatch(name):
        raise ValueError(f"{text!r} is not a header field name (printable ASCII, no ':' or space)")
    return name


def check_header_value(text: str) -> str:
    if any(char in text for char in "\r\n\0"):
        raise ValueError("a header value must not contain CR, LF or NUL")
    return text
