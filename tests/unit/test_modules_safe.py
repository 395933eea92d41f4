"""module_safe_use: modules in worker processes. Crashes, hangs and exceptions stay there, the
next message works, and with -M a hung worker is killed at its timeout."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import re
import signal
import subprocess
import textwrap
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from milter_agent.config.model import FilterSpec
from milter_agent.errors import FilterError
from milter_agent.filters.module import ModuleHost, worker_limits
from milter_agent.filters.module_api import ModuleMessage, ModuleResult
from milter_agent.filters.module_pool import (
    MIB,
    ModuleTimeout,
    WorkerLimits,
    WorkerPool,
    open_fds,
    resident_memory,
)
from milter_agent.registry import NoFreeInstance

REPO = Path(__file__).resolve().parents[2]
MSG = ModuleMessage("a@example.com", ("b@example.com",), (("Subject", "Hi"),), {"i": "Q1"})
T = TypeVar("T")

CRASH_C = """
#include <stdlib.h>
#include <string.h>
#include "milter_agent_module.h"
int process_message_by_module(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "abort") == 0)
        abort();
    if (argc > 1 && strcmp(argv[1], "null") == 0) {
        volatile int *nowhere = NULL;
        return *nowhere;
    }
    return argc;
}
"""

LOOPING = """
import os, sys
from milter_agent.filters.module_api import ModuleResult
def process_message_by_module(args, message):
    print("stdout is not the reply channel")
    os.write(1, b"neither is fd 1\\n")
    if args and args[0] == "loop":
        while True:
            pass
    if args and args[0] == "raise":
        raise KeyError("nope")
    if args and args[0] == "exit":
        os._exit(9)
    return ModuleResult(
        "tempfail", text=f"{os.getpid()} {message.subject} {message.macros['i']}",
        add_headers=[("X-Worker", str(os.getpid()))], new_body=b"x\\n",
    )
"""


@pytest.fixture(scope="module")
def crash_so(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("c")
    (directory / "crash.c").write_text(CRASH_C)
    out = directory / "crash.so"
    subprocess.run(
        [
            "gcc",
            "-shared",
            "-fPIC",
            f"-I{REPO / 'include'}",
            "-o",
            str(out),
            str(directory / "crash.c"),
        ],
        check=True,
        timeout=60,
    )
    return out


def safe(name: str, module: str, timeout: float = 10.0, instances: int = 0) -> FilterSpec:
    return FilterSpec(
        name=name,
        argv=(),
        module_name=module,
        module_safe_use=True,
        timeout=timeout,
        single_instance=instances,
    )


def with_host(scenario: Callable[[ModuleHost], Awaitable[T]]) -> T:
    async def go() -> T:
        host = ModuleHost()
        try:
            return await scenario(host)
        finally:
            await host.close()

    return asyncio.run(go())


def alive(pid: int) -> bool:
    """True while the process exists, as a zombie too: a test that waits for a worker to be gone
    must see it reaped, not just exited, since an unreaped worker is a leak. (Tgid: a thread
    of some other process may get the number once the worker is gone.)"""
    try:
        with open(f"/proc/{pid}/status") as f:
            return any(line.split() == ["Tgid:", str(pid)] for line in f)
    except FileNotFoundError:
        return False


def worker_pids(host: ModuleHost, name: str) -> list[int]:
    pool = host.loaded[name]
    assert isinstance(pool, WorkerPool)
    return pool.pids


@pytest.mark.parametrize(("word", "signal_name"), [("abort", "SIGABRT"), ("null", "SIGSEGV")])
def test_a_crashing_c_module_fails_one_message_and_the_next_works(
    crash_so: Path, word: str, signal_name: str
) -> None:
    spec = safe("crash", str(crash_so))

    async def scenario(host: ModuleHost) -> tuple[int, str, int, int]:
        first = await host.call(spec, ["x"], MSG, kill=False)
        (old,) = worker_pids(host, "crash")
        with pytest.raises(FilterError) as crash:
            await host.call(spec, [word], MSG, kill=False)
        after = await host.call(spec, ["x", "y"], MSG, kill=False)
        (new,) = worker_pids(host, "crash")
        assert new != old and not alive(old)
        return first, str(crash.value), after, os.getpid()

    first, error, after, pid = with_host(scenario)
    assert (first, after) == (2, 3)
    assert error.startswith("module worker ") and error.endswith(f"died: killed by {signal_name}")
    assert pid == os.getpid()  # the daemon (this process) is still here


def test_a_hung_worker_is_killed_at_the_timeout_with_dash_m(tmp_path: Path) -> None:
    mod = tmp_path / "looping.py"
    mod.write_text(LOOPING)
    spec = safe("loop", str(mod), timeout=1.0)

    async def scenario(host: ModuleHost) -> tuple[str, float, int, Any]:
        await host.call(spec, [], MSG, kill=True)  # a worker is up and loaded
        (hung,) = worker_pids(host, "loop")
        started = time.monotonic()
        with pytest.raises(FilterError) as error:
            await host.call(spec, ["loop"], MSG, kill=True)
        seconds = time.monotonic() - started
        for _ in range(100):  # SIGKILL was sent; the exit is prompt
            if not alive(hung):
                break
            await asyncio.sleep(0.01)
        assert not alive(hung)
        return str(error.value), seconds, hung, await host.call(spec, [], MSG, kill=True)

    error, seconds, hung, after = with_host(scenario)
    assert error == f"timed out after 1s; worker {hung} killed"
    assert 1.0 <= seconds < 3
    assert isinstance(after, ModuleResult) and after.verdict == "tempfail"
    assert not after.text.startswith(f"{hung} ")


def test_without_dash_m_a_hung_worker_is_left_and_killed_at_shutdown(tmp_path: Path) -> None:
    mod = tmp_path / "looping.py"
    mod.write_text(LOOPING)
    spec = safe("loop", str(mod), timeout=0.5)
    host = ModuleHost()

    async def scenario() -> tuple[str, int]:
        await host.call(spec, [], MSG, kill=False)
        (hung,) = worker_pids(host, "loop")
        with pytest.raises(FilterError) as error:
            await host.call(spec, ["loop"], MSG, kill=False)
        await asyncio.sleep(0.3)
        assert alive(hung)
        await host.close()
        return str(error.value), hung

    error, hung = asyncio.run(scenario())
    assert error == f"timed out after 0.5s; worker {hung} left running, no verdict"
    assert not alive(hung)


def test_results_exceptions_and_exits_in_a_worker(tmp_path: Path) -> None:
    mod = tmp_path / "looping.py"
    mod.write_text(LOOPING)
    spec = safe("w", str(mod))

    async def scenario(host: ModuleHost) -> list[Any]:
        results: list[Any] = [await host.call(spec, [], MSG, kill=False)]
        with pytest.raises(FilterError) as raised:
            await host.call(spec, ["raise"], MSG, kill=False)
        results.append(str(raised.value))
        results.append(worker_pids(host, "w"))
        with pytest.raises(FilterError) as exited:
            await host.call(spec, ["exit"], MSG, kill=False)
        results.append(str(exited.value))
        return results

    result, raised, pids, exited = with_host(scenario)
    worker = int(result.text.split()[0])
    assert result == ModuleResult(
        "tempfail",
        text=f"{worker} Hi Q1",
        add_headers=(("X-Worker", str(worker)),),
        new_body=b"x\n",
    )
    assert worker != os.getpid() and raised == "KeyError: 'nope'"
    assert pids == [worker]  # an exception does not cost the worker
    assert exited == f"module worker {worker} died: exit status 9"


def test_a_module_that_cannot_load_in_a_worker_is_a_filter_error(tmp_path: Path) -> None:
    mod = tmp_path / "broken.py"
    mod.write_text("def other(args, message):\n    return 0\n")

    async def scenario(host: ModuleHost) -> str:
        with pytest.raises(FilterError) as error:
            await host.call(safe("b", str(mod)), [], MSG, kill=False)
        assert worker_pids(host, "b") == []
        return str(error.value)

    assert with_host(scenario) == f"module {mod} has no function process_message_by_module"


def test_workers_are_reused_bounded_and_stopped_with_teardown_on_reload(tmp_path: Path) -> None:
    log = tmp_path / "log"
    mod = tmp_path / "slow.py"
    mod.write_text(
        textwrap.dedent(
            f"""
            import os, time
            def note(text):
                with open({str(log)!r}, "a") as f:
                    f.write(text + "\\n")
            def setup(config):
                note("setup %d" % os.getpid())
            def process_message_by_module(args, message):
                time.sleep(0.05)
                return os.getpid() % 200 + 1
            def teardown():
                note("teardown %d" % os.getpid())
            """
        )
    )
    spec = safe("slow", str(mod), instances=2)

    async def scenario(host: ModuleHost) -> tuple[set[int], list[int]]:
        host.configure([spec])
        await asyncio.gather(*(host.call(spec, [], MSG, kill=False) for _ in range(6)))
        pids = set(worker_pids(host, "slow"))
        host.configure([])
        for _ in range(300):
            if not any(alive(pid) for pid in pids):
                break
            await asyncio.sleep(0.01)
        return pids, [pid for pid in pids if alive(pid)]

    pids, still_alive = with_host(scenario)
    assert len(pids) == 2 and still_alive == []
    lines = sorted(log.read_text().splitlines())
    assert lines == sorted([f"setup {pid}" for pid in pids] + [f"teardown {pid}" for pid in pids])


def test_a_worker_that_died_while_idle_is_replaced_before_the_next_message(
    crash_so: Path,
) -> None:
    spec = safe("idle", str(crash_so))

    async def scenario(host: ModuleHost) -> tuple[int, int, list[int]]:
        await host.call(spec, ["x"], MSG, kill=False)
        (old,) = worker_pids(host, "idle")
        os.kill(old, signal.SIGKILL)
        for _ in range(100):
            if not alive(old):
                break
            await asyncio.sleep(0.01)
        return old, await host.call(spec, ["x", "y"], MSG, kill=False), worker_pids(host, "idle")

    old, result, pids = with_host(scenario)
    assert result == 3 and len(pids) == 1 and pids != [old]


SLEEPY = """
import os, time
def process_message_by_module(args, message):
    if args and args[0] == "hang":
        time.sleep(float(args[1]))
    return 7
"""


async def until(condition: Callable[[], bool], seconds: float = 10.0) -> None:
    for _ in range(int(seconds / 0.02)):
        if condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not met in time")


def test_without_dash_m_hung_workers_keep_their_place_and_other_messages_are_answered(
    tmp_path: Path,
) -> None:
    mod = tmp_path / "sleepy.py"
    mod.write_text(SLEEPY)
    spec = safe("sleepy", str(mod), timeout=0.5, instances=2)

    async def hang(host: ModuleHost) -> str:
        with pytest.raises(FilterError) as error:
            await host.call(spec, ["hang", "2.5"], MSG, kill=False)
        return str(error.value)

    async def scenario(host: ModuleHost) -> list[Any]:
        seen: list[Any] = [await hang(host)]
        pool = host.loaded["sleepy"]
        assert isinstance(pool, WorkerPool)
        (first,) = pool.left_pids
        seen.append(await host.call(spec, [], MSG, kill=False))  # while the first still runs
        assert alive(first) and pool.left_pids == [first]
        seen.append(await hang(host))
        assert len(pool.left_pids) == 2 and pool.pids == []  # the pool is full of hung workers
        with pytest.raises(NoFreeInstance) as full:  # not a FilterError: it never ran
            await host.call(spec, [], MSG, kill=False)
        seen.append(str(full.value))
        left = pool.left_pids
        await until(lambda: not pool.left_pids)  # they finish, exit and free their places
        assert not any(alive(pid) for pid in left)
        seen.append(await host.call(spec, [], MSG, kill=False))
        return seen

    first_hang, answer, second_hang, full, later = with_host(scenario)
    assert first_hang.startswith("timed out after 0.5s; worker ")
    assert first_hang.endswith(" left running, no verdict")
    assert (answer, later) == (7, 7) and second_hang.endswith(" left running, no verdict")
    assert full == "no free module worker within 0.5s (2 of 2 left running after a timeout)"


RECYCLED = """
import os
LOG = {log!r}
LEAK = []
def note(text):
    with open(LOG, "a") as f:
        f.write(text + "\\n")
def setup(config):
    note("setup %d" % os.getpid())
def process_message_by_module(args, message):
    if args:
        LEAK.append(b"\\x01" * int(args[0]) * 1024 * 1024)  # touched, so resident
    return os.getpid() % 200 + 1
def teardown():
    note("teardown %d" % os.getpid())
"""


def test_a_worker_is_replaced_after_its_message_limit_and_tears_down(tmp_path: Path) -> None:
    log = tmp_path / "log"
    mod = tmp_path / "recycled.py"
    mod.write_text(RECYCLED.format(log=str(log)))
    spec = dataclasses.replace(
        safe("recycled", str(mod), instances=1),
        module_worker_max_messages=3,
        module_worker_max_rss=0,
    )

    async def scenario(host: ModuleHost) -> list[int]:
        pids = []
        for _ in range(7):
            await host.call(spec, [], MSG, kill=False)
            pids += worker_pids(host, "recycled") or [0]  # 0: replaced, none idle
        return pids

    pids = with_host(scenario)
    first, second, third = pids[0], pids[3], pids[6]
    assert pids == [first, first, 0, second, second, 0, third]
    assert len({first, second, third}) == 3
    lines = log.read_text().splitlines()
    for pid in (first, second):  # stopped the gentle way: teardown ran
        assert lines.index(f"setup {pid}") < lines.index(f"teardown {pid}")


def test_a_leaking_worker_is_replaced_and_the_daemon_does_not_grow(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="milter_agent.filters.module")
    log = tmp_path / "log"
    mod = tmp_path / "leaky.py"
    mod.write_text(RECYCLED.format(log=str(log)))
    spec = dataclasses.replace(
        safe("leaky", str(mod), instances=1),
        module_worker_max_messages=0,
        module_worker_max_rss=100 * MIB,
    )
    daemon_before = resident_memory(os.getpid())

    async def scenario(host: ModuleHost) -> list[list[int]]:
        seen = []
        for _ in range(4):  # 40 MiB more per message; replaced past 100 MiB
            await host.call(spec, ["40"], MSG, kill=False)
            seen.append(worker_pids(host, "leaky"))
        return seen

    seen = with_host(scenario)
    leaker = seen[0][0]
    assert seen[:3] == [[leaker], [leaker], []] and seen[3] != [leaker]
    assert not alive(leaker)
    daemon_after = resident_memory(os.getpid())
    assert daemon_before is not None and daemon_after is not None
    assert daemon_after - daemon_before < 30 * MIB  # the 120 MiB stayed in the worker
    (replaced,) = [r.getMessage() for r in caplog.records if "replaced" in r.getMessage()]
    assert re.fullmatch(
        rf"module {mod}: worker {leaker} replaced after its memory grew from \d+ to \d+ MiB",
        replaced,
    )


FD_LEAK = """
import os
KEPT = []
def process_message_by_module(args, message):
    KEPT.extend(os.open(os.devnull, os.O_RDONLY) for _ in range(int(args[0])))
    return 0
"""


def test_a_worker_leaking_file_descriptors_is_replaced(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="milter_agent.filters.module")
    mod = tmp_path / "fds.py"
    mod.write_text(FD_LEAK)
    spec = dataclasses.replace(safe("fds", str(mod), instances=1), module_worker_max_fds=30)

    async def scenario(host: ModuleHost) -> list[tuple[list[int], int | None]]:
        seen = []
        for _ in range(3):  # 20 more per message: replaced once past 30
            await host.call(spec, ["20"], MSG, kill=False)
            pids = worker_pids(host, "fds")
            seen.append((pids, open_fds(pids[0]) if pids else None))
        return seen

    (first, fds_1), (after_2, _), (after_3, _) = with_host(scenario)
    (leaker,) = first
    assert after_2 == []  # replaced after the second message; a new one runs the third
    assert len(after_3) == 1 and after_3 != first
    assert fds_1 is not None
    (replaced,) = [r.getMessage() for r in caplog.records if "replaced" in r.getMessage()]
    assert replaced == (
        f"module {mod}: worker {leaker} replaced after its open file descriptors grew "
        f"from {fds_1 - 20} to {fds_1 + 20}"
    )
    assert not alive(leaker)


def test_a_reload_gives_a_running_pool_its_new_limits_without_a_restart(tmp_path: Path) -> None:
    mod = tmp_path / "fds.py"
    mod.write_text(FD_LEAK)
    spec = safe("fds", str(mod), instances=1)
    assert worker_limits(spec) == WorkerLimits()  # the keys' defaults are the pool's

    async def scenario(host: ModuleHost) -> tuple[WorkerLimits, list[int], list[int]]:
        host.configure([spec])
        await host.call(spec, ["0"], MSG, kill=False)
        before = worker_pids(host, "fds")
        changed = dataclasses.replace(spec, module_worker_max_rss=0, module_worker_max_fds=5)
        host.configure([changed])
        pool = host.loaded["fds"]
        assert isinstance(pool, WorkerPool)
        await host.call(changed, ["0"], MSG, kill=False)
        return pool.limits, before, worker_pids(host, "fds")

    limits, before, after = with_host(scenario)
    assert limits == WorkerLimits(messages=10_000, rss_growth=0, fd_growth=5)
    assert before == after  # the same worker: no restart for new limits


def test_async_setup_and_async_process_functions_in_a_worker(tmp_path: Path) -> None:
    mod = tmp_path / "asynchronous.py"
    mod.write_text(
        textwrap.dedent(
            """
            import asyncio, os
            from milter_agent.filters.module_api import ModuleResult
            STATE = {}
            async def setup(config):
                await asyncio.sleep(0.01)
                STATE["filter"] = config.filter_name
            async def process_message_by_module(args, message):
                await asyncio.sleep(0.01)
                return ModuleResult("reject", text=f"{STATE['filter']} {os.getpid()} {args[0]}")
            """
        )
    )
    spec = safe("asynchronous", str(mod))

    async def scenario(host: ModuleHost) -> list[Any]:
        return [await host.call(spec, [word], MSG, kill=False) for word in ("one", "two")]

    first, second = with_host(scenario)
    name, pid, word = first.text.split()
    assert (name, word, first.verdict) == ("asynchronous", "one", "reject")
    assert int(pid) != os.getpid() and second.text == f"asynchronous {pid} two"


def test_a_timeout_error_raised_in_a_worker_is_the_modules_error(tmp_path: Path) -> None:
    mod = tmp_path / "own.py"
    mod.write_text(
        "import socket\ndef process_message_by_module(args, message):\n"
        "    raise socket.timeout('timed out')\n"
    )
    spec = safe("own", str(mod), timeout=5)

    async def scenario(host: ModuleHost) -> tuple[BaseException, list[int], list[int]]:
        with pytest.raises(FilterError) as first:
            await host.call(spec, [], MSG, kill=True)
        pids = worker_pids(host, "own")
        with pytest.raises(FilterError):
            await host.call(spec, [], MSG, kill=True)
        return first.value, pids, worker_pids(host, "own")

    error, pids, later = with_host(scenario)
    assert not isinstance(error, ModuleTimeout) and str(error) == "TimeoutError: timed out"
    assert pids == later and len(pids) == 1  # the worker was not killed


def test_a_reloaded_pool_loads_after_the_old_workers_tore_down(tmp_path: Path) -> None:
    log = tmp_path / "log"
    mod = tmp_path / "slowdown.py"
    mod.write_text(
        textwrap.dedent(
            f"""
            import os, time
            def note(text):
                with open({str(log)!r}, "a") as f:
                    f.write(text + "\\n")
            def setup(config):
                note("setup %g" % config.timeout)
            def process_message_by_module(args, message):
                if args:
                    time.sleep(float(args[0]))
                return 0
            def teardown():
                time.sleep(0.3)
                note("teardown")
            """
        )
    )
    before, after = safe("slowdown", str(mod), timeout=5), safe("slowdown", str(mod), timeout=6)

    async def scenario(host: ModuleHost) -> list[int]:
        host.configure([before])
        await asyncio.gather(*(host.call(before, ["0.1"], MSG, kill=False) for _ in range(2)))
        old = worker_pids(host, "slowdown")
        busy = asyncio.ensure_future(host.call(before, ["0.3"], MSG, kill=False))
        await asyncio.sleep(0.1)
        host.configure([after])  # one worker idle, one busy: both are stopped, with teardown
        await host.call(after, [], MSG, kill=False)
        assert await busy == 0
        return old

    old = with_host(scenario)
    assert len(old) == 2 and not any(alive(pid) for pid in old)
    assert log.read_text().splitlines() == [
        "setup 5",
        "setup 5",
        "teardown",
        "teardown",
        "setup 6",
        "teardown",
    ]
