"""Generate the man pages from the Markdown documentation, their one source.

    python tools/manpages.py [OUTDIR]     (default: man/)

milter-agent(8): README's introduction and "Running as a user", the command-line options of
docs/configuration.md, docs/filters.md and docs/testing.md (the ``test`` subcommand).
milter-agent.conf(5): docs/configuration.md.
ma-client(8): docs/control.md. The converter knows the Markdown our docs use: headings,
paragraphs, bullet lists, tables, fenced code, inline code and bold.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATE = "2026-11-25"


def section(markdown: str, title: str) -> str:
    """The text under ``## title`` up to the next heading of the same or a higher level."""
    match = re.search(rf"^(#+) {re.escape(title)}\n(.*?)(?=^#{{1,2}} |\Z)", markdown, re.S | re.M)
    if match is None:
        raise SystemExit(f"manpages: no section {title!r}")
    return match.group(2)


def demote(markdown: str) -> str:
    """A whole document as part of one man page section: its ``##`` become subsections."""
    return re.sub(r"^## ", "### ", markdown, flags=re.M)


def escape(text: str) -> str:
    text = text.replace("\\", "\\e").replace("-", "\\-")
    text = re.sub(r"\*\*(.+?)\*\*", r"\\fB\1\\fR", text)
    text = re.sub(r"`([^`]+)`", r"\\fB\1\\fR", text)
    text = re.sub(r"\[([^\]]+)\]\([^)]+\)", r"\1", text)
    return "".join(ch if ord(ch) < 128 else f"\\[u{ord(ch):04X}]" for ch in text)


def line(text: str) -> str:
    out = escape(text.strip())
    return "\\&" + out if out[:1] in (".", "'") else out


def convert(markdown: str, top: str = ".SH") -> Iterator[str]:
    """Markdown to man(7) requests."""
    lines = markdown.splitlines()
    i = 0
    while i < len(lines):
        text = lines[i]
        if text.startswith("```"):
            yield from _code(lines, i)
            i = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```")) + 1
            continue
        if text.startswith("#"):
            level, _, title = text.partition(" ")
            request = top if len(level) <= 2 else ".SS"
            yield f"{request} {line(title.upper() if request == '.SH' else title)}"
        elif text.startswith("|"):
            i = yield from _table(lines, i)
            continue
        elif text.lstrip().startswith(("- ", "* ")) or re.match(r"\s*\d+\. ", text):
            item, i = _gather(lines, i)
            yield ".IP \\(bu 2"
            yield line(re.sub(r"^\s*(?:[-*]|\d+\.) ", "", item))
            continue
        elif text.strip():
            para, i = _gather(lines, i)
            yield ".PP"
            yield line(para)
            continue
        i += 1


def _gather(lines: list[str], i: int) -> tuple[str, int]:
    """A paragraph or list item with its continuation lines."""
    parts = [lines[i]]
    i += 1
    while i < len(lines) and lines[i].strip() and lines[i].startswith("  "):
        parts.append(lines[i].strip())
        i += 1
    if not lines[i - 1].lstrip().startswith(("- ", "* ")):
        while (
            i < len(lines) and lines[i].strip() and not lines[i].startswith(("#", "|", "```", "- "))
        ):
            parts.append(lines[i].strip())
            i += 1
    return " ".join(parts), i


def _code(lines: list[str], i: int) -> Iterator[str]:
    yield ".PP"
    yield ".RS 4"
    yield ".nf"
    for text in lines[i + 1 :]:
        if text.startswith("```"):
            break
        yield "\\&" + text.replace("\\", "\\e")
    yield ".fi"
    yield ".RE"


def _table(lines: list[str], i: int) -> Iterator[str]:
    """A table as tagged paragraphs: the first cell is the tag, the rest the text."""
    rows = []
    while i < len(lines) and lines[i].startswith("|"):
        cells = [c.strip() for c in lines[i].strip().strip("|").split("|")]
        if not all(set(c) <= set("-: ") for c in cells):
            rows.append(cells)
        i += 1
    header, body = rows[0], rows[1:]
    for cells in body:
        yield ".TP"
        yield line(cells[0])
        rest = [
            f"{h}: {c}" if h and k else c
            for k, (h, c) in enumerate(zip(header[1:], cells[1:], strict=False))
            if c
        ]
        yield line("; ".join(rest)) if rest else ".PP"
    return i


def page(name: str, number: int, summary: str, synopsis: list[str], body: str) -> str:
    head = [
        f'.TH {name.upper()} {number} "{DATE}" "milter-agent" "milter-agent"',
        ".SH NAME",
        f"{name} \\- {summary}",
        ".SH SYNOPSIS",
        *[f"{line(s)}\n.br" for s in synopsis],
    ]
    return "\n".join([*head, *convert(body)]) + "\n"


def pages() -> dict[str, str]:
    readme = (ROOT / "README.md").read_text()
    config = (ROOT / "docs" / "configuration.md").read_text()
    filters = (ROOT / "docs" / "filters.md").read_text()
    control = (ROOT / "docs" / "control.md").read_text()
    testing = (ROOT / "docs" / "testing.md").read_text()
    intro = readme.split("## ", 1)[0].split("\n", 1)[1]
    daemon = (
        "## Description\n"
        + intro
        + "## Options\n"
        + section(config, "Command-line options")
        + "## Running as a user\n"
        + section(readme, "Running as a user")
        + filters.split("\n", 1)[1]
        + "## Offline test\n"
        + demote(testing.split("\n", 1)[1])
        + "## See also\n`milter-agent.conf`(5), `ma-client`(8)\n"
    )
    return {
        "milter-agent.8": page(
            "milter-agent",
            8,
            "mail filter (milter) daemon running a pipeline of filters",
            [
                "milter-agent [options]",
                "milter-agent -c FILE --check",
                "milter-agent test [options] --from SENDER --rcpt RCPT MESSAGE",
            ],
            daemon,
        ),
        "milter-agent.conf.5": page(
            "milter-agent.conf",
            5,
            "milter-agent configuration file",
            ["/etc/mail/milter-agent.conf"],
            config.split("\n", 1)[1] + "## See also\n`milter-agent`(8), `ma-client`(8)\n",
        ),
        "ma-client.8": page(
            "ma-client",
            8,
            "show and control a running milter-agent",
            [
                "ma-client [SOCKET] 1|2|3|status|settings|filters|addresses [--json]",
                "ma-client [SOCKET] reload|reset-stats [--json]",
                "ma-client [SOCKET] enable|disable NAME",
            ],
            control.split("\n", 1)[1] + "## See also\n`milter-agent`(8), `milter-agent.conf`(5)\n",
        ),
    }


def main() -> int:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "man"
    out.mkdir(parents=True, exist_ok=True)
    for name, text in pages().items():
        (out / name).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
