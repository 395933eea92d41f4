"""Live reload under load through the real Postfix: nothing in flight is lost, later messages
use the new filters, a broken edit keeps the old ones and is reported on the control socket."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from support.daemon import MilterAgentDaemon, ma_json
from support.postfix import PostfixInstance
from support.sink import SmtpSink
from support.smtp import SmtpResult, build_message, send_message
from support.util import wait_until

Agent = Callable[..., MilterAgentDaemon]


def tagging_filter(tag: str, delay: float) -> str:
    return f"""
[Filter]
task_name = tag_{tag}
exec_cmd = "/bin/sh -c 'sleep {delay}; echo X-Tag: {tag} > $0' %h"
"""


def held_filter(tag: str, release: Path) -> str:
    """A filter that waits (up to 60 s) until ``release`` exists: messages stay in flight."""
    wait = f"n=0; while [ ! -e {release} ] && [ $n -lt 1200 ]; do sleep 0.05; n=$((n+1)); done"
    return f"""
[Filter]
task_name = tag_{tag}
exec_cmd = "/bin/sh -c '{wait}; echo X-Tag: {tag} > $0' %h"
"""


def send_batch(
    postfix: PostfixInstance, count: int, label: str, workers: int = 25
) -> list[SmtpResult]:
    def one(i: int) -> SmtpResult:
        data = build_message(subject=f"{label} {i}")
        return send_message(postfix.address, "a@example.org", ["b@example.net"], data)

    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(one, range(count)))


def status(agent: MilterAgentDaemon) -> dict[str, object]:
    state: dict[str, object] = ma_json(agent, "status")
    return state


def tags(sink: SmtpSink, label: str) -> set[str]:
    return {t for tagged in tags_by_message(sink, label).values() for t in tagged}


def tags_by_message(sink: SmtpSink, label: str) -> dict[str, list[str]]:
    """Subject -> the X-Tag values of that message, for the messages whose subject starts so."""
    return {
        str(m.headers["Subject"]): m.header_values("X-Tag")
        for m in sink.messages
        if str(m.headers["Subject"]).startswith(label)
    }


def running(agent: MilterAgentDaemon, name: str) -> int:
    (entry,) = [f for f in ma_json(agent, "filters") if f["name"] == name]
    return int(entry["running"])


def test_edit_while_50_messages_are_in_flight(
    postfix: PostfixInstance, sink: SmtpSink, milter_agent: Agent, tmp_path: Path
) -> None:
    release = tmp_path / "release"
    agent = milter_agent(held_filter("old", release), extra_args=["-F", "-HG"])
    postfix.set_milter(agent.postfix_spec)
    config = agent.config

    with ThreadPoolExecutor(1) as background:
        first = background.submit(send_batch, postfix, 50, "first", 50)
        try:
            # all 50 are inside the old filter, each with its own connection, before the edit
            wait_until(lambda: running(agent, "tag_old") == 50, 90, interval=0.2)
            config.write_text(tagging_filter("new", 0.0))  # in place, as an editor does
            agent.wait_for_log("(1 filters)", timeout=10)
        finally:
            release.touch()  # whatever happened: let the held messages go
        results = first.result(timeout=120)
    assert all(r.accepted for r in results), [str(r) for r in results if not r.accepted]
    sink.wait_for(50, timeout=60)
    first_tags = tags_by_message(sink, "first")
    assert len(first_tags) == 50
    # every message that started before the edit finished with the filter it started with
    assert all(tagged == ["old"] for tagged in first_tags.values()), first_tags

    later = send_batch(postfix, 10, "later")
    assert all(r.accepted for r in later)
    sink.wait_for(60, timeout=60)
    assert tags(sink, "later") == {"new"}

    edited = time.time()
    config.write_text("[Filter]\ntask_name = broken\nexec_cmd = \n")  # a broken edit
    agent.wait_for_log(f"configuration error: {config}:3: exec_cmd: empty command", timeout=10)
    again = send_batch(postfix, 5, "after-broken")
    assert all(r.accepted for r in again)
    sink.wait_for(65, timeout=60)
    assert tags(sink, "after-broken") == {"new"}
    state = status(agent)
    assert state["last_reload_error"] == f"{config}:3: exec_cmd: empty command"
    error_time = state["last_reload_error_time"]
    assert isinstance(error_time, float) and edited <= error_time <= time.time()
    assert state["config_generation"] == 2  # the broken file was never installed
    assert state["messages"] == 65 and state["verdicts"] == {"continue": 65}


def test_sigusr1_and_sighup_reload(
    postfix: PostfixInstance, sink: SmtpSink, milter_agent: Agent
) -> None:
    agent = milter_agent(tagging_filter("one", 0.0), extra_args=["-HG"])
    postfix.set_milter(agent.postfix_spec)
    for sig, tag in ((signal.SIGUSR1, "two"), (signal.SIGHUP, "three")):
        agent.config.write_text(tagging_filter(tag, 0.0))
        generation = status(agent)["config_generation"]
        agent.send_signal(sig)
        deadline = time.monotonic() + 10
        while status(agent)["config_generation"] == generation:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        send_batch(postfix, 1, tag)
    sink.wait_for(2)
    assert tags(sink, "two") == {"two"} and tags(sink, "three") == {"three"}
