"""Giving meaning to raw sections: global settings, ``[Address]`` rules and ``[Filter]`` specs.

Every problem is recorded (file:line, key, reason) and building goes on, so one pass reports
all errors. Things that are valid but will have no effect (a recipient change without -A, a
regex-looking item with regex mode off) become warnings.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from difflib import get_close_matches
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from milter_agent.conditions import (
    AddressList,
    CronExpression,
    PatternError,
    SubjectList,
    check_address,
    list_items,
)
from milter_agent.config import values as v
from milter_agent.config.keys import SECTION_KEYS, SECTION_TITLES, SETTINGS
from milter_agent.config.model import (
    WORKER_MAX_FDS,
    WORKER_MAX_MESSAGES,
    WORKER_MAX_RSS,
    AddressRule,
    FilterSpec,
    HeaderTemplate,
    Section,
    Settings,
)
from milter_agent.config.options import CommandLine
from milter_agent.config.problems import Problems
from milter_agent.variables import (
    BODY_FILE,
    HEADER_FILE,
    NOT_IN_HEADERS,
    ArgTemplate,
    parse_template,
)

if TYPE_CHECKING:
    from milter_agent.config.parser import Entry, RawSection

T = TypeVar("T")

_KIND_KEYS: Mapping[str, Mapping[str, bool]] = {
    "global": dict.fromkeys(SETTINGS, False),
    **SECTION_KEYS,
}
_WORKER_LIMIT_KEYS = (
    "module_worker_max_messages",
    "module_worker_max_rss",
    "module_worker_max_fds",
)
_EXIT_CODE_KEYS = (
    "reject_exit_codes",
    "tempfail_exit_codes",
    "accept_exit_codes",
    "discard_exit_codes",
)


class _Reader:
    """The entries of one section grouped by key, after checking each key belongs there."""

    def __init__(self, kind: str, line: int, entries: Sequence[Entry], problems: Problems) -> None:
        self.kind = kind
        self.section_line = line
        self.all_entries = entries
        self.problems = problems
        self.groups: dict[str, list[Entry]] = {}
        allowed = _KIND_KEYS[kind]
        for entry in entries:
            if entry.key not in allowed:
                problems.error(entry.line, entry.key, _misplaced(entry.key, kind))
                continue
            group = self.groups.setdefault(entry.key, [])
            if group and not allowed[entry.key]:
                first = group[0].line
                problems.error(entry.line, entry.key, f"given twice (first at line {first})")
                continue
            group.append(entry)

    def entries(self, key: str) -> list[Entry]:
        return self.groups.get(key, [])

    def line(self, key: str) -> int:
        entries = self.entries(key)
        return entries[0].line if entries else self.section_line

    def error(self, key: str | None, message: str) -> None:
        self.problems.error(self.line(key) if key else self.section_line, key, message)

    def warn(self, key: str, message: str) -> None:
        self.problems.warn(self.line(key), key, message)

    def convert(self, entry: Entry, parse: Callable[[str], T]) -> T | None:
        try:
            return parse(entry.value)
        except ValueError as exc:  # PatternError and VariableError are ValueErrors too
            self.problems.error(entry.line, entry.key, str(exc))
            return None

    def one(self, key: str, parse: Callable[[str], T]) -> T | None:
        entries = self.entries(key)
        return self.convert(entries[0], parse) if entries else None

    def get(self, key: str, parse: Callable[[str], T], default: T) -> T:
        value = self.one(key, parse)
        return default if value is None else value


def _misplaced(key: str, kind: str) -> str:
    """Why ``key`` is not allowed in a ``kind`` section, with the nearest known key."""
    if key in SETTINGS:
        return "is a global setting: put it before the first section or in [Global]"
    homes = [SECTION_TITLES[other] for other, keys in SECTION_KEYS.items() if key in keys]
    if homes:
        return "belongs in " + " or ".join(f"[{home}]" for home in homes) + " sections"
    close = get_close_matches(key, list(_KIND_KEYS[kind]), n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]}?)" if close else ""
    return f"unknown key in [{SECTION_TITLES[kind]}]{hint}"


def build_config(
    sections: Sequence[RawSection], command_line: CommandLine, problems: Problems
) -> tuple[Settings, tuple[Section, ...]]:
    """Settings first (the file, then explicit options over it), then the sections, which
    depend on them (regex mode decides how lists compile)."""
    settings = command_line.apply(_file_settings(sections, problems))
    _check_unique_names(sections, problems)
    built: list[Section] = []
    address_number = 0
    for raw in sections:
        if raw.kind == "global":
            continue
        reader = _Reader(raw.kind, raw.line, raw.entries, problems)
        if raw.kind == "address":
            address_number += 1
            section: Section | None = _build_address(reader, settings, address_number)
        else:
            section = _build_filter(reader, settings)
        if section is not None:
            built.append(section)
    return settings, tuple(built)


def _file_settings(sections: Sequence[RawSection], problems: Problems) -> Settings:
    entries = [entry for raw in sections if raw.kind == "global" for entry in raw.entries]
    reader = _Reader("global", 0, entries, problems)
    given: dict[str, Any] = {}
    for name, key in SETTINGS.items():
        value = reader.one(name, key.parse)
        if value is not None:
            given[name] = value
    return replace(Settings(), **given)


def _check_unique_names(sections: Sequence[RawSection], problems: Problems) -> None:
    """From the raw entries, so a duplicate is reported even when a section has other errors
    (which keep it from being built): every error of the file shows in one pass."""
    seen: dict[str, int] = {}
    address_number = 0
    for raw in sections:
        address_number += raw.kind == "address"
        name, line = _raw_name(raw, address_number)
        if name is None:
            continue
        if name in seen:
            message = f"{name!r} is already used by the section at line {seen[name]}"
            problems.error(line, "task_name", message)
        seen.setdefault(name, raw.line)


def _raw_name(raw: RawSection, address_number: int) -> tuple[str | None, int]:
    """A section's name and where it is given; an [Address] without one gets address-N."""
    given = next((entry for entry in raw.entries if entry.key == "task_name"), None)
    if given is not None:
        try:
            return v.parse_name(given.value), given.line
        except ValueError:
            return None, given.line  # reported as a bad name by the section itself
    if raw.kind == "address":
        return f"address-{address_number}", raw.line
    return None, raw.line


# --- [Address] -------------------------------------------------------------------------------


def _build_address(r: _Reader, settings: Settings, number: int) -> AddressRule | None:
    errors_before = len(r.problems.errors)
    add_headers = _header_pairs(r, "add_header_name", "add_header_value")
    change_headers = _header_pairs(r, "change_header_name", "change_header_value")
    rule = AddressRule(
        name=r.get("task_name", v.parse_name, f"address-{number}"),
        line=r.section_line,
        message_sender=_pattern_list(r, "message_sender", settings, AddressList),
        message_recipient=_pattern_list(r, "message_recipient", settings, AddressList),
        add_recipient=_recipients(r, "add_recipient"),
        forward_recipients=_recipients(r, "message_forward_recipient"),
        add_headers=add_headers,
        change_headers=change_headers,
        remove_headers=tuple(
            name
            for entry in r.entries("remove_header_name")
            for name in r.convert(entry, _header_names) or ()
        ),
        run_time=_cron(r, "run_time"),
        skip_time=_cron(r, "skip_time"),
    )
    if len(r.problems.errors) > errors_before:
        return None
    actions = (rule.add_recipient, rule.forward_recipients, add_headers, change_headers)
    if not any((*actions, rule.remove_headers)):
        r.error(
            None,
            "[Address] section does nothing: give add_recipient, message_forward_recipient, "
            "add_header_name/value, change_header_name/value or remove_header_name",
        )
        return None
    _warn_address_permissions(r, rule, settings)
    return rule


def _recipients(r: _Reader, key: str) -> tuple[str, ...]:
    found: list[str] = []
    for entry in r.entries(key):
        words = list_items(entry.value)
        if not words:
            r.problems.error(entry.line, key, "no address given")
        for word in words:
            try:
                found.append(check_address(word))
            except PatternError as exc:
                r.problems.error(entry.line, key, str(exc))
    return tuple(found)


def _header_names(text: str) -> tuple[str, ...]:
    names = tuple(v.parse_header_name(word) for word in list_items(text))
    if not names:
        raise ValueError("no header name given")
    return names


def _header_value(text: str) -> ArgTemplate:
    return parse_template(v.check_header_value(text), forbidden=NOT_IN_HEADERS)


def _header_pairs(r: _Reader, name_key: str, value_key: str) -> tuple[HeaderTemplate, ...]:
    """Pair each ``*_header_name`` with the ``*_header_value`` that follows it."""
    pairs: list[HeaderTemplate] = []
    pending: Entry | None = None
    for entry in r.all_entries:
        if entry.key == name_key:
            if pending is not None:
                r.problems.error(pending.line, name_key, f"has no {value_key} after it")
            pending = entry
        elif entry.key == value_key:
            if pending is None:
                r.problems.error(entry.line, value_key, f"has no {name_key} before it")
                continue
            name = r.convert(pending, v.parse_header_name)
            value = r.convert(entry, _header_value)
            if name is not None and value is not None:
                pairs.append(HeaderTemplate(name, value))
            pending = None
    if pending is not None:
        r.problems.error(pending.line, name_key, f"has no {value_key} after it")
    return tuple(pairs)


def _warn_address_permissions(r: _Reader, rule: AddressRule, settings: Settings) -> None:
    needs = (
        (rule.add_recipient, "add_recipient", settings.allow_add_recipient, "-A"),
        (rule.forward_recipients, "message_forward_recipient", not settings.forward_missing, ""),
        (rule.add_headers, "add_header_name", settings.allow_add_header, "-H"),
        (rule.change_headers, "change_header_name", settings.allow_change_header, "-G"),
        (rule.remove_headers, "remove_header_name", settings.allow_change_header, "-G"),
    )
    for used, key, allowed, letters in needs:
        if used and not allowed:
            r.warn(key, f"has no effect without {letters or _forward_lacks(settings)}")


def _forward_lacks(settings: Settings) -> str:
    """A forward is refused whole (never half done), so say exactly what it lacks."""
    missing = settings.forward_missing
    if missing == "-AR":
        return "-A and -R (the recipients stay unchanged)"
    return f"{missing}: a forward needs both -A and -R (the recipients stay unchanged)"


# --- [Filter] --------------------------------------------------------------------------------


def _build_filter(r: _Reader, settings: Settings) -> FilterSpec | None:
    errors_before = len(r.problems.errors)
    name = r.one("task_name", v.parse_name)
    if name is None and not r.entries("task_name"):
        r.error("task_name", "missing: every [Filter] needs a name")
    module_name = r.one("module_name", _module_name)
    argv = _argv(r, module_name is not None)
    codes = {key: _exit_codes(r, key) for key in _EXIT_CODE_KEYS}
    spec = FilterSpec(
        name=name or "",
        argv=argv,
        line=r.section_line,
        module_name=module_name,
        module_safe_use=r.get("module_safe_use", v.parse_bool, False),
        timeout=r.get("task_timeout", v.parse_seconds, 60.0),
        reject_exit_codes=codes["reject_exit_codes"],
        tempfail_exit_codes=codes["tempfail_exit_codes"],
        accept_exit_codes=codes["accept_exit_codes"],
        discard_exit_codes=codes["discard_exit_codes"],
        reject_message=r.one("reject_message", v.parse_reply_text),
        tempfail_message=r.one("tempfail_message", v.parse_reply_text),
        reject_code=r.get("reject_code", lambda t: v.parse_reply_code(t, "5"), "550 5.7.1"),
        tempfail_code=r.get("tempfail_code", lambda t: v.parse_reply_code(t, "4"), "451 4.7.1"),
        run_message_sender=_pattern_list(r, "run_message_sender", settings, AddressList),
        run_message_recipient=_pattern_list(r, "run_message_recipient", settings, AddressList),
        skip_recipient=_pattern_list(r, "skip_recipient", settings, AddressList),
        skip_message_sender=_pattern_list(r, "skip_message_sender", settings, AddressList),
        run_message_subject=_pattern_list(r, "run_message_subject", settings, SubjectList),
        skip_message_subject=_pattern_list(r, "skip_message_subject", settings, SubjectList),
        run_time=_cron(r, "run_time"),
        skip_time=_cron(r, "skip_time"),
        single_instance=r.get("run_single_instance", v.parse_count, 0),
        error_threshold=r.one("error_threshold", v.parse_count),
        stdin=r.get("stdin", _stdin, "none"),
        mode=r.get("mode", _mode, "enforce"),
        max_message_size=r.one("max_message_size", v.parse_positive_size),
        error_cooldown=r.get("error_cooldown", v.parse_seconds, 0.0),
        module_worker_max_messages=r.get(
            "module_worker_max_messages", v.parse_count, WORKER_MAX_MESSAGES
        ),
        module_worker_max_rss=r.get("module_worker_max_rss", v.parse_size, WORKER_MAX_RSS),
        module_worker_max_fds=r.get("module_worker_max_fds", v.parse_count, WORKER_MAX_FDS),
    )
    _check_filter(r, spec, codes)
    if len(r.problems.errors) > errors_before:
        return None
    _warn_filter_permissions(r, spec, settings)
    return spec


def _module_name(text: str) -> str:
    name = text.strip()
    if not name:
        raise ValueError("empty module name")
    return name


def _stdin(text: str) -> Literal["none", "message"]:
    return "message" if v.parse_choice(text, ("none", "message")) == "message" else "none"


def _mode(text: str) -> Literal["enforce", "monitor"]:
    return "monitor" if v.parse_choice(text, ("enforce", "monitor")) == "monitor" else "enforce"


def _argv(r: _Reader, is_module: bool) -> tuple[ArgTemplate, ...]:
    """``exec_cmd`` split like sh splits words, each word a template."""
    entries = r.entries("exec_cmd")
    if not entries:
        if not is_module:
            r.error("exec_cmd", "missing: a [Filter] needs a program to run or a module_name")
        return ()
    argv = r.convert(entries[0], _split_templates)
    if argv is None:
        return ()
    if not is_module and not argv:
        r.error("exec_cmd", "empty command")
    elif not is_module and not argv[0].is_literal:
        r.error("exec_cmd", "the program name must be plain text, not a variable")
    return argv


def _split_templates(text: str) -> tuple[ArgTemplate, ...]:
    try:
        words = shlex.split(text, posix=True)
    except ValueError as exc:
        raise ValueError(f"cannot split the command line: {exc}") from None
    return tuple(parse_template(word) for word in words)


def _exit_codes(r: _Reader, key: str) -> frozenset[int]:
    codes: frozenset[int] = frozenset()
    for entry in r.entries(key):
        codes |= r.convert(entry, v.parse_exit_codes) or frozenset()
    return codes


def _check_filter(r: _Reader, spec: FilterSpec, codes: Mapping[str, frozenset[int]]) -> None:
    for index, key in enumerate(_EXIT_CODE_KEYS):
        for earlier in _EXIT_CODE_KEYS[:index]:
            both = codes[key] & codes[earlier]
            if both:
                r.error(key, f"exit code(s) {v.format_exit_codes(both)} also in {earlier}")
    if spec.module_safe_use and not spec.is_module:
        r.error("module_safe_use", "applies only to module filters (module_name)")


def _warn_filter_permissions(r: _Reader, spec: FilterSpec, settings: Settings) -> None:
    files = spec.required_files
    if BODY_FILE in files and not settings.allow_change_body:
        r.warn("exec_cmd", "%n (new body file) has no effect without -B")
    if HEADER_FILE in files and not (settings.allow_add_header or settings.allow_change_header):
        r.warn("exec_cmd", "%h (header file) has no effect without -H or -G")
    for key in _WORKER_LIMIT_KEYS:
        if r.entries(key) and not spec.module_safe_use:
            r.warn(key, "has no effect without module_safe_use (worker processes)")


# --- lists and times -------------------------------------------------------------------------

L = TypeVar("L", AddressList, SubjectList)


def _pattern_list(
    r: _Reader, key: str, settings: Settings, make: Callable[[tuple[str, ...], bool], L]
) -> L | None:
    """Every entry of a (repeatable) list key, checked entry by entry so an error names its line.

    Address lists are separated by ASCII spaces and tabs only (``list_items``); a subject item
    is the whole value (it has spaces).
    """
    items: list[str] = []
    for entry in r.entries(key):
        words = tuple(list_items(entry.value)) if make is AddressList else (entry.value.strip(),)
        try:
            checked = make(words, settings.regex)
        except PatternError as exc:
            r.problems.error(entry.line, key, str(exc))
            continue
        items.extend(words)
        for warning in _list_warnings(checked, settings):
            r.problems.warn(entry.line, key, warning)
    return make(tuple(items), settings.regex) if items else None


def _list_warnings(checked: AddressList | SubjectList, settings: Settings) -> list[str]:
    """Items that are valid but probably do not mean what was meant."""
    found = [
        f"{item!r} looks like a regular expression but regex mode is off "
        "(-X or regex = yes): it only matches exactly"
        for item in (() if settings.regex else checked.regex_like_items)
    ]
    if isinstance(checked, AddressList):
        found += [
            f"{item!r} has no '@', so it matches the local part {item} at any domain; "
            f"write @{item} to match every address at that domain"
            for item in checked.domain_like_items
        ]
    return found


def _cron(r: _Reader, key: str) -> tuple[CronExpression, ...]:
    found = (r.convert(entry, CronExpression) for entry in r.entries(key))
    return tuple(expression for expression in found if expression is not None)
