"""Entry points only: ``milter-agent`` and ``ma-client``."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from milter_agent.config.options import parse_command_line
from milter_agent.config.render import check_config
from milter_agent.control.client import main as client
from milter_agent.daemon import run
from milter_agent.errors import ConfigError


def main(argv: Sequence[str] | None = None) -> int:
    try:
        command_line = parse_command_line(argv)
    except ConfigError as exc:
        print(f"milter-agent: {exc}", file=sys.stderr)
        return 2
    if command_line.check:
        return check_config(command_line, sys.stdout, sys.stderr)
    return run(command_line)


def client_main(argv: Sequence[str] | None = None) -> int:
    return client(argv)
