"""``ma-client``: ask a running milter-agent for its settings, filters and statistics.

    ma-client [SOCKET] 1|2|3                  the seed's numbers: settings, filters, addresses
    ma-client [SOCKET] status|settings|filters|addresses|reload|reset-stats [--json]
    ma-client [SOCKET] enable|disable NAME    switch a filter on or off

Exit codes: 0 done, 1 the daemon refused the command, 2 usage, 3 no daemon at the socket,
4 access refused, 5 no answer in time.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
from collections.abc import Sequence
from typing import Any

from milter_agent.config.model import DEFAULT_CONTROL_SOCKET
from milter_agent.control import protocol

EXIT_REFUSED, EXIT_USAGE, EXIT_NO_DAEMON, EXIT_DENIED, EXIT_TIMEOUT = 1, 2, 3, 4, 5
NUMBERS = {"1": "settings", "2": "filters", "3": "addresses"}


class ClientError(Exception):
    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def socket_path(spec: str) -> str:
    for prefix in ("unix:", "local:"):
        if spec.startswith(prefix):
            return spec[len(prefix) :]
    return spec


def ask(spec: str, command: str, *args: str, timeout: float = 10.0) -> Any:
    """Send one request; the answer's data, or ClientError."""
    path = socket_path(spec)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(path)
            sock.sendall(protocol.request(command, *args))
            data = b""
            while not data.endswith(b"\n") and len(data) < 16 * 1024 * 1024:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
        except FileNotFoundError:
            raise ClientError(f"no control socket at {path}", EXIT_NO_DAEMON) from None
        except ConnectionRefusedError:
            raise ClientError(f"no daemon listening at {path}", EXIT_NO_DAEMON) from None
        except PermissionError:
            raise ClientError(f"access to {path} refused", EXIT_DENIED) from None
        except TimeoutError:
            raise ClientError(f"no answer from {path} within {timeout:g}s", EXIT_TIMEOUT) from None
    try:
        answer = protocol.decode(data)
    except ValueError:
        raise ClientError(f"unreadable answer from {path}", EXIT_REFUSED) from None
    if not answer.get("ok"):
        error = str(answer.get("error", "failed"))
        raise ClientError(error, EXIT_DENIED if error == "permission denied" else EXIT_REFUSED)
    return answer.get("data")


def table(rows: list[dict[str, Any]], columns: Sequence[str]) -> str:
    """Aligned plain-text columns."""
    cells = [[str(c).upper() for c in columns]]
    cells += [[_cell(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    return "\n".join(
        "  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in cells
    )


def _cell(value: Any) -> str:
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in value.items()) or "-"
    if isinstance(value, list):
        return " ".join(map(str, value)) or "-"
    return "-" if value is None else str(value)


FILTER_COLUMNS = (
    "name", "kind", "mode", "disabled", "runs", "skipped", "verdicts", "errors", "timeouts",
    "kills", "running", "waiting", "mean_ms", "p95_ms", "max_ms",
)  # fmt: skip
ADDRESS_COLUMNS = ("name", "message_sender", "message_recipient", "matches", "changes")


def render(command: str, data: Any) -> str:
    if command == "filters":
        return table(data, FILTER_COLUMNS)
    if command == "addresses":
        return table(data, ADDRESS_COLUMNS)
    if isinstance(data, dict):
        width = max((len(k) for k in data), default=0)
        return "\n".join(f"{k.ljust(width)}  {_cell(v)}" for k, v in data.items())
    return _cell(data)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ma-client", description=__doc__.split("\n\n")[0])
    parser.add_argument("words", nargs="+", metavar="[SOCKET] COMMAND [NAME]")
    parser.add_argument("--json", action="store_true", help="print the answer as JSON")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds to wait (10)")
    options = parser.parse_args(argv)
    words = list(options.words)
    spec = DEFAULT_CONTROL_SOCKET
    if "/" in words[0] or words[0].startswith(("unix:", "local:")):
        spec = words.pop(0)
    if not words:
        parser.print_usage(sys.stderr)
        return EXIT_USAGE
    command = NUMBERS.get(words[0], words[0])
    if command not in protocol.COMMANDS:
        print(f"ma-client: unknown command {words[0]!r}", file=sys.stderr)
        return EXIT_USAGE
    try:
        data = ask(spec, command, *words[1:], timeout=options.timeout)
    except ClientError as exc:
        print(f"ma-client: {exc}", file=sys.stderr)
        return exc.code
    print(json.dumps(data, indent=2, default=str) if options.json else render(command, data))
    return 0
