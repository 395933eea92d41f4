"""The control socket: peer credentials decide who is served; answers and ma-client output."""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from milter_agent.control import client
from milter_agent.control.server import ControlServer

NOBODY = pwd.getpwnam("nobody")
ADMIN_GID = 4242  # a group id nobody is not in, unless the test gives it


@pytest.fixture
def public_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="ma-ctl-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def as_nobody(path: str, groups: list[int]) -> tuple[str, int]:
    """Ask the control socket from a child process running as nobody; (answer, client code)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: drop to nobody, ask, report through the pipe, exit
        try:
            os.setgroups(groups)
            os.setgid(NOBODY.pw_gid)
            os.setuid(NOBODY.pw_uid)
            try:
                answer, code = json.dumps(client.ask(path, "status", timeout=5)), 0
            except client.ClientError as exc:
                answer, code = str(exc), exc.code
            os.write(write_end, json.dumps([answer, code]).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    os.waitpid(pid, 0)
    with os.fdopen(read_end, "rb") as pipe:
        answer, code = json.loads(pipe.read())
    return answer, code


def serve_and_ask(directory: Path, groups: list[int], admin_gid: int | None) -> tuple[str, int]:
    async def go() -> tuple[str, int]:
        path = str(directory / "cmd")
        server = ControlServer(path, {"status": lambda _args: {"up": True}}, admin_gid=admin_gid)
        await server.start()
        os.chmod(path, 0o666)  # let the file system allow it: the peer check must refuse
        try:
            return await asyncio.get_running_loop().run_in_executor(None, as_nobody, path, groups)
        finally:
            await server.stop()

    return asyncio.run(go())


def test_other_user_is_refused(public_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    answer, code = serve_and_ask(public_dir, [], ADMIN_GID)
    assert (answer, code) == ("permission denied", client.EXIT_DENIED)
    assert "control socket: refused pid" in caplog.text and f"uid {NOBODY.pw_uid}" in caplog.text


def test_member_of_admin_group_is_served(public_dir: Path) -> None:
    answer, code = serve_and_ask(public_dir, [ADMIN_GID], ADMIN_GID)
    assert code == 0 and json.loads(answer) == {"up": True}


def test_root_is_served_and_errors_are_answers(public_dir: Path) -> None:
    async def go() -> None:
        path = str(public_dir / "cmd")
        handlers = {
            "status": lambda _a: {"up": True},
            "enable": lambda a: (_ for _ in ()).throw(ValueError(f"no filter named {a[0]!r}")),
        }
        server = ControlServer(path, handlers)
        await server.start()
        loop = asyncio.get_running_loop()
        try:
            assert await loop.run_in_executor(None, client.ask, path, "status") == {"up": True}
            with pytest.raises(client.ClientError, match="no filter named 'x'") as caught:
                await loop.run_in_executor(None, client.ask, path, "enable", "x")
            assert caught.value.code == client.EXIT_REFUSED
            with pytest.raises(client.ClientError, match="unknown command"):
                await loop.run_in_executor(None, client.ask, path, "nonsense")
        finally:
            await server.stop()

    asyncio.run(go())


def test_missing_daemon_and_usage_exit_codes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert client.main([str(tmp_path / "nothing-here"), "status"]) == client.EXIT_NO_DAEMON
    assert "no control socket at" in capsys.readouterr().err
    assert client.main([str(tmp_path / "x"), "frobnicate"]) == client.EXIT_USAGE


def test_tables_are_aligned() -> None:
    rows = [
        {"name": "a", "runs": 1, "verdicts": {"continue": 1}},
        {"name": "longer", "runs": 20, "verdicts": {}},
    ]
    assert client.table(rows, ("name", "runs", "verdicts")).splitlines() == [
        "NAME    RUNS  VERDICTS",
        "a       1     continue=1",
        "longer  20    -",
    ]
