"""A filter switched off by its threshold runs notice_cmd, through the real Postfix."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from support.daemon import MilterAgentDaemon
from support.postfix import PostfixInstance
from support.sink import SmtpSink
from support.smtp import build_message, send_message

Agent = Callable[..., MilterAgentDaemon]


def test_threshold_switch_off_runs_notice_cmd(
    tmp_path: Path, postfix: PostfixInstance, sink: SmtpSink, milter_agent: Agent
) -> None:
    out = tmp_path / "notice"
    agent = milter_agent(
        f"""
notice_cmd = "/bin/sh -c 'echo $MILTER_NOTICE $MILTER_NOTICE_FILTER > {out}'"

[Filter]
task_name = crashing
exec_cmd = "/bin/sh -c 'kill -KILL $$'"
""",
        extra_args=["-m", "2"],
    )
    postfix.set_milter(agent.postfix_spec)
    for _ in range(2):
        assert send_message(
            postfix.address, "a@example.org", ["b@example.net"], build_message()
        ).accepted
    sink.wait_for(2)
    deadline = time.monotonic() + 10
    while not out.exists():
        assert time.monotonic() < deadline, agent.log_text()
        time.sleep(0.1)
    assert out.read_text().split() == ["filter_disabled", "crashing"]
    assert "notice filter_disabled: filter crashing: 2 errors (threshold 2)" in agent.log_text()
