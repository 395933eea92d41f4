"""Helpers for the session fixtures of the MTA instances (tests/conftest.py,
tests/e2e_sendmail/conftest.py)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, TypeVar

import pytest


class _Instance(Protocol):
    def start(self) -> None: ...

    def stop(self) -> None: ...


InstanceT = TypeVar("InstanceT", bound=_Instance)


def started_or_fail(
    request: pytest.FixtureRequest,
    make: Callable[[], InstanceT],
    errors: type[Exception],
    what: str,
) -> InstanceT:
    """``make()`` an instance, have it stopped when the fixture ends (also when start() fails
    half way) and start it. ``errors`` fail the run with ``what`` and the reason; a machine
    that cannot run the MTA must show up red, never skipped."""
    reason: str | None = None
    try:
        inst = make()
        request.addfinalizer(inst.stop)
        inst.start()
    except errors as e:
        reason = str(e)
    if reason is not None:  # outside the except block: no chained traceback around the message
        pytest.fail(f"{what} did not start: {reason}", pytrace=False)
    return inst
