"""Conditions of a section: address and subject lists (exact match first, then POSIX regex search)
and cron time expressions.

Pure matching. It knows nothing of configuration files, sections or messages: the parser builds
these objects (a bad regex or cron expression is a ``PatternError`` the parser turns into a
file:line error) and the pipeline calls ``matches``.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

import regex  # type: ignore[import-untyped, unused-ignore]
from cronsim import CronSim, CronSimError

#: A regex search slower than this raises TimeoutError, so that a pathological pattern and a
#: hostile Subject cannot stall the daemon; the caller decides the answer (the session turns
#: any pipeline exception into default_action).
REGEX_TIMEOUT = 0.5

#: Characters that make a list item a regular expression. "." is left out on purpose: every
#: address has one, and treating "test@home.jp" as a pattern would let it match "test@homexjp".
REGEX_METACHARS = frozenset("^$*+?()[]{}|\\")

#: RFC 5321 limits a path to 256 octets; 320 (64 + 1 + 255) is the lenient classic bound.
MAX_ADDRESS_BYTES = 320

_UNSUPPORTED_BRACKET = "collating elements [. .] and equivalence classes [= =] are not supported"


class PatternError(ValueError):
    """A list item, regex or cron expression is invalid."""


class _Pattern(Protocol):
    def search(self, string: str, *, timeout: float | None = ...) -> object | None: ...


def has_regex_metachars(item: str) -> bool:
    """True when ``item`` is meant as a regular expression (in regex mode)."""
    return not REGEX_METACHARS.isdisjoint(item)


def translate_posix_ere(pattern: str) -> str:
    """Rewrite the BSD/GNU word-boundary forms the ``regex`` package spells differently.

    ``[[:<:]]`` and ``\\<`` become ``\\m`` (start of word), ``[[:>:]]`` and ``\\>`` become ``\\M``.
    Collating elements and equivalence classes would silently mean something else, so they
    are refused. Everything else is passed through unchanged.
    """
    out: list[str] = []
    pos = 0
    while pos < len(pattern):
        if pattern.startswith(("[[:<:]]", "[[:>:]]"), pos):
            out.append("\\m" if pattern[pos + 3] == "<" else "\\M")
            pos += 7
        elif pattern[pos] == "\\":
            pair = pattern[pos : pos + 2]
            out.append({"\\<": "\\m", "\\>": "\\M"}.get(pair, pair))
            pos += 2
        elif pattern[pos] == "[":
            end = _bracket_end(pattern, pos)
            out.append(pattern[pos:end])
            pos = end
        else:
            out.append(pattern[pos])
            pos += 1
    return "".join(out)


def _bracket_end(pattern: str, start: int) -> int:
    """Index just past the bracket expression opening at ``start`` (or the end of the string)."""
    pos = start + 1
    if pattern.startswith("^", pos):
        pos += 1
    if pattern.startswith("]", pos):
        pos += 1  # a leading "]" is a literal member, as POSIX says
    while pos < len(pattern):
        if pattern.startswith(("[.", "[="), pos):
            raise PatternError(_UNSUPPORTED_BRACKET)
        if pattern.startswith("[:", pos):
            close = pattern.find(":]", pos + 2)
            pos = len(pattern) if close < 0 else close + 2
        elif pattern[pos] == "\\":
            pos += 2  # the regex package escapes inside brackets (POSIX would not)
        elif pattern[pos] == "]":
            return pos + 1
        else:
            pos += 1
    return len(pattern)


def compile_posix_ere(pattern: str) -> _Pattern:
    """Compile a POSIX extended regular expression, case-insensitive, for ``search``."""
    try:
        compiled: _Pattern = regex.compile(translate_posix_ere(pattern), regex.IGNORECASE)
    except regex.error as exc:
        raise PatternError(f"bad regular expression {pattern!r}: {exc}") from None
    return compiled


def _compile_items(items: Iterable[str]) -> tuple[_Pattern, ...]:
    """Compile every item that looks like a regex, reporting every bad one at once."""
    patterns: list[_Pattern] = []
    problems: list[str] = []
    for item in items:
        if not has_regex_metachars(item):
            continue
        try:
            patterns.append(compile_posix_ere(item))
        except PatternError as exc:
            problems.append(str(exc))
    if problems:
        raise PatternError("; ".join(problems))
    return tuple(patterns)


def normalize_address(address: str) -> str:
    """Strip blanks and angle brackets, lower-case the domain (the local part stays exact)."""
    bare = address.strip()
    if bare.startswith("<") and bare.endswith(">"):
        bare = bare[1:-1].strip()
    local, at, domain = bare.rpartition("@")
    return f"{local}@{domain.lower()}" if at else bare


def list_items(text: str) -> list[str]:
    """The items of a space-separated list value, split at ASCII spaces and tabs only.

    ``str.split()`` would also split at NEL (U+0085), NBSP and the other Unicode spaces, so
    ``a\x85b@x`` would become the two valid items ``a`` and ``b@x``; kept whole, such an item
    is refused (addresses) or simply never matches.
    """
    return [item for item in _LIST_SEPARATOR.split(text) if item]


def check_address(address: str) -> str:
    """Validate an address the daemon will give to the MTA; return it without angle brackets.

    A simple RFC 5321 mailbox: a local part (atoms and dots, or a quoted string) and an
    optional ``@domain`` (names, or an address literal in ``[]``). Bare local parts (``user3``)
    are valid: the MTA qualifies them. Non-ASCII letters are allowed (SMTPUTF8); controls,
    format characters and spaces of any kind are not.
    """
    if not address:
        raise PatternError("empty address")
    bad = next((c for c in address if unicodedata.category(c) in _NOT_IN_ADDRESS), None)
    if bad is not None:
        raise PatternError(f"{address!r} contains a space or control character (U+{ord(bad):04X})")
    if len(address.encode()) > MAX_ADDRESS_BYTES:
        raise PatternError(f"address longer than {MAX_ADDRESS_BYTES} bytes")
    bare = address[1:-1] if address.startswith("<") and address.endswith(">") else address
    if "<" in bare or ">" in bare:
        raise PatternError(f"{address!r} has unbalanced or misplaced angle brackets")
    local, at, domain = bare.rpartition("@") if "@" in bare else (bare, "", "")
    if not bare or (at and (not local or not domain)):
        raise PatternError(f"{address!r} is not an address")
    problem = _local_part_problem(local) or (_domain_problem(domain) if at else None)
    if problem:
        raise PatternError(f"{address!r} is not an address: {problem}")
    return bare


#: Unicode categories that make no sense in an address: controls (C0, DEL and C1 such as NEL
#: U+0085 or CSI U+009B), format characters (zero-width, direction marks), surrogates (bytes
#: that were not UTF-8) and every kind of space, NBSP included.
_NOT_IN_ADDRESS = frozenset({"Cc", "Cf", "Cs", "Zs", "Zl", "Zp"})
#: RFC 5322 specials: outside quotes and address literals they end or break an address
#: (``x,y@x`` is a list of two, ``a(b@x`` opens a comment, which an envelope cannot have).
_SPECIALS = frozenset('()<>[]:;@\\,"')
_LIST_SEPARATOR = re.compile(r"[ \t]+")


def _local_part_problem(local: str) -> str | None:
    if not local.startswith('"'):
        special = next((c for c in local if c in _SPECIALS), None)
        return f"{special!r} in the local part must be quoted" if special else None
    pos = 1
    while pos < len(local) - 1:  # inside: a backslash escapes the next character, " ends
        if local[pos] == '"':
            break
        pos += 2 if local[pos] == "\\" else 1
    if len(local) < 2 or pos != len(local) - 1 or not local.endswith('"'):
        return "unbalanced quotes in the local part"
    return None


def _domain_problem(domain: str) -> str | None:
    if domain.startswith("["):
        inside = domain[1:-1] if domain.endswith("]") else None
        if not inside or any(c in "[]\\" for c in inside):
            return "an address literal needs one [ and one ] around a non-empty text"
        return None
    special = next((c for c in domain if c in _SPECIALS), None)
    if special:
        return f"{special!r} in the domain"
    return "empty label in the domain" if not all(domain.split(".")) else None


@dataclass(frozen=True)
class _MatchList:
    """Items tried exactly first; with ``regex`` on, items with metacharacters are also searched."""

    items: tuple[str, ...]
    regex: bool = False
    _patterns: tuple[_Pattern, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.items:
            raise PatternError("empty list")
        if not all(self.items):
            raise PatternError("empty list item")
        object.__setattr__(self, "_patterns", _compile_items(self.items) if self.regex else ())

    @property
    def regex_like_items(self) -> tuple[str, ...]:
        """Items that would be regexes in regex mode (for "regex mode is off" warnings)."""
        return tuple(item for item in self.items if has_regex_metachars(item))

    def matches(self, value: str) -> bool:
        if self._matches_exactly(value):
            return True
        target = self._search_target(value)
        return any(p.search(target, timeout=REGEX_TIMEOUT) is not None for p in self._patterns)

    def matches_any(self, values: Iterable[str]) -> bool:
        return any(self.matches(value) for value in values)

    def _matches_exactly(self, value: str) -> bool:
        raise NotImplementedError

    def _search_target(self, value: str) -> str:
        raise NotImplementedError


@dataclass(frozen=True)
class AddressList(_MatchList):
    """A list of envelope addresses.

    Exact: angle brackets stripped, domain case-insensitive, local part exact; an item without
    ``@`` is a local part and matches it at any domain; an item ``@domain`` matches every
    address at that domain (not its subdomains). Regex: case-insensitive search in the address
    without angle brackets (the null sender is the empty string, matched by ``^$``).
    """

    _exact: frozenset[str] = field(init=False, repr=False, compare=False)
    _local_parts: frozenset[str] = field(init=False, repr=False, compare=False)
    _domains: frozenset[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        if "@" in self.items:
            raise PatternError("'@' alone is not an address: write @domain for a whole domain")
        exact = frozenset(map(normalize_address, self.items))
        object.__setattr__(self, "_exact", exact)
        object.__setattr__(self, "_local_parts", frozenset(i for i in exact if "@" not in i))
        domains = frozenset(i[1:] for i in exact if i.startswith("@") and "@" not in i[1:])
        object.__setattr__(self, "_domains", domains)

    @property
    def domain_like_items(self) -> tuple[str, ...]:
        """Items without ``@`` that look like a domain (for "did you mean @domain" warnings):
        they match only that local part, which is rarely what was meant."""
        return tuple(
            item
            for item in self.items
            if "@" not in item and "." in item and not (self.regex and has_regex_metachars(item))
        )

    def _matches_exactly(self, value: str) -> bool:
        address = normalize_address(value)
        local, at, domain = address.rpartition("@")
        if address in self._exact:
            return True
        return bool(at) and (local in self._local_parts or domain in self._domains)

    def _search_target(self, value: str) -> str:
        bare = value.strip()
        return bare[1:-1] if bare.startswith("<") and bare.endswith(">") else bare


@dataclass(frozen=True)
class SubjectList(_MatchList):
    """A list of subjects; each item is a whole string (spaces included).

    Exact: equal after stripping surrounding blanks, case-sensitive. Regex: case-insensitive search.
    """

    def _matches_exactly(self, value: str) -> bool:
        return value.strip() in self.items

    def _search_target(self, value: str) -> str:
        return value.strip()


@dataclass(frozen=True)
class CronExpression:
    """A five-field cron expression; ``matches`` tells whether a given minute is selected.

    Fields: minute hour day-of-month month day-of-week, with ``*``, ranges, lists, steps and
    names (jan-dec, sun-sat). As in Vixie/Debian cron, when both day fields are restricted a
    day matches if either does. Evaluated in local time at minute resolution.
    """

    text: str
    _sim: CronSim = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        fields = list_items(self.text)  # a NEL or NBSP does not separate two fields
        if len(fields) != 5:
            raise PatternError(f"cron expression {self.text!r} must have five fields")
        normalized = " ".join(fields)
        try:
            sim = CronSim(normalized, datetime(2000, 1, 1))
        except CronSimError as exc:
            raise PatternError(f"bad cron expression {self.text!r}: {exc}") from None
        object.__setattr__(self, "text", normalized)
        object.__setattr__(self, "_sim", sim)

    def matches(self, when: datetime) -> bool:
        """True if the minute of ``when`` (aware: converted to local time; naive: local) matches."""
        local = when.astimezone().replace(tzinfo=None) if when.tzinfo else when
        sim = self._sim
        return (
            local.minute in sim.minutes
            and local.hour in sim.hours
            and local.month in sim.months
            and sim.match_day(local.date())
        )


def any_matches(expressions: Iterable[CronExpression], when: datetime) -> bool:
    return any(expression.matches(when) for expression in expressions)
