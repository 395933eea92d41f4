"""Fault, hostile-input, injection and access tests (issue 10); fixtures in tests/conftest.py."""

from __future__ import annotations

from pathlib import Path

import pytest

_HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # A test here that drives the private Postfix is end-to-end: `-m "not e2e"` must skip it.
    for item in items:
        in_here = _HERE in Path(str(item.path)).resolve().parents
        if in_here and "postfix" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.e2e)
