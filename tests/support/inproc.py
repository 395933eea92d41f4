"""milter-agent's own milter server, in this process, with a pipeline written by the test.

For end-to-end cases that no configuration can produce yet but the session must send right,
such as changing the second of three headers of one name: the test edits the working copy
(:class:`~milter_agent.work.MessageWork`) and the real server sends what it derives.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from milter_agent import protocol as p
from milter_agent.config.model import Settings
from milter_agent.message import Message
from milter_agent.pipeline import Decision
from milter_agent.server import MilterServer
from milter_agent.session import Services
from milter_agent.socketspec import SocketSpec
from milter_agent.spool import Spool
from milter_agent.work import HeaderEntry, MessageWork

Edit = Callable[[MessageWork], None]
_READY = 10.0


class EditPipeline:
    """Applies ``edit`` to each message's working copy and sends the net changes."""

    wants_content = False

    def __init__(self, edit: Edit, spool: Spool, settings: Settings) -> None:
        self.edit, self.spool, self.settings = edit, spool, settings

    async def run(self, message: Message) -> Decision:
        work = MessageWork(message, self.spool, self.settings)
        self.edit(work)
        return Decision(changes=work.net_changes())


def occurrence(work: MessageWork, name: str, index: int) -> HeaderEntry:
    """The ``index``-th (1-based) header called ``name`` as the MTA sent it."""
    found = [e for e in work.entries if e.index is not None and e.name.lower() == name.lower()]
    return found[index - 1]


@contextmanager
def serve(edit: Edit, directory: Path, settings: Settings) -> Iterator[str]:
    """Run a milter server on a Unix socket (mode 0666, for Postfix's smtpd) in a thread;
    yield its ``unix:`` spec. The server stops when the block ends."""
    spool = Spool(directory / "spool")
    spool.prepare()
    spec = SocketSpec("unix", path=str(directory / "milter.sock"))
    policy = p.Policy.from_permissions(
        add_recipient=settings.allow_add_recipient,
        remove_recipient=settings.allow_remove_recipient,
        add_header=settings.allow_add_header,
        change_header=settings.allow_change_header,
        change_body=settings.allow_change_body,
    )
    services = Services(
        policy=lambda: policy,
        pipeline=lambda: EditPipeline(edit, spool, settings),
        spool=spool,
    )
    loop = asyncio.new_event_loop()
    server = MilterServer(spec, services, socket_mode=0o666, shutdown_grace=1.0)
    ready = threading.Event()
    failed: list[BaseException] = []

    def run() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(server.start())
        except BaseException as exc:  # reported by the test thread below
            failed.append(exc)
            return
        finally:
            ready.set()
        loop.run_forever()
        loop.run_until_complete(server.stop())
        loop.close()

    thread = threading.Thread(target=run, name="inproc-milter", daemon=True)
    thread.start()
    assert ready.wait(_READY) and not failed, f"the in-process milter did not start: {failed}"
    try:
        yield f"unix:{spec.path}"
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(_READY)
