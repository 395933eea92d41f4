"""A fake MTA for unit tests: drives a Session through the real codec, without sockets."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from milter_agent import protocol as p
from milter_agent.protocol.constants import Action, ProtocolFlag
from milter_agent.session import Session

POSTFIX_OFFER = p.OptNeg(6, Action(0x1FF), ProtocolFlag(0x1FFFFF))


async def send(session: Session, command: p.Command) -> list[p.Response]:
    """Feed one command; return the responses the session sent (also encoded, to check rules)."""
    session.conn.receive_data(p.encode_command(command))
    event = session.conn.next_event()
    assert not isinstance(event, p.Sentinel)
    out = []
    async for response in session.handle(event):
        session.conn.send(response)
        out.append(response)
    return out


async def open_session(session: Session, offer: p.OptNeg = POSTFIX_OFFER) -> p.OptNegReply:
    (reply,) = await send(session, offer)
    assert isinstance(reply, p.OptNegReply)
    await send(session, p.Connect("client.example", "4", 4321, "192.0.2.1"))
    await send(session, p.Helo("client.example"))
    return reply


def message_commands(
    sender: str = "<a@example.com>",
    recipients: Sequence[str] = ("<b@example.com>",),
    headers: Sequence[tuple[str, str]] = (("From", " a@example.com"), ("Subject", " hello")),
    body: bytes = b"hello\r\n",
    queue_id: str = "QID1",
) -> list[p.Command]:
    cmds: list[p.Command] = [p.Mail(sender)]
    cmds += [p.Rcpt(r) for r in recipients]
    cmds += [p.Data()]
    cmds += [p.Header(n, v) for n, v in headers]
    cmds += [p.EndOfHeaders(), p.Body(body), p.Macro(b"E", {"i": queue_id}), p.EndOfMessage()]
    return cmds


async def send_message(session: Session, **kwargs: object) -> list[p.Response]:
    """Send a whole message; return the responses to end-of-message."""
    responses: list[p.Response] = []
    for command in message_commands(**kwargs):  # type: ignore[arg-type]
        responses = await send(session, command)
        if responses and not isinstance(responses[-1], p.Continue | p.Progress):
            break
    return responses


def run(coro: object) -> object:
    return asyncio.run(coro)  # type: ignore[arg-type]
