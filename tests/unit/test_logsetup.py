"""Log targets and levels: stderr, journald-style stdout, syslog with the mail facility; what
-l 0, 1 and 2 let through."""

from __future__ import annotations

import io
import logging
import os
import re
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from milter_agent import logsetup
from milter_agent.logsetup import DETAIL, level_for, make_handler, setup_logging

MAIL = 2  # the syslog mail facility: priority = facility * 8 + severity


@pytest.fixture
def root_logger() -> Iterator[logging.Logger]:
    """The root logger, restored after the test (setup_logging replaces its handlers)."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield root
    for handler in root.handlers[:]:
        root.removeHandler(handler)
        handler.close()
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)


@pytest.fixture
def syslog_socket(tmp_path: Path) -> Iterator[tuple[str, socket.socket]]:
    """A Unix datagram socket standing in for /dev/log."""
    path = str(tmp_path / "log")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        sock.settimeout(5)
        yield path, sock


def test_detail_is_a_named_level_between_debug_and_info() -> None:
    assert logging.DEBUG < DETAIL < logging.INFO
    assert logging.getLevelName(DETAIL) == "DETAIL"


@pytest.mark.parametrize(
    ("log_level", "verbose", "expected"),
    [
        (0, False, logging.INFO),
        (0, True, DETAIL),
        (1, False, DETAIL),
        (1, True, logging.DEBUG),
        (2, False, logging.DEBUG),
        (5, False, logging.DEBUG),
    ],
)
def test_l_and_v_choose_the_level(log_level: int, verbose: bool, expected: int) -> None:
    assert level_for(log_level, verbose) == expected


@pytest.mark.parametrize(
    ("log_level", "shown"),
    [
        (0, ["info", "warning"]),
        (1, ["detail", "info", "warning"]),
        (2, ["debug", "detail", "info", "warning"]),
    ],
)
def test_each_level_adds_what_it_says(
    root_logger: logging.Logger,
    log_level: int,
    shown: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stream = io.StringIO()
    monkeypatch.setattr("sys.stderr", stream)
    setup_logging("stderr", log_level)
    log = logging.getLogger("milter_agent.test")
    log.debug("debug")
    log.log(DETAIL, "detail")
    log.info("info")
    log.warning("warning")
    assert [line.rsplit(": ", 1)[1] for line in stream.getvalue().splitlines()] == shown


def test_stderr_lines_have_time_pid_and_level_name(
    root_logger: logging.Logger, monkeypatch: pytest.MonkeyPatch
) -> None:
    stream = io.StringIO()
    monkeypatch.setattr("sys.stderr", stream)
    setup_logging("stderr", 1)
    logging.getLogger("milter_agent.test").log(DETAIL, "QID: step 1/1 scan: continue in 3.0ms")
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} milter-agent\[\d+\] DETAIL: "
        r"QID: step 1/1 scan: continue in 3\.0ms\n",
        stream.getvalue(),
    ), stream.getvalue()


def test_stdout_lines_carry_sd_daemon_priorities(
    root_logger: logging.Logger, monkeypatch: pytest.MonkeyPatch
) -> None:
    stream = io.StringIO()
    monkeypatch.setattr("sys.stdout", stream)
    setup_logging("stdout", 2)
    log = logging.getLogger("milter_agent.test")
    log.debug("d")
    log.log(DETAIL, "x")
    log.info("i")
    log.warning("w")
    log.error("e")
    log.critical("c")
    assert stream.getvalue().splitlines() == ["<7>d", "<6>x", "<6>i", "<4>w", "<3>e", "<2>c"]


def test_syslog_uses_the_mail_facility_and_sends_detail_as_info(
    root_logger: logging.Logger, syslog_socket: tuple[str, socket.socket]
) -> None:
    path, sock = syslog_socket
    setup_logging("syslog", 1, syslog_address=path)
    log = logging.getLogger("milter_agent.test")
    log.log(DETAIL, "step detail")
    log.info("summary")
    log.warning("notice")
    received = [sock.recv(4096).decode() for _ in range(3)]
    info, warning = MAIL * 8 + 6, MAIL * 8 + 4  # <22> and <20>
    assert received == [
        f"<{info}>milter-agent[{os.getpid()}]: step detail\x00",
        f"<{info}>milter-agent[{os.getpid()}]: summary\x00",
        f"<{warning}>milter-agent[{os.getpid()}]: notice\x00",
    ]


def test_syslog_handler_defaults_to_dev_log(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[object] = []

    class Recording(logsetup.MailSysLogHandler):
        def __init__(self, address: str | tuple[str, int]) -> None:
            seen.append(address)
            logging.Handler.__init__(self)

    monkeypatch.setattr(logsetup, "MailSysLogHandler", Recording)
    monkeypatch.setattr(logsetup.os.path, "exists", lambda p: p == "/dev/log")
    make_handler("syslog")
    monkeypatch.setattr(logsetup.os.path, "exists", lambda p: False)
    make_handler("syslog")
    assert seen == ["/dev/log", ("localhost", 514)]


def test_reconfiguring_replaces_the_handler(
    root_logger: logging.Logger, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = io.StringIO(), io.StringIO()
    monkeypatch.setattr("sys.stderr", first)
    setup_logging("stderr")
    monkeypatch.setattr("sys.stdout", second)
    setup_logging("stdout")
    logging.getLogger("milter_agent.test").info("once")
    assert (first.getvalue(), second.getvalue()) == ("", "<6>once\n")
    assert len(root_logger.handlers) == 1
