"""Entry points only: ``milter-agent`` and ``ma-client``."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from milter_agent.config.options import parse_command_line
from milter_agent.config.render import check_config
from milter_agent.control.client import main as client
from milter_agent.daemon import run
from milter_agent.errors import ConfigError
from milter_agent.offline import run_test


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["test"]:
        return run_test(args[1:])
    try:
        command_line = parse_command_line(args)
    except ConfigError as exc:
        print(f"milter-agent: {exc}", file=sys.stderr)
        return 2
    if command_line.check:
        return check_config(command_line, sys.stdout, sys.stderr)
    return run(command_line)


def client_main(argv: Sequence[str] | None = None) -> int:
    return client(argv)
