"""The configuration file is deleted, truncated, cut in half or replaced with garbage while the
daemon runs with -F. Each broken state is refused whole and reported on the control socket;
messages go on with the last good configuration (never with no filters at all); a good file
is picked up again."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from pathlib import Path

from faults.faultkit import (
    MilterClient,
    Packet,
    baseline,
    settle,
    status,
    write_script,
)
from support.daemon import MilterAgentDaemon
from support.util import wait_until

Agent = Callable[..., MilterAgentDaemon]


def config(script: Path, tag: str) -> str:
    return f"""# a filter that stamps every message with its configuration's tag
[Filter]
task_name = check
exec_cmd = "{script} %f %h {tag}"
"""


def stamped(tag: str) -> Callable[[list[Packet]], bool]:
    return lambda got: got == [(b"h", b"X-Checked\0 " + tag.encode() + b"\0"), (b"c", b"")]


def wait_for_generation(agent: MilterAgentDaemon, count: int, *, refused: int) -> None:
    """Until the daemon has installed ``count`` configurations and refused ``refused`` files."""

    def reached() -> bool:
        log = agent.log_text()
        return status(agent)["config_generation"] == count and log.count("refused (") == refused

    wait_until(reached, 10, interval=0.05, message=lambda: agent.log_text()[-3000:])


def test_config_deleted_truncated_garbage_while_running(
    tmp_path: Path, milter_agent: Agent
) -> None:
    script = write_script(tmp_path / "check.sh", '#!/bin/sh\necho "X-Checked: $3" > "$2"\n')
    agent = milter_agent(config(script, "v1"), extra_args=["-F", "-H"])
    path = agent.config
    base = baseline(agent, stamped("v1"))
    good_v2 = config(script, "v2")
    half = good_v2[: good_v2.index("%h")]  # inside the quoted exec_cmd value
    # (what happens to the file, the tag messages must get, generation, refused files so far)
    steps: list[tuple[str, Callable[[], object], str, int, int]] = [
        ("deleted", path.unlink, "v1", 1, 1),
        ("restored", lambda: path.write_text(good_v2), "v2", 2, 1),
        ("truncated to nothing", lambda: path.write_text(""), "v2", 2, 2),
        ("cut in half", lambda: path.write_text(half), "v2", 2, 3),
        ("garbage", lambda: path.write_bytes(os.urandom(4096)), "v2", 2, 4),
        ("binary zeros", lambda: path.write_bytes(b"\0" * 100_000), "v2", 2, 5),
        ("a directory", lambda: (path.unlink(), path.mkdir()), "v2", 2, 6),
        ("good again", lambda: (path.rmdir(), path.write_text(config(script, "v3"))), "v3", 3, 6),
    ]
    for name, damage, tag, generation, refused in steps:
        damage()
        wait_for_generation(agent, generation, refused=refused)
        if (generation == 2 and tag == "v2" and name != "restored") or name == "deleted":
            assert status(agent)["last_reload_error"], name
        settle(agent, base, expect=stamped(tag))
    assert status(agent)["last_reload_error"] is None
    log = agent.log_text()
    assert log.count("refused (") == 6
    assert "Traceback" not in log


def test_config_replaced_by_a_fifo_does_not_stop_the_daemon(
    tmp_path: Path, milter_agent: Agent
) -> None:
    script = write_script(tmp_path / "check.sh", '#!/bin/sh\necho "X-Checked: $3" > "$2"\n')
    agent = milter_agent(config(script, "v1"), extra_args=["-F", "-H"])
    base = baseline(agent, stamped("v1"))
    agent.config.unlink()
    os.mkfifo(agent.config)
    try:
        time.sleep(1.5)  # the watcher looks once a second
        with MilterClient(agent.socket_spec, timeout=3) as mta:
            mta.handshake()
            assert stamped("v1")(mta.message())
    finally:
        # a writer that comes and goes lets a blocked open() return (then: an empty file)
        with contextlib.suppress(OSError):
            os.close(os.open(agent.config, os.O_WRONLY | os.O_NONBLOCK))
    settle(agent, base)  # the FIFO still there: nothing of the attempts may stay open
    agent.config.unlink()
    agent.config.write_text(config(script, "v2"))
    wait_until(lambda: status(agent)["config_generation"] == 2, 10, interval=0.05)
    settle(agent, base, expect=stamped("v2"))
