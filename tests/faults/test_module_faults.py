"""A filter module misbehaves: it raises in the daemon; in safe mode (worker processes) it
raises, calls os._exit, crashes in C (abort, a NULL dereference), hangs (-M: killed at its
timeout), leaks file descriptors, leaks memory. Each message gets a definite answer (-E:
tempfail on a filter error), and then the daemon is back to its baseline (faultkit.settle,
with the module's one worker allowed as a child): alive, the next message answered correctly,
its own fds and memory where they were, no zombie, no spool file.

The module is told the fault by the message's Subject; any other Subject gets the normal
answer, an added header ``X-Checked: yes``.
"""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from faults.faultkit import (
    Baseline,
    MilterClient,
    Packet,
    Proc,
    baseline,
    children,
    fd_count,
    message_commands,
    settle,
)
from support.daemon import MilterAgentDaemon

Agent = Callable[..., MilterAgentDaemon]
REPO = Path(__file__).resolve().parents[2]
MIB = 1024 * 1024
#: How much the leaking module keeps per message, and the workers' recycling limit.
LEAK_MIB = 100
RECYCLE_GROWTH_MIB = 256

PY_MODULE = f"""
import os, time
from milter_agent.filters.module_api import ModuleResult
LEAKED = []
def process_message_by_module(args, message):
    fault = message.subject
    if fault == "raise":
        raise RuntimeError("a module bug")
    if fault == "exit":
        os._exit(3)
    if fault == "hang":
        time.sleep(3600)
    if fault == "leak-fds":
        LEAKED.extend(os.open(os.devnull, os.O_RDONLY) for _ in range(50))
    if fault == "leak-memory":
        LEAKED.append(b"\\1" * ({LEAK_MIB} << 20))  # written, so resident
    if fault == "controls":
        raw = "a\\x1b[31mb\\x0cc\\x0bd\\x7fe\\x85f\\x9bg\\u2028h\\u2029i\\tj"
        with open(args[1], "w") as lines:
            lines.write("X-H: " + raw + "\\n")
        return ModuleResult(add_headers=[("X-Checked", raw)])
    return ModuleResult(add_headers=[("X-Checked", "yes")])
"""

C_MODULE = r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "milter_agent_module.h"
/* argv[1] = the Subject, argv[2] = the %h file */
int process_message_by_module(int argc, char **argv)
{
    FILE *headers;
    if (argc < 3)
        return 75;
    if (strcmp(argv[1], "abort") == 0)
        abort();
    if (strcmp(argv[1], "null") == 0) {
        volatile int *nowhere = NULL;
        return *nowhere;
    }
    headers = fopen(argv[2], "w");
    if (headers == NULL)
        return 75;
    fputs("X-Checked: yes\n", headers);
    fclose(headers);
    return 0;
}
"""


@pytest.fixture(scope="module")
def c_module(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("c")
    source = directory / "faulty.c"
    source.write_text(C_MODULE)
    out = directory / "faulty.so"
    cc = ["gcc", "-shared", "-fPIC", f"-I{REPO / 'include'}", "-o", str(out), str(source)]
    subprocess.run(cc, check=True, timeout=60)
    return out


def checked(got: list[Packet]) -> bool:
    return got == [(b"h", b"X-Checked\0 yes\0"), (b"c", b"")]


def start(
    tmp_path: Path,
    milter_agent: Agent,
    module: Path | None = None,
    *,
    safe: bool = True,
    kill: bool = False,
    extra: str = "",
) -> tuple[MilterAgentDaemon, Baseline]:
    """The daemon with the module (the Python one unless ``module``) as its one filter, with
    the ``extra`` lines, warmed up: in safe mode its one worker is running."""
    if module is None:
        module = tmp_path / "faulty.py"
        module.write_text(PY_MODULE)
    agent = milter_agent(
        f"""
[Filter]
task_name = faulty
module_name = "{module}"
module_safe_use = {"yes" if safe else "no"}
run_single_instance = 1
task_timeout = 1
exec_cmd = "%{{subject}} %h"
{extra}""",
        extra_args=["-H", "-E", *(["-M"] if kill else [])],
    )
    return agent, baseline(agent, checked)


def send(agent: MilterAgentDaemon, subject: str) -> list[Packet]:
    with MilterClient(agent.socket_spec) as mta:
        mta.handshake()
        return mta.message(message_commands(subject=subject))


def worker(agent: MilterAgentDaemon) -> Proc:
    (only,) = children(agent.pid)
    return only


def test_a_module_in_the_daemon_that_raises(tmp_path: Path, milter_agent: Agent) -> None:
    agent, base = start(tmp_path, milter_agent, safe=False)
    assert send(agent, "raise") == [(b"t", b"")]
    settle(agent, base)
    log = agent.log_text()
    assert "filter faulty failed: module raised RuntimeError: a module bug" in log
    assert "Traceback" not in log


#: fault -> (module: "py" or "c", what the log says, is the worker replaced?)
SAFE_FAULTS = {
    "raise": ("py", "RuntimeError: a module bug", False),
    "exit": ("py", "module worker {pid} died: exit status 3", True),
    "abort": ("c", "module worker {pid} died: killed by SIGABRT", True),
    "null": ("c", "module worker {pid} died: killed by SIGSEGV", True),
    "hang": ("py", "timed out after 1s; worker {pid} killed", True),
}


@pytest.mark.parametrize("fault", list(SAFE_FAULTS))
def test_a_safe_mode_module_fault_stays_in_its_worker(
    tmp_path: Path, milter_agent: Agent, c_module: Path, fault: str
) -> None:
    kind, reason, replaced = SAFE_FAULTS[fault]
    module = c_module if kind == "c" else None
    agent, base = start(tmp_path, milter_agent, module, kill=fault == "hang")
    before = worker(agent)
    started = time.monotonic()
    assert send(agent, fault) == [(b"t", b"")]
    assert time.monotonic() - started < 3  # the hang: 1 s task_timeout, then SIGKILL
    settle(agent, base, children_allowed=1)  # the old worker reaped, the fresh message served
    after = worker(agent)
    assert (after.pid != before.pid) == replaced, (before, after)
    assert f"filter faulty failed: {reason.format(pid=before.pid)}" in agent.log_text()
    assert "Traceback" not in agent.log_text()


#: What the MTA may get in a header packet: printable text, tab and space, and the NULs that end
#: the name and the value; no other control character (C0, DEL, C1, U+2028, U+2029).
RAW_CONTROL = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]")


@pytest.mark.parametrize("safe", [False, True])
def test_control_characters_in_a_modules_headers_never_reach_the_mta(
    tmp_path: Path, milter_agent: Agent, safe: bool
) -> None:
    """From its %h file and from its ModuleResult, in the daemon and in a worker."""
    agent, base = start(tmp_path, milter_agent, safe=safe)
    got = send(agent, "controls")
    blanked = " a [31mb c d e f g h i\tj"
    assert got == [
        (b"h", b"X-H\0" + blanked.encode() + b"\0"),
        (b"h", b"X-Checked\0" + blanked.encode() + b"\0"),
        (b"c", b""),
    ]
    for _, data in got[:2]:
        name, value, end = data.decode().split("\0")
        assert not RAW_CONTROL.search(name + value) and end == ""
    settle(agent, base, children_allowed=int(safe))


def test_a_safe_mode_module_leaking_memory_is_recycled(tmp_path: Path, milter_agent: Agent) -> None:
    """Workers are replaced once they grew by more than 256 MiB since the load (module_pool's
    WorkerLimits): three messages keeping 100 MiB each. The daemon's own memory never sees
    it, not even at its peak."""
    agent, base = start(tmp_path, milter_agent)
    leaking = worker(agent)
    peak = agent.peak_rss_kb()
    for _ in range(RECYCLE_GROWTH_MIB // LEAK_MIB + 1):
        assert send(agent, "leak-memory") == [(b"h", b"X-Checked\0 yes\0"), (b"c", b"")]
    settle(agent, base, children_allowed=1)
    assert worker(agent).pid != leaking.pid
    assert f"worker {leaking.pid} replaced after its memory grew from" in agent.log_text()
    assert agent.peak_rss_kb() - peak < 8 * 1024


#: module_worker_max_fds for the fd-leak test: the worker keeps 50 descriptors a message, so it
#: is replaced after its third message (150 more).
FD_GROWTH = 120


def test_a_safe_mode_module_leaking_fds_is_recycled_and_leaks_only_in_its_worker(
    tmp_path: Path, milter_agent: Agent
) -> None:
    """The descriptors a module leaks are its worker's: the daemon's stay at the baseline
    while the worker's grow by exactly what the module kept, until they grew by more than
    module_worker_max_fds and a fresh worker takes its place."""
    agent, base = start(tmp_path, milter_agent, extra=f"module_worker_max_fds = {FD_GROWTH}\n")
    leaking = worker(agent)
    worker_fds = fd_count(leaking.pid)
    for sent in range(1, FD_GROWTH // 50 + 1):
        assert send(agent, "leak-fds") == [(b"h", b"X-Checked\0 yes\0"), (b"c", b"")]
        settle(agent, base, children_allowed=1)
        assert worker(agent).pid == leaking.pid
        assert fd_count(leaking.pid) == worker_fds + sent * 50
    assert send(agent, "leak-fds") == [(b"h", b"X-Checked\0 yes\0"), (b"c", b"")]
    settle(agent, base, children_allowed=1)  # the leaker reaped, a fresh worker serves
    fresh = worker(agent)
    assert fresh.pid != leaking.pid and fd_count(fresh.pid) == worker_fds
    grown = f"from {worker_fds} to {worker_fds + (FD_GROWTH // 50 + 1) * 50}"
    replaced = f"worker {leaking.pid} replaced after its open file descriptors grew {grown}"
    assert replaced in agent.log_text()
    assert fd_count(agent.pid) == base.fds
