"""Small helpers shared by the configuration tests."""

from __future__ import annotations

import textwrap

import pytest

from milter_agent.config.model import AddressRule, Config, FilterSpec
from milter_agent.config.options import parse_command_line
from milter_agent.config.parser import parse_config_text
from milter_agent.config.problems import ConfigErrors

PATH = "/etc/mail/test.conf"


def parse(text: str, *argv: str) -> Config:
    """Parse dedented ``text`` as if read from PATH, with the given command-line options."""
    return parse_config_text(textwrap.dedent(text), PATH, parse_command_line(list(argv)))


def errors_of(text: str, *argv: str) -> list[str]:
    """The error lines a broken config produces (each already "path:line: key: reason")."""
    with pytest.raises(ConfigErrors) as caught:
        parse(text, *argv)
    return [str(error) for error in caught.value.errors]


def only_error(text: str, *argv: str) -> str:
    found = errors_of(text, *argv)
    assert len(found) == 1, found
    return found[0]


def only_filter(config: Config) -> FilterSpec:
    (spec,) = config.sections
    assert isinstance(spec, FilterSpec)
    return spec


def only_rule(config: Config) -> AddressRule:
    (rule,) = config.sections
    assert isinstance(rule, AddressRule)
    return rule


def filter_with(*lines: str, argv: tuple[str, ...] = ("-X",)) -> FilterSpec:
    """A one-filter config with these extra lines."""
    body = "\n".join(("[Filter]", "task_name = t", 'exec_cmd = "/bin/f %f"', *lines))
    return only_filter(parse(body, *argv))
