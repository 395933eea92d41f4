"""A sample filter module: logs each message it sees (and its load and unload), then continues.

Shows the optional ``setup(config)`` and ``teardown()`` hooks and an ``async`` process function.
"""

from __future__ import annotations

import logging

from milter_agent.filters.module_api import ModuleConfig, ModuleMessage

log = logging.getLogger("milter_agent.modules.sample")


def setup(config: ModuleConfig) -> None:
    log.info("sample module loaded for filter %s", config.filter_name)


async def process_message_by_module(args: list[str], message: ModuleMessage) -> int:
    log.info(
        "sample module: %s from <%s> to %d recipient(s), %d bytes, subject %r, args %s",
        message.queue_id or "-",
        message.sender,
        len(message.recipients),
        message.size,
        message.subject,
        " ".join(args),
    )
    return 0


def teardown() -> None:
    log.info("sample module unloaded")
