from __future__ import annotations

import pytest

from milter_agent.errors import ConfigError
from milter_agent.socketspec import SocketSpec, parse_socket_spec


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "unix:/var/spool/milter-agent/sock",
            SocketSpec("unix", path="/var/spool/milter-agent/sock"),
        ),
        ("local:/tmp/s", SocketSpec("unix", path="/tmp/s")),
        ("/tmp/s", SocketSpec("unix", path="/tmp/s")),
        ("inet:9900@127.0.0.1", SocketSpec("inet", host="127.0.0.1", port=9900)),
        ("inet:9900@localhost", SocketSpec("inet", host="localhost", port=9900)),
        ("inet:9900", SocketSpec("inet", port=9900)),
        ("inet6:9900@::1", SocketSpec("inet6", host="::1", port=9900)),
        ("inet6:9900@[::1]", SocketSpec("inet6", host="::1", port=9900)),
        ("inet:127.0.0.1:9900", SocketSpec("inet", host="127.0.0.1", port=9900)),
        ("inet:[::1]:9900", SocketSpec("inet6", host="::1", port=9900)),
    ],
)
def test_spellings(text: str, expected: SocketSpec) -> None:
    assert parse_socket_spec(text) == expected


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("inet:99999@127.0.0.1", "port must be"),
        ("inet:x@127.0.0.1", "port must be"),
        ("unix:relative/path", "absolute path"),
        ("tcp:1@h", "unknown socket type"),
        ("nonsense", "expected unix:/path"),
    ],
)
def test_errors_name_the_problem(text: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        parse_socket_spec(text)
