"""Live reload under load through the real Postfix: nothing in flight is lost, later messages
use the new filters, a broken edit keeps the old ones and is reported on the control socket."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from support.daemon import MilterAgentDaemon
from support.postfix import PostfixInstance
from support.sink import SmtpSink
from support.smtp import SmtpResult, build_message, send_message

Agent = Callable[..., MilterAgentDaemon]


def tagging_filter(tag: str, delay: float) -> str:
    return f"""
[Filter]
task_name = tag_{tag}
exec_cmd = "/bin/sh -c 'sleep {delay}; echo X-Tag: {tag} > $0' %h"
"""


def send_batch(postfix: PostfixInstance, count: int, label: str) -> list[SmtpResult]:
    def one(i: int) -> SmtpResult:
        data = build_message(subject=f"{label} {i}")
        return send_message(postfix.address, "a@example.org", ["b@example.net"], data)

    with ThreadPoolExecutor(25) as pool:
        return list(pool.map(one, range(count)))


def status(agent: MilterAgentDaemon) -> dict[str, object]:
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "from milter_agent.cli import client_main; raise SystemExit(client_main())",
            agent.control_spec,
            "status",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def tags(sink: SmtpSink, label: str) -> set[str]:
    return {
        t
        for m in sink.messages
        if str(m.headers["Subject"]).startswith(label)
        for t in m.header_values("X-Tag")
    }


def test_edit_while_50_messages_are_in_flight(
    postfix: PostfixInstance, sink: SmtpSink, milter_agent: Agent
) -> None:
    agent = milter_agent(tagging_filter("old", 0.4), extra_args=["-F", "-HG"])
    postfix.set_milter(agent.postfix_spec)
    config = agent.config

    with ThreadPoolExecutor(1) as background:
        first = background.submit(send_batch, postfix, 50, "first")
        time.sleep(0.6)  # messages are now waiting in the slow filter
        config.write_text(tagging_filter("new", 0.0))  # in place, as an editor does
        results = first.result(timeout=120)
    assert all(r.accepted for r in results), [str(r) for r in results if not r.accepted]
    agent.wait_for_log("(1 filters)", timeout=10)

    later = send_batch(postfix, 10, "later")
    assert all(r.accepted for r in later)
    sink.wait_for(60, timeout=60)
    assert tags(sink, "later") == {"new"}
    assert "old" in tags(sink, "first")  # messages in flight finished with their filter

    config.write_text("[Filter]\ntask_name = broken\nexec_cmd = \n")  # a broken edit
    agent.wait_for_log("refused", timeout=10)
    again = send_batch(postfix, 5, "after-broken")
    assert all(r.accepted for r in again)
    sink.wait_for(65, timeout=60)
    assert tags(sink, "after-broken") == {"new"}
    state = status(agent)
    assert state["last_reload_error"] and "exec_cmd" in str(state["last_reload_error"])
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
