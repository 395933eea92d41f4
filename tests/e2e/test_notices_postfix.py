"""Each notice, from a running daemon: logged as a warning and given to notice_cmd."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from support.daemon import MilterAgentDaemon, ma_client
from support.postfix import PostfixInstance
from support.sink import SmtpSink
from support.smtp import build_message, send_message
from support.util import wait_until

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


def notice_script(tmp_path: Path) -> tuple[Path, Path]:
    """A notice_cmd that appends one line per notice: event|filter|reason|time."""
    script, out = tmp_path / "notice.sh", tmp_path / "notices"
    script.write_text(
        "#!/bin/sh\n"
        'printf \'%s|%s|%s|%s\\n\' "$MILTER_NOTICE" "$MILTER_NOTICE_FILTER" '
        '"$MILTER_NOTICE_REASON" "$MILTER_NOTICE_TIME" >> "$1"\n'
    )
    script.chmod(0o755)
    return script, out


def notices(out: Path, count: int, agent: MilterAgentDaemon) -> list[list[str]]:
    """Wait (bounded) until ``count`` notices were delivered; each as its four fields."""
    wait_until(
        lambda: out.exists() and len(out.read_text().splitlines()) >= count,
        15,
        interval=0.1,
        message=lambda: f"{out.read_text() if out.exists() else 'no notices'}\n{agent.log_text()}",
    )
    return [line.split("|") for line in out.read_text().splitlines()]


def test_refused_reload_is_noticed_with_every_error(tmp_path: Path, milter_agent: Agent) -> None:
    script, out = notice_script(tmp_path)
    config = f'notice_cmd = "{script} {out}"\n[Filter]\ntask_name = scan\nexec_cmd = "/bin/true"\n'
    agent = milter_agent(config)
    agent.config.write_text(config + "[Filter]\ntask_nme = x\nfrobnicate = 1\n")
    refused = ma_client(agent, "reload")
    assert refused.returncode == 1, refused
    (error_line,) = refused.stderr.splitlines()
    assert error_line.startswith("ma-client: reload refused, the old configuration stays: ")
    assert "task_nme" in error_line and "frobnicate" in error_line
    ((event, name, reason, when),) = notices(out, 1, agent)
    assert (event, name) == ("reload_failed", "")
    assert "task_nme" in reason and "frobnicate" in reason
    assert abs(datetime.fromisoformat(when).timestamp() - time.time()) < 60
    assert "notice reload_failed: " in agent.log_text()
    # the status table stays intact: each error line sits under the value column
    keys = json.loads(ma_client(agent, "status", "--json").stdout)
    lines = ma_client(agent, "status").stdout.splitlines()
    width = max(map(len, keys))
    assert len(lines) > len(keys)  # the error took more than one line
    for line in lines:
        assert line[:width].rstrip() in keys or not line[:width].strip(), line
        assert line[width : width + 2] == "  ", line
    at = next(i for i, line in enumerate(lines) if line.startswith("last_reload_error "))
    assert "frobnicate" in "\n".join(lines[at + 1 : at + 5]), lines


def test_idle_filter_is_noticed(tmp_path: Path, milter_agent: Agent) -> None:
    script, out = notice_script(tmp_path)
    agent = milter_agent(
        f'notice_cmd = "{script} {out}"\nnotice_idle = 1\n'
        '[Filter]\ntask_name = quiet\nexec_cmd = "/bin/true"\n'
    )
    ((event, name, reason, _),) = notices(out, 1, agent)
    assert (event, name) == ("filter_idle", "quiet")
    assert re.fullmatch(r"has not run for \d+s", reason)
    assert "notice filter_idle: filter quiet: has not run for" in agent.log_text()


def test_switched_on_again_by_cooldown_is_noticed_and_a_manual_disable_is_not(
    tmp_path: Path, postfix: PostfixInstance, sink: SmtpSink, milter_agent: Agent
) -> None:
    script, out = notice_script(tmp_path)
    flag = tmp_path / "crashed-once"
    agent = milter_agent(
        f"""
notice_cmd = "{script} {out}"

[Filter]
task_name = flaky
error_cooldown = 1
exec_cmd = "/bin/sh -c 'test -e {flag} || {{ touch {flag}; kill -KILL $$; }}'"

[Filter]
task_name = steady
exec_cmd = "/bin/true"
""",
        extra_args=["-m", "1"],
    )
    postfix.set_milter(agent.postfix_spec)
    assert send_message(
        postfix.address, "a@example.org", ["b@example.net"], build_message()
    ).accepted
    assert notices(out, 1, agent)[0][:2] == ["filter_disabled", "flaky"]
    time.sleep(1.2)  # error_cooldown: the next message finds flaky switched on again
    assert send_message(
        postfix.address, "a@example.org", ["b@example.net"], build_message()
    ).accepted
    sink.wait_for(2)
    assert [n[:3] for n in notices(out, 2, agent)][1] == [
        "filter_reenabled",
        "flaky",
        "error_cooldown is over",
    ]
    assert "notice filter_reenabled: filter flaky: error_cooldown is over" in agent.log_text()

    assert ma_client(agent, "disable", "steady").returncode == 0
    agent.config.write_text("broken = \n")  # a later event shows the watcher looked again
    assert ma_client(agent, "reload").returncode == 1
    events = [n[0] for n in notices(out, 3, agent)]
    assert events == ["filter_disabled", "filter_reenabled", "reload_failed"]
    assert "notice filter_disabled: filter steady" not in agent.log_text()
