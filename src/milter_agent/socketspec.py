"""Listening socket specifications in the spellings postmasters use.

libmilter:  ``unix:/path``  ``local:/path``  ``inet:PORT@HOST``  ``inet6:PORT@HOST``  ``inet:PORT``
Postfix:    ``inet:HOST:PORT``  ``inet:[::1]:PORT``  and a bare ``/path`` for a Unix socket.
As in libmilter, ``inet:PORT`` without a host listens on every address.
"""

from __future__ import annotations

from dataclasses import dataclass

from milter_agent.errors import ConfigError


@dataclass(frozen=True, slots=True)
class SocketSpec:
    kind: str  # "unix", "inet" or "inet6"
    path: str = ""
    host: str = ""
    port: int = 0

    def __str__(self) -> str:
        if self.kind == "unix":
            return f"unix:{self.path}"
        return f"{self.kind}:{self.port}@{self.host or '*'}"


def _port(text: str, spec: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ConfigError(f"socket {spec!r}: port must be a number from 1 to 65535, not {text!r}")
    return int(text)


def parse_socket_spec(spec: str) -> SocketSpec:
    """Parse ``spec``; a ConfigError names what is wrong."""
    text = spec.strip()
    kind, sep, rest = text.partition(":")
    if text.startswith("/"):
        return SocketSpec("unix", path=text)
    if not sep or not rest:
        raise ConfigError(f"socket {spec!r}: expected unix:/path, inet:port@host or inet:host:port")
    kind = kind.lower()
    if kind in ("unix", "local"):
        if not rest.startswith("/"):
            raise ConfigError(f"socket {spec!r}: a Unix socket needs an absolute path")
        return SocketSpec("unix", path=rest)
    if kind not in ("inet", "inet6"):
        raise ConfigError(f"socket {spec!r}: unknown socket type {kind!r}")
    if "@" in rest:
        port, _, host = rest.partition("@")
    elif rest.startswith("["):
        host, _, port = rest[1:].partition("]:")
        kind = "inet6"
    elif rest.count(":") == 1:
        host, _, port = rest.partition(":")
    else:
        host, port = "", rest
    host = host.strip("[]")
    if ":" in host:
        kind = "inet6"
    return SocketSpec(kind, host=host, port=_port(port, spec))
