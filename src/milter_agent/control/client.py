"""``ma-client``: ask a running milter-agent for its settings, filters and statistics.

    ma-client [SOCKET] 1|2|3                  the seed's numbers: settings, filters, addresses
    ma-client [SOCKET] status|settings|filters|addresses|reload|reset-stats [--json]
    ma-client [SOCKET] enable|disable NAME    switch a filter on or off

Exit codes: 0 done, 1 the daemon refused the command (or a reload), 2 usage, 3 no daemon at
the socket, 4 access refused, 5 no answer in time, 6 the daemon failed while answering.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import time
from collections.abc import Sequence
from typing import Any

from milter_agent.config.model import DEFAULT_CONTROL_SOCKET
from milter_agent.control import protocol

EXIT_REFUSED, EXIT_USAGE, EXIT_NO_DAEMON, EXIT_DENIED, EXIT_TIMEOUT, EXIT_INTERNAL = range(1, 7)
NUMBERS = {"1": "settings", "2": "filters", "3": "addresses"}
_EXIT_FOR_CODE = {protocol.PERMISSION_DENIED: EXIT_DENIED, protocol.INTERNAL_ERROR: EXIT_INTERNAL}
_MAX_ANSWER = 16 * 1024 * 1024


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
    try:
        data = _exchange(path, protocol.request(command, *args), timeout)
    except FileNotFoundError:
        raise ClientError(f"no control socket at {path}", EXIT_NO_DAEMON) from None
    except ConnectionRefusedError:
        raise ClientError(f"no daemon listening at {path}", EXIT_NO_DAEMON) from None
    except PermissionError:
        raise ClientError(f"access to {path} refused", EXIT_DENIED) from None
    except TimeoutError:
        raise ClientError(f"no answer from {path} within {timeout:g}s", EXIT_TIMEOUT) from None
    except OSError as exc:  # e.g. the daemon went away mid-answer: still one line, no trace
        raise ClientError(f"{path}: {exc.strerror or exc}", EXIT_NO_DAEMON) from None
    try:
        answer = protocol.decode(data)
    except ValueError:
        raise ClientError(f"unreadable answer from {path}", EXIT_REFUSED) from None
    if not answer.get("ok"):
        error = str(answer.get("error", "failed"))
        code = answer.get("code") or (
            protocol.PERMISSION_DENIED if error == "permission denied" else ""
        )
        raise ClientError(error, _EXIT_FOR_CODE.get(code, EXIT_REFUSED))
    return answer.get("data")


def _exchange(path: str, request: bytes, timeout: float) -> bytes:
    """Connect, send, read the answer line: all of it within ``timeout`` together, so a daemon
    that answers a byte at a time cannot keep the client waiting."""
    deadline = time.monotonic() + timeout

    def remaining() -> float:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        return left

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(remaining())
        sock.connect(path)
        sock.settimeout(remaining())
        sock.sendall(request)
        data = b""
        while not data.endswith(b"\n") and len(data) < _MAX_ANSWER:
            sock.settimeout(remaining())
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    return data


#: Fields holding seconds since the epoch, shown as local ISO times.
TIME_FIELDS = frozenset(
    {
        "last_run",
        "last_error_at",
        "last_match",
        "disabled_at",
        "stats_since",
        "config_loaded_at",
        "last_reload_error_time",
    }
)
#: Fields holding file modes, shown in octal as they are written in the configuration.
MODE_FIELDS = frozenset({"socket_mode"})
#: Fields holding cron expressions: they have spaces (and commas) of their own.
CRON_FIELDS = frozenset({"run_time", "skip_time"})
HEADINGS = {"disabled_reason": "why", "single_instance": "instances"}

FILTER_CONFIG_COLUMNS = ("name", "kind", "mode", "timeout", "single_instance", "line", "command")
FILTER_STATS_COLUMNS = (
    "name", "runs", "skipped", "verdicts", "errors", "timeouts", "queue_timeouts", "kills",
    "running", "waiting", "mean_ms", "p95_ms", "max_ms", "last_run", "disabled",
    "disabled_reason", "last_error",
)  # fmt: skip
ADDRESS_COLUMNS = (
    "name",
    "message_sender",
    "message_recipient",
    "run_time",
    "skip_time",
    "matches",
    "changes",
    "last_match",
)


def table(rows: list[dict[str, Any]], columns: Sequence[str]) -> str:
    """Aligned plain-text columns (one line per row: line breaks in a value become "; ")."""
    cells = [[HEADINGS.get(c, c).upper() for c in columns]]
    cells += [[protocol.one_line(show(c, row.get(c))) or "-" for c in columns] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    return "\n".join(
        "  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in cells
    )


def show(field: str, value: Any) -> str:
    """One value as text for people."""
    if value is None:
        return "-"
    if field in TIME_FIELDS and isinstance(value, int | float):
        return protocol.local_time(value)
    if field in MODE_FIELDS and isinstance(value, int):
        return f"{value:04o}"
    if field in CRON_FIELDS and isinstance(value, list):
        return "; ".join(map(str, value)) or "-"
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in value.items()) or "-"
    if isinstance(value, list | tuple):
        return " ".join(map(str, value)) or "-"
    return str(value)


def key_values(data: dict[str, Any]) -> str:
    """``key  value`` lines; the further lines of a multi-line value are indented under the
    value, so the key column stays intact."""
    width = max((len(k) for k in data), default=0)
    lines = []
    for key, value in data.items():
        first, *more = show(key, value).splitlines() or [""]
        lines.append(f"{key.ljust(width)}  {first}".rstrip())
        lines += [" " * (width + 2) + extra for extra in more]
    return "\n".join(lines)


def render(command: str, data: Any) -> str:
    if command == "filters":
        return table(data, FILTER_CONFIG_COLUMNS) + "\n\n" + table(data, FILTER_STATS_COLUMNS)
    if command == "addresses":
        return table(data, ADDRESS_COLUMNS)
    if isinstance(data, dict):
        return key_values(data)
    return show("", data)


def failure(command: str, data: Any) -> str | None:
    """Why an answered command still failed: a reload the daemon refused."""
    if command == "reload" and isinstance(data, dict) and data.get("reloaded") is False:
        error = protocol.one_line(str(data.get("error") or "")) or "no reason given"
        return f"reload refused, the old configuration stays: {error}"
    return None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ma-client", description=__doc__.split("\n\n")[0])
    parser.add_argument("words", nargs="+", metavar="[SOCKET] COMMAND [NAME]")
    parser.add_argument("--json", action="store_true", help="print the answer as JSON")
    parser.add_argument(
        "--timeout", type=float, default=10.0, help="seconds for the whole exchange (10)"
    )
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
        print(f"ma-client: {protocol.one_line(str(exc))}", file=sys.stderr)
        return exc.code
    print(json.dumps(data, indent=2, default=str) if options.json else render(command, data))
    why = failure(command, data)
    if why is not None:
        print(f"ma-client: {why}", file=sys.stderr)
        return EXIT_REFUSED
    return 0
