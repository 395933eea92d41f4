"""A sample filter module: rejects HTML-only mail and mail with attachments (the seed's
``test_html_mail`` example as a module).

HTML-only means an ``text/html`` part and no ``text/plain`` one; ``multipart/alternative`` with
both passes. An attachment is a part with ``Content-Disposition: attachment``, a file name, or
content that is not text (images, applications, ...).
"""

from __future__ import annotations

from email.message import EmailMessage

from milter_agent.filters.module_api import ModuleMessage, ModuleResult

REJECT_TEXT = "HTML mail or attachments not accepted."


def has_attachment(part: EmailMessage) -> bool:
    return (
        part.is_attachment()
        or part.get_filename() is not None
        or part.get_content_maintype() != "text"
    )


def is_acceptable(mail: EmailMessage) -> bool:
    """True for plain text mail without attachments."""
    kinds: set[str] = set()
    for part in mail.walk():
        if part.is_multipart():
            continue
        if has_attachment(part):
            return False
        kinds.add(part.get_content_type())
    return not ("text/html" in kinds and "text/plain" not in kinds)


def process_message_by_module(args: list[str], message: ModuleMessage) -> ModuleResult:
    if is_acceptable(message.email):
        return ModuleResult("continue")
    return ModuleResult("reject", text=REJECT_TEXT)
