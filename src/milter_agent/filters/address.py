"""``[Address]`` rules: add, forward and remove recipients, add, change and remove headers.

A rule applies when its sender condition matches, at least one current recipient matches
its recipient condition and its run_time/skip_time hold (conditions ANDed; no condition = every
message). Forwarding acts on
each matching recipient: it is removed and the forward addresses are added. A forward is all or
nothing: without both -A and -R it is refused whole, because removing the recipient without
adding the targets would lose the mail. The recipients a rule sees are the ones left by the
sections before it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime

from milter_agent.config.model import AddressRule
from milter_agent.work import MessageWork, Refusal


def apply_address_rule(
    rule: AddressRule,
    work: MessageWork,
    values: Callable[[], Mapping[str, str | Sequence[str]]],
    refused: Refusal,
    now: datetime | None = None,
) -> list[str]:
    """Apply ``rule`` to ``work``; return what it changed, for the log (empty: did not apply).

    ``values`` gives the variables for header values; it is called only if a header is written.
    ``now`` is the time for run_time/skip_time (default: the current local time).
    """
    sender = work.message.sender_address
    recipients = work.recipient_addresses
    if not rule.applies(sender, recipients, now):
        return []
    done: list[str] = []
    if rule.forward_recipients:
        done += _forward(rule, work, rule.matching_recipients(recipients), refused)
    for rcpt in rule.add_recipient:
        if work.add_recipient(rcpt, refused):
            done.append(f"+{rcpt}")
    if rule.add_headers or rule.change_headers:
        variables = values()
        for header in rule.add_headers:
            if work.add_header(header.name, header.render(variables), refused):
                done.append(f"+h:{header.name}")
        for header in rule.change_headers:
            if work.change_header(header.name, header.render(variables), refused):
                done.append(f"~h:{header.name}")
    for name in rule.remove_headers:
        if work.remove_header(name, refused):
            done.append(f"-h:{name}")
    return done or ["matched"]


def _forward(
    rule: AddressRule, work: MessageWork, matching: Sequence[str], refused: Refusal
) -> list[str]:
    """Replace the matching recipients by the forward addresses, or refuse and change nothing."""
    missing = work.settings.forward_missing
    if missing:
        targets = " ".join(rule.forward_recipients)
        refused(f"forward {', '.join(matching)} to {targets}", missing)
        return []
    done = [f"-{rcpt}" for rcpt in matching if work.remove_recipient(rcpt, refused)]
    done += [f"+{rcpt}" for rcpt in rule.forward_recipients if work.add_recipient(rcpt, refused)]
    return done
