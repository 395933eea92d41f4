"""Writing a ``Config`` back in the file's own syntax, and the ``--check`` command built on it.

Like ``postconf -n``: global settings that differ from the defaults first, then every section
in order with the keys that differ from their defaults, every value quoted. Parsing the output
gives an equal ``Config`` (tested).
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable, Iterator
from dataclasses import fields
from typing import Any, TextIO

from milter_agent.conditions import AddressList, SubjectList
from milter_agent.config import values as v
from milter_agent.config.keys import SETTINGS
from milter_agent.config.model import AddressRule, Config, FilterSpec, HeaderTemplate, Settings
from milter_agent.config.options import CommandLine
from milter_agent.config.parser import load_config, quote_value
from milter_agent.errors import ConfigError

_DEFAULT_SETTINGS = Settings()
_SPLIT_SPECIAL = re.compile(r"[\s'\"\\]")
_FILTER_DEFAULTS = {f.name: f.default for f in fields(FilterSpec)}

# [Filter] scalar keys: (file key, FilterSpec field, formatter); written when not the default.
_FILTER_SCALARS: tuple[tuple[str, str, Callable[[Any], str]], ...] = (
    ("task_timeout", "timeout", v.format_number),
    ("reject_exit_codes", "reject_exit_codes", v.format_exit_codes),
    ("tempfail_exit_codes", "tempfail_exit_codes", v.format_exit_codes),
    ("accept_exit_codes", "accept_exit_codes", v.format_exit_codes),
    ("discard_exit_codes", "discard_exit_codes", v.format_exit_codes),
    ("reject_message", "reject_message", str),
    ("tempfail_message", "tempfail_message", str),
    ("reject_code", "reject_code", str),
    ("tempfail_code", "tempfail_code", str),
    ("run_single_instance", "single_instance", str),
    ("error_threshold", "error_threshold", str),
    ("stdin", "stdin", str),
    ("mode", "mode", str),
    ("max_message_size", "max_message_size", str),
    ("error_cooldown", "error_cooldown", v.format_number),
    ("module_worker_max_messages", "module_worker_max_messages", str),
    ("module_worker_max_rss", "module_worker_max_rss", v.format_size),
    ("module_worker_max_fds", "module_worker_max_fds", str),
)
_FILTER_LISTS = (
    "run_message_sender",
    "run_message_recipient",
    "skip_recipient",
    "skip_message_sender",
    "run_message_subject",
    "skip_message_subject",
)


def _line(key: str, value: str) -> str:
    return f"{key} = {quote_value(value)}"


def render_settings(settings: Settings, *, all_settings: bool = False) -> list[str]:
    """One line per setting that differs from the default (or every setting)."""
    lines: list[str] = []
    for name, key in SETTINGS.items():
        value = getattr(settings, name)
        if value is None:
            if all_settings:
                lines.append(f"# {name} is unset")
        elif all_settings or value != getattr(_DEFAULT_SETTINGS, name):
            lines.append(_line(name, key.format(value)))
    return lines


def render_config(config: Config, *, all_settings: bool = False) -> str:
    lines = [f"# effective configuration read from {config.path or 'text'}"]
    lines += render_settings(config.settings, all_settings=all_settings)
    address_number = 0
    for section in config.sections:
        lines.append("")
        if isinstance(section, AddressRule):
            address_number += 1
            lines += _render_address(section, address_number)
        else:
            lines += _render_filter(section)
    return "\n".join(lines) + "\n"


def _render_address(rule: AddressRule, number: int) -> Iterator[str]:
    yield "[Address]"
    if rule.name != f"address-{number}":  # an automatic name comes back by itself
        yield _line("task_name", rule.name)
    yield from _list_lines("message_sender", rule.message_sender)
    yield from _list_lines("message_recipient", rule.message_recipient)
    if rule.add_recipient:
        yield _line("add_recipient", " ".join(rule.add_recipient))
    if rule.forward_recipients:
        yield _line("message_forward_recipient", " ".join(rule.forward_recipients))
    yield from _header_lines("add_header", rule.add_headers)
    yield from _header_lines("change_header", rule.change_headers)
    if rule.remove_headers:
        yield _line("remove_header_name", " ".join(rule.remove_headers))
    yield from _time_lines(rule)


def _render_filter(spec: FilterSpec) -> Iterator[str]:
    yield "[Filter]"
    yield _line("task_name", spec.name)
    if spec.module_name is not None:
        yield _line("module_name", spec.module_name)
    if spec.module_safe_use:
        yield _line("module_safe_use", "yes")
    if spec.argv or not spec.is_module:
        yield _line("exec_cmd", " ".join(_shell_word(word.source()) for word in spec.argv))
    for key, name, format_value in _FILTER_SCALARS:
        value = getattr(spec, name)
        if value != _FILTER_DEFAULTS[name]:
            yield _line(key, format_value(value))
    for key in _FILTER_LISTS:
        yield from _list_lines(key, getattr(spec, key))
    yield from _time_lines(spec)


def _time_lines(section: AddressRule | FilterSpec) -> Iterator[str]:
    for expression in section.run_time:
        yield _line("run_time", expression.text)
    for expression in section.skip_time:
        yield _line("skip_time", expression.text)


def _shell_word(word: str) -> str:
    """Quote a word only if ``shlex.split`` would otherwise change it: no shell ever reads
    exec_cmd, so ``;`` ``|`` ``{}`` are plain characters and stay unquoted."""
    return shlex.quote(word) if not word or _SPLIT_SPECIAL.search(word) else word


def _list_lines(key: str, items: AddressList | SubjectList | None) -> Iterator[str]:
    """An address list on one line (space-separated); a subject list one item per line."""
    if items is None:
        return
    if isinstance(items, AddressList):
        yield _line(key, " ".join(items.items))
    else:
        for item in items.items:
            yield _line(key, item)


def _header_lines(prefix: str, headers: tuple[HeaderTemplate, ...]) -> Iterator[str]:
    for header in headers:
        yield _line(f"{prefix}_name", header.name)
        yield _line(f"{prefix}_value", header.value.source())


def check_config(command_line: CommandLine, out: TextIO, err: TextIO) -> int:
    """``--check``: 0 and the effective configuration on ``out`` when valid, else the errors on
    ``err`` and 1. Warnings go to ``err`` either way."""
    try:
        config = load_config(command_line.config_path, command_line)
    except ConfigError as exc:
        print(exc, file=err)
        return 1
    for warning in config.warnings:
        print(f"warning: {warning}", file=err)
    out.write(render_config(config))
    return 0
