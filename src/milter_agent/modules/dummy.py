"""The smallest filter module: every message continues unchanged."""

from __future__ import annotations

from milter_agent.filters.module_api import ModuleMessage


def process_message_by_module(args: list[str], message: ModuleMessage) -> int:
    """0 is "continue", as a program's exit code 0."""
    return 0
