"""The smallest filter module: every message continues unchanged.

It is an ``async def``: such a function runs on the daemon's event loop, with no thread to
hand the call to, which makes it the cheapest kind of filter there is. A plain ``def`` runs on
the module threads instead, so that a call that blocks cannot stop the daemon.
"""

from __future__ import annotations

from milter_agent.filters.module_api import ModuleMessage


async def process_message_by_module(args: list[str], message: ModuleMessage) -> int:
    """0 is "continue", as a program's exit code 0."""
    return 0
