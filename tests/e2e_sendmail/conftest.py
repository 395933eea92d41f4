"""End-to-end tests through a real Sendmail 8.17 (Debian's sendmail-bin, unpacked, never
installed; see tests/support/sendmail.py and scripts/ensure-sendmail.sh).

Fixtures:
- ``sendmail`` (session): one private instance for the whole run, relaying to the session's
  sink. Before each test that uses it, it is reset to no milter and an empty queue (a restart,
  about 0.1 s, only when the milter changed). Give it a milter with ``sendmail.set_milter(spec)``.
- The shared ``sink``, ``milter_agent`` and ``free_port`` fixtures come from tests/conftest.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from support.fixtures import started_or_fail
from support.sendmail import (
    SendmailError,
    SendmailInstance,
    ensure_sendmail,
    sendmail_available,
)
from support.sink import SmtpSink

_HERE = Path(__file__).resolve().parent
_MARKS = pytest.StashKey[tuple[int, int]]()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # `-m "not e2e"` must never run a test that needs Sendmail.
    for item in items:
        if _HERE in Path(str(item.path)).resolve().parents:
            item.add_marker(pytest.mark.e2e)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """On failure, attach this test's part of Sendmail's syslog and SMTP trace."""
    report = yield
    if report.failed:
        sm = getattr(item, "funcargs", {}).get("sendmail")
        if isinstance(sm, SendmailInstance):
            log_mark, trans_mark = item.stash.get(_MARKS, (0, 0))
            report.sections.append(("sendmail maillog", sm.log_text(log_mark)[-20000:]))
            report.sections.append(
                ("sendmail SMTP trace (-X)", sm.transactions_text(trans_mark)[-20000:])
            )
    return report


@pytest.fixture(scope="session")
def sendmail(
    sink_session: SmtpSink,
    tmp_path_factory: pytest.TempPathFactory,
    request: pytest.FixtureRequest,
) -> Iterator[SendmailInstance]:
    """The session's private Sendmail. Fails (never skips) when it cannot be had."""
    reason = sendmail_available()
    if reason:
        pytest.fail(f"cannot run a private Sendmail: {reason}", pytrace=False)
    error = ""
    try:
        tree = ensure_sendmail()  # quick when the cache is there
    except SendmailError as e:
        error = f"the Sendmail packages could not be fetched or unpacked: {e}"
    if error:  # outside the except block: no chained traceback
        pytest.fail(error, pytrace=False)
    parent = tmp_path_factory.mktemp("sendmail")
    inst = started_or_fail(
        request,
        lambda: SendmailInstance(sink_session.address, tree=tree, parent_dir=parent),
        SendmailError,
        "private Sendmail",
    )
    yield inst
    inst.stop()
    left = inst.processes()
    assert not left, f"Sendmail processes left behind after stop(): {left}"


@pytest.fixture(autouse=True)
def _sendmail_per_test(request: pytest.FixtureRequest) -> None:
    """For tests that use ``sendmail``: no milter, empty queue, empty sink, log marks."""
    if "sendmail" not in request.fixturenames:
        return
    sm: SendmailInstance = request.getfixturevalue("sendmail")
    sink: SmtpSink = request.getfixturevalue("sink")
    sm.reset()
    sink.clear()
    request.node.stash[_MARKS] = (sm.log_mark(), sm.transactions_mark())
