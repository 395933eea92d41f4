"""The protocol package is sans-IO: importing it must not pull in asyncio or sockets."""

from __future__ import annotations

import subprocess
import sys

FORBIDDEN = ("asyncio", "socket", "_socket", "selectors", "ssl")

CHECK = f"""
import sys
import milter_agent.protocol
from milter_agent.protocol import *
loaded = sorted(m for m in {FORBIDDEN!r} if m in sys.modules)
print(",".join(loaded))
"""


def test_protocol_package_imports_no_io_modules() -> None:
    result = subprocess.run(
        [sys.executable, "-I", "-c", CHECK], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "", f"protocol package imported: {result.stdout.strip()}"


def test_the_check_itself_detects_an_io_import() -> None:
    code = CHECK.replace("import milter_agent.protocol", "import asyncio, milter_agent.protocol")
    result = subprocess.run(
        [sys.executable, "-I", "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert "asyncio" in result.stdout
