"""End-to-end tests run through a real Postfix; the shared fixtures live in tests/conftest.py."""

from __future__ import annotations

from pathlib import Path

import pytest

_HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Everything in tests/e2e is e2e, even if a test forgets its marker: `-m "not e2e"`
    # must never run a test that needs Postfix.
    for item in items:
        if _HERE in Path(str(item.path)).resolve().parents:
            item.add_marker(pytest.mark.e2e)
