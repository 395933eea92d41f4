"""Fixtures shared by every test directory: a private Postfix instance and a recording SMTP
sink (both one per session, reset per test), free ports, and the milter-agent daemon."""

from __future__ import annotations

import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

import pytest

# `import support` must work whatever pytest's import mode or rootdir layout is.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from support.daemon import MilterAgentDaemon
from support.fixtures import started_or_fail
from support.postfix import PostfixError, PostfixInstance, postfix_available
from support.sink import SmtpSink
from support.util import free_port as _free_port

_POSTFIX_LOG_MARK = pytest.StashKey[int]()
_DAEMONS = pytest.StashKey[list[MilterAgentDaemon]]()
_OWN_TEMP = pytest.StashKey[Path]()


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@pytest.hookimpl(tryfirst=True)  # before pytest's tmpdir plugin reads --basetemp
def pytest_configure(config: pytest.Config) -> None:
    # A CI cancel or `timeout` sends SIGTERM, which by default kills Python without running
    # finalizers or atexit, leaving Postfix running. As KeyboardInterrupt, pytest tears down.
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _interrupt)
    if config.option.basetemp is None:
        config.option.basetemp = _private_basetemp(config)


def _private_basetemp(config: pytest.Config) -> Path:
    """A base temp directory of this run's own. pytest's default, /tmp/pytest-of-<user>, is
    shared by every run of that user: one started meanwhile makes it 0700 again (locking
    Postfix's smtpd, user postfix, out of the milter sockets below it) and deletes older runs'
    directories. Removed at the end of the run unless MA_KEEP_TMP is set."""
    own = Path(tempfile.mkdtemp(prefix=f"ma-pytest-{os.getpid()}-"))
    own.chmod(0o711)  # others may pass through to the sockets, not list
    config.stash[_OWN_TEMP] = own
    return own / "run"  # pytest empties and creates it, inside the directory we own


def pytest_unconfigure(config: pytest.Config) -> None:
    own = config.stash.get(_OWN_TEMP, None)
    if own is not None and not os.environ.get("MA_KEEP_TMP"):
        shutil.rmtree(own, ignore_errors=True)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """On failure, attach this test's part of the maillog and the daemons' stderr."""
    report = yield
    if report.failed:
        funcargs = getattr(item, "funcargs", {})
        pf = funcargs.get("postfix")
        if isinstance(pf, PostfixInstance):
            since = item.stash.get(_POSTFIX_LOG_MARK, 0)
            report.sections.append(("postfix maillog", pf.log_text(since)[-20000:]))
        for d in item.stash.get(_DAEMONS, []):
            report.sections.append((f"milter-agent {d.socket_spec} stderr", d.log_text()[-20000:]))
    return report


@pytest.fixture
def free_port() -> Callable[[], int]:
    """Call it to get a TCP port on 127.0.0.1 that is free right now."""
    return _free_port


@pytest.fixture(scope="session")
def sink_session() -> Iterator[SmtpSink]:
    with SmtpSink() as s:
        yield s


@pytest.fixture
def sink(sink_session: SmtpSink) -> SmtpSink:
    """The session's SMTP sink, emptied for this test."""
    sink_session.clear()
    return sink_session


@pytest.fixture(scope="session")
def postfix_session(
    sink_session: SmtpSink,
    tmp_path_factory: pytest.TempPathFactory,
    request: pytest.FixtureRequest,
) -> Iterator[PostfixInstance]:
    # Fail, never skip: a CI machine without Postfix must show up red.
    reason = postfix_available()
    if reason:
        pytest.fail(f"cannot run a private Postfix instance: {reason}", pytrace=False)
    parent = tmp_path_factory.mktemp("postfix")
    yield started_or_fail(
        request,
        lambda: PostfixInstance(sink_session.address, parent_dir=parent),
        PostfixError,
        "private Postfix instance",
    )


@pytest.fixture
def postfix(
    postfix_session: PostfixInstance, sink: SmtpSink, request: pytest.FixtureRequest
) -> PostfixInstance:
    """The session's Postfix instance, reset to the baseline for this test: no milter,
    default parameters, empty queue, empty sink. Relays everything to ``sink``."""
    postfix_session.reset()
    sink.clear()  # anything relayed before the flush
    request.node.stash[_POSTFIX_LOG_MARK] = postfix_session.log_mark()
    return postfix_session


@pytest.fixture
def milter_agent(
    tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Callable[..., MilterAgentDaemon]]:
    """Factory: ``milter_agent(config_text, *, inet=False, extra_args=(), timeout=20,
    socket_mode="0666", **helper_kwargs)`` writes the config, starts the daemon on a Unix
    socket in tmp_path (or on a free loopback port with ``inet=True``) and waits until it
    is ready; ``daemon.postfix_spec`` is what to give ``postfix.set_milter``. The Unix
    socket is made 0666 because the daemon's default 0660 (owner root) locks Postfix's smtpd
    out (measured: 451 at MAIL FROM). Every daemon is stopped at teardown."""
    started: list[MilterAgentDaemon] = []
    request.node.stash[_DAEMONS] = started

    def start(
        config_text: str,
        *,
        inet: bool = False,
        extra_args: Sequence[str] = (),
        timeout: float = 20.0,
        socket_mode: str | None = "0666",
        **helper_kwargs: Any,
    ) -> MilterAgentDaemon:
        work = tmp_path / f"agent{len(started)}"
        work.mkdir()
        config = work / "milter-agent.conf"
        config.write_text(config_text)
        sock = f"inet:{_free_port()}@127.0.0.1" if inet else f"unix:{work / 'milter.sock'}"
        daemon = MilterAgentDaemon(
            config,
            sock,
            f"unix:{work / 'control.sock'}",
            work / "spool",
            work,
            extra_args=extra_args,
            socket_mode=None if inet else socket_mode,
            **helper_kwargs,
        )
        started.append(daemon)
        daemon.start(timeout)
        return daemon

    yield start
    for d in started:
        d.stop()
