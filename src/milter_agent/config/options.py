"""The command line: the seed's getopt letters (combinable: ``-HIBFGARXavTM -m5 -ufoo``) and
long forms, parsed into a ``CommandLine`` that remembers which options were actually given.

Options given on the command line win over the configuration file; options not given leave the
file's value (or the default) alone. Nothing here reads the config file.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, NoReturn

from milter_agent import __version__
from milter_agent.config.keys import ALL_LETTERS, SETTINGS, SettingKey
from milter_agent.config.model import DEFAULT_CONFIG_PATH, Settings
from milter_agent.errors import ConfigError

_DEFAULTS = Settings()


@dataclass(frozen=True)
class CommandLine:
    """The parsed command line.

    ``settings`` holds the given values (defaults elsewhere); ``explicit`` names the Settings
    fields that were given, and only those override the configuration file.
    """

    config_path: str = DEFAULT_CONFIG_PATH
    check: bool = False
    settings: Settings = field(default_factory=Settings)
    explicit: frozenset[str] = frozenset()

    def given(self, name: str) -> bool:
        return name in self.explicit

    def apply(self, base: Settings) -> Settings:
        """``base`` (from the file) with every explicitly given option laid over it."""
        return replace(base, **{name: getattr(self.settings, name) for name in self.explicit})


class _Parser(argparse.ArgumentParser):
    """argparse raising ConfigError instead of exiting, so callers choose the exit status."""

    def error(self, message: str) -> NoReturn:
        raise ConfigError(f"{message} (see --help)")


def _argument_type(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """Keep our converter's reason in argparse's message (it hides plain ValueErrors)."""

    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return convert


def _escape(text: str) -> str:
    """argparse %-formats help strings."""
    return text.replace("%", "%%")


def _flags(key: SettingKey) -> list[str]:
    return [flag for flag in (f"-{key.letter}" if key.letter else None, key.long) if flag]


def _add_setting(parser: argparse.ArgumentParser, key: SettingKey) -> None:
    if key.is_switch:
        parser.add_argument(
            *_flags(key), dest=key.name, action="store_true", help=_escape(key.help)
        )
        return
    default = getattr(_DEFAULTS, key.name)
    shown = "unset" if default is None else key.format(default)
    parser.add_argument(
        *_flags(key),
        dest=key.name,
        type=_argument_type(key.parse),
        metavar=key.metavar,
        help=_escape(f"{key.help} (default: {shown})"),
    )


def build_parser(prog: str = "milter-agent") -> argparse.ArgumentParser:
    """The argument parser; exposed so the CLI can print its help."""
    parser = _Parser(
        prog=prog,
        description="A milter that runs address rules and filter programs for Postfix/Sendmail.",
        # The subcommand is dispatched before this parser runs, so it is not an option here;
        # without this line --help would never tell that it exists.
        epilog=(
            "milter-agent test [options] MESSAGE runs one message file through the configured "
            "pipeline without an MTA and reports what each section did; see "
            "'milter-agent test --help'."
        ),
        add_help=False,
        allow_abbrev=False,
        # Only options actually given appear in the result: that is how "explicit" is known.
        argument_default=argparse.SUPPRESS,
    )
    parser.add_argument("-h", "--help", action="help", help="print this help and exit")
    parser.add_argument("-V", "--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "-c",
        "--config",
        dest="config_path",
        metavar="FILE",
        help=f"configuration file (default: {DEFAULT_CONFIG_PATH})",
    )
    parser.add_argument(
        "-n",
        "--check",
        action="store_true",
        help="check the configuration, print the effective one, exit 0 (valid) or 1",
    )
    parser.add_argument(
        "-1", "--all", dest="all_switches", action="store_true", help=f"same as -{ALL_LETTERS}"
    )
    parser.add_argument(
        "--foreground", dest="daemon_mode", action="store_const", const=1, help="same as -d 1"
    )
    for key in SETTINGS.values():
        if key.letter or key.long:  # the others are config-file only
            _add_setting(parser, key)
    return parser


_BY_LETTER = {key.letter: key.name for key in SETTINGS.values() if key.letter}


def parse_command_line(
    argv: Sequence[str] | None = None, *, prog: str = "milter-agent"
) -> CommandLine:
    """Parse ``argv`` (without the program name). Bad usage raises ConfigError;
    ``-h`` and ``-V`` print and raise SystemExit(0) as usual."""
    given = vars(build_parser(prog).parse_args(argv))
    if given.pop("all_switches", False):
        given.update({_BY_LETTER[letter]: True for letter in ALL_LETTERS})
    # absolute now: -d 0 changes to / before any reload reads the file again
    config_path = os.path.abspath(given.pop("config_path", DEFAULT_CONFIG_PATH))
    check = given.pop("check", False)
    return CommandLine(
        config_path=config_path,
        check=check,
        settings=replace(_DEFAULTS, **given),
        explicit=frozenset(given),
    )
