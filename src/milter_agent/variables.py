"""Argument templates: parse one ``exec_cmd`` word with %-variables, and expand it for one message.

Pure and small: it knows the variable names and their syntax, nothing about where the values come
from (the pipeline fills a mapping) and nothing about files or processes.

Syntax (seed forms first)::

    %f %s %r %n %h          message file, envelope sender, reply file, new-body file, header file
    %%                      a literal %  (so %%f is the literal text %f)
    %{file} %{sender} %{reply_file} %{body_file} %{header_file}
    %{recipient}            the recipient (first, or last with -Q)
    %{recipients}           every recipient, one argument each (only as a whole word)
    %{client_addr} %{client_name} %{helo} %{queue_id} %{subject} %{auth_authen}
    %{macro:NAME}           any MTA macro: j, {daemon_name} or daemon_name
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

FILE = "file"
SENDER = "sender"
REPLY_FILE = "reply_file"
BODY_FILE = "body_file"
HEADER_FILE = "header_file"
RECIPIENT = "recipient"
RECIPIENTS = "recipients"
CLIENT_ADDR = "client_addr"
CLIENT_NAME = "client_name"
HELO = "helo"
QUEUE_ID = "queue_id"
SUBJECT = "subject"
AUTH_AUTHEN = "auth_authen"
MACRO_PREFIX = "macro:"

#: The seed's one-letter forms.
SHORT_FORMS: Mapping[str, str] = {
    "f": FILE,
    "s": SENDER,
    "r": REPLY_FILE,
    "n": BODY_FILE,
    "h": HEADER_FILE,
}
_SHORT_OF = {name: letter for letter, name in SHORT_FORMS.items()}

#: Every named variable except ``macro:``.
NAMED_VARIABLES: frozenset[str] = frozenset(
    {
        FILE,
        SENDER,
        REPLY_FILE,
        BODY_FILE,
        HEADER_FILE,
        RECIPIENT,
        RECIPIENTS,
        CLIENT_ADDR,
        CLIENT_NAME,
        HELO,
        QUEUE_ID,
        SUBJECT,
        AUTH_AUTHEN,
    }
)

#: The files the daemon creates empty for a filter to write into, on demand.
OUTPUT_FILES: frozenset[str] = frozenset({REPLY_FILE, BODY_FILE, HEADER_FILE})

#: Variables that make no sense inside a header value (files, the multi-valued list).
NOT_IN_HEADERS: frozenset[str] = frozenset({FILE, REPLY_FILE, BODY_FILE, HEADER_FILE, RECIPIENTS})

_MACRO_NAME = re.compile(r"\{?([A-Za-z0-9_]+)\}?")


class VariableError(ValueError):
    """A word uses a variable that does not exist or is not allowed where it stands."""


@dataclass(frozen=True, slots=True)
class Variable:
    """One variable reference; ``name`` is canonical (``file``, ``macro:{daemon_name}``)."""

    name: str

    @property
    def macro(self) -> str | None:
        """The MTA macro name (``j``, ``{daemon_name}``) if this is a ``%{macro:...}``."""
        return self.name[len(MACRO_PREFIX) :] if self.name.startswith(MACRO_PREFIX) else None

    def source(self) -> str:
        """The shortest spelling that parses back to this variable."""
        letter = _SHORT_OF.get(self.name)
        return f"%{letter}" if letter else f"%{{{self.name}}}"


Part = str | Variable


@dataclass(frozen=True, slots=True)
class ArgTemplate:
    """One word of a command line (or a header value): literal text and variables, in order."""

    parts: tuple[Part, ...]

    @property
    def variables(self) -> tuple[Variable, ...]:
        return tuple(part for part in self.parts if isinstance(part, Variable))

    @property
    def is_literal(self) -> bool:
        return not self.variables

    def source(self) -> str:
        """The template written back in %-syntax (``%`` in literal text doubled)."""
        return "".join(
            part.replace("%", "%%") if isinstance(part, str) else part.source()
            for part in self.parts
        )

    def __str__(self) -> str:
        return self.source()


def literal(text: str) -> ArgTemplate:
    """A template without variables."""
    return ArgTemplate((text,) if text else ())


def normalize_macro_name(name: str) -> str:
    """``j`` stays ``j``; ``daemon_name`` and ``{daemon_name}`` become ``{daemon_name}``.

    Sendmail and Postfix send one-letter macros bare and longer ones in braces; using the
    wire form as the canonical name lets the daemon look the value up without translating.
    """
    match = _MACRO_NAME.fullmatch(name)
    if match is None or name.startswith("{") != name.endswith("}"):
        raise VariableError(f"bad macro name {name!r} (letters, digits and _ only)")
    bare = match.group(1)
    return bare if len(bare) == 1 else f"{{{bare}}}"


def parse_template(word: str, *, forbidden: frozenset[str] = frozenset()) -> ArgTemplate:
    """Parse one word. ``forbidden`` names variables not allowed in this place."""
    parts: list[Part] = []
    text: list[str] = []
    pos = 0
    while pos < len(word):
        char = word[pos]
        if char != "%":
            text.append(char)
            pos += 1
            continue
        variable, pos = _parse_variable(word, pos)
        if variable is None:
            text.append("%")
            continue
        if variable.name in forbidden:
            raise VariableError(f"{variable.source()} is not allowed here")
        if text:
            parts.append("".join(text))
            text.clear()
        parts.append(variable)
    if text:
        parts.append("".join(text))
    template = ArgTemplate(tuple(parts))
    if Variable(RECIPIENTS) in template.variables and len(template.parts) != 1:
        raise VariableError("%{recipients} must be a whole word (it becomes one argument each)")
    return template


def _parse_variable(word: str, pos: int) -> tuple[Variable | None, int]:
    """Parse the variable at ``word[pos] == '%'``; None means the escape ``%%``."""
    if pos + 1 >= len(word):
        raise VariableError("a lone % at the end (write %% for a literal %)")
    letter = word[pos + 1]
    if letter == "%":
        return None, pos + 2
    if letter != "{":
        if letter in SHORT_FORMS:
            return Variable(SHORT_FORMS[letter]), pos + 2
        raise VariableError(f"unknown variable %{letter} ({_known()}; %% is a literal %)")
    end = _closing_brace(word, pos + 2)
    return Variable(_canonical_name(word[pos + 2 : end])), end + 1


def _closing_brace(word: str, start: int) -> int:
    """Index of the ``}`` closing a ``%{`` whose content starts at ``start`` (braces nest)."""
    depth = 1
    for index in range(start, len(word)):
        if word[index] == "{":
            depth += 1
        elif word[index] == "}":
            depth -= 1
            if depth == 0:
                return index
    raise VariableError(f"unterminated %{{ in {word!r}")


def _canonical_name(name: str) -> str:
    if name.startswith(MACRO_PREFIX):
        return MACRO_PREFIX + normalize_macro_name(name[len(MACRO_PREFIX) :])
    if name in NAMED_VARIABLES:
        return name
    raise VariableError(f"unknown variable %{{{name}}} ({_known()})")


def _known() -> str:
    short = " ".join(f"%{letter}" for letter in SHORT_FORMS)
    named = " ".join(f"%{{{name}}}" for name in sorted(NAMED_VARIABLES))
    return f"known: {short} {named} %{{macro:NAME}}"


def expand(template: ArgTemplate, values: Mapping[str, str | Sequence[str]]) -> list[str]:
    """Expand one word into arguments: exactly one, except ``%{recipients}`` (one per recipient).

    Values are never split or interpreted: a value with spaces or ``;`` stays one argument.
    ``values`` is keyed by canonical name (``file``, ``macro:{daemon_name}``). A macro the MTA did
    not send expands to ""; any other missing variable is a KeyError (a bug in the caller).
    """
    if template.parts == (Variable(RECIPIENTS),):
        recipients = values[RECIPIENTS]
        return [recipients] if isinstance(recipients, str) else list(recipients)
    return ["".join(_value(part, values) for part in template.parts)]


def expand_all(
    templates: Iterable[ArgTemplate], values: Mapping[str, str | Sequence[str]]
) -> list[str]:
    """Expand a whole argv."""
    return [arg for template in templates for arg in expand(template, values)]


def _value(part: Part, values: Mapping[str, str | Sequence[str]]) -> str:
    if isinstance(part, str):
        return part
    if part.macro is not None and part.name not in values:
        return ""
    value = values[part.name]
    if not isinstance(value, str):
        raise TypeError(f"variable {part.name} needs one string, got {type(value).__name__}")
    return value


def required_files(argv: Iterable[ArgTemplate]) -> set[str]:
    """Which of ``reply_file``, ``body_file``, ``header_file`` the filter asks for."""
    return {var.name for template in argv for var in template.variables} & OUTPUT_FILES


def macros(templates: Iterable[ArgTemplate]) -> frozenset[str]:
    """Every MTA macro named by ``%{macro:NAME}`` in these templates (canonical names)."""
    return frozenset(
        var.macro for template in templates for var in template.variables if var.macro is not None
    )
