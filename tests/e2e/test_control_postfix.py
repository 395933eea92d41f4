"""ma-client against a running daemon fed by the real Postfix: counts that match what was
sent and survive a reload, every command with and without --json, running/waiting and
durations while messages are in flight, the one line per message, and the log targets."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

from milter_agent import __version__
from milter_agent.control import client
from milter_agent.control.protocol import local_time
from support.daemon import MilterAgentDaemon, ma_client
from support.postfix import PostfixInstance
from support.sink import SmtpSink
from support.smtp import SmtpResult, build_message, send_message
from support.util import wait_until

Agent = Callable[..., MilterAgentDaemon]

CONFIG = """
[Address]
task_name = stamp
add_header_name = "X-Stamp"
add_header_value = "1"

[Filter]
task_name = first
exec_cmd = "/bin/sh -c 'sleep 0.2'"

[Filter]
task_name = second
reject_exit_codes = "0"
exec_cmd = "/bin/grep -q REFUSE-ME %f"
"""


def answer(agent: MilterAgentDaemon, *words: str) -> Any:
    """The --json answer of a command that must succeed."""
    done = ma_client(agent, *words, "--json")
    assert (done.returncode, done.stderr) == (0, ""), done
    return json.loads(done.stdout)


def text(agent: MilterAgentDaemon, *words: str) -> list[str]:
    """The plain-text lines of a command that must succeed."""
    done = ma_client(agent, *words)
    assert (done.returncode, done.stderr) == (0, ""), done
    return done.stdout.splitlines()


def send(postfix: PostfixInstance, body: bytes = b"fine\r\n") -> SmtpResult:
    return send_message(
        postfix.address, "a@example.org", ["b@example.net"], build_message(body=body)
    )


def send_three(postfix: PostfixInstance, sink: SmtpSink, agent: MilterAgentDaemon) -> None:
    """Two delivered, one refused by "second"."""
    for body in (b"fine\r\n", b"fine too\r\n", b"REFUSE-ME\r\n"):
        send(postfix, body)
    sink.wait_for(2)
    agent.wait_for_log("decision=reject")


def test_counts_match_what_was_sent_and_survive_a_reload(
    postfix: PostfixInstance, sink: SmtpSink, milter_agent: Agent
) -> None:
    agent = milter_agent(CONFIG, extra_args=["-H"])
    postfix.set_milter(agent.postfix_spec)
    send_three(postfix, sink, agent)
    filters, addresses = answer(agent, "2"), answer(agent, "3")
    counts = {f["name"]: (f["runs"], f["verdicts"], f["errors"]) for f in filters}
    assert counts == {
        "first": (3, {"continue": 3}, 0),
        "second": (3, {"continue": 2, "reject": 1}, 0),
    }
    assert [(a["name"], a["matches"], a["changes"]) for a in addresses] == [("stamp", 3, 3)]

    agent.config.write_text(CONFIG + "# edited: a new configuration, the same sections\n")
    assert text(agent, "reload") == ["reloaded  True", "error     -"]
    assert answer(agent, "status")["config_generation"] == 2
    assert answer(agent, "2") == filters
    assert answer(agent, "3") == addresses


def test_every_command_with_and_without_json(
    postfix: PostfixInstance, sink: SmtpSink, milter_agent: Agent
) -> None:
    agent = milter_agent(CONFIG, extra_args=["-H"])
    postfix.set_milter(agent.postfix_spec)
    send_three(postfix, sink, agent)

    settings = answer(agent, "1")
    assert settings == answer(agent, "settings")
    assert (settings["log_target"], settings["socket_mode"]) == ("stderr", 0o666)
    assert settings["allow_add_header"] is True and settings["error_threshold"] == 0
    lines = text(agent, "1")
    assert lines == text(agent, "settings")
    assert re.search(r"^log_target +stderr$", "\n".join(lines), re.M)
    assert re.search(r"^socket_mode +0666$", "\n".join(lines), re.M)
    assert len(lines) == len(settings)

    (rule,) = answer(agent, "3")
    assert answer(agent, "addresses") == [rule]
    heading, row = text(agent, "3")
    assert heading.split() == [
        "NAME", "MESSAGE_SENDER", "MESSAGE_RECIPIENT", "RUN_TIME", "SKIP_TIME", "MATCHES",
        "CHANGES", "LAST_MATCH",
    ]  # fmt: skip
    assert row.split() == ["stamp", "-", "-", "-", "-", "3", "3", local_time(rule["last_match"])]
    assert text(agent, "addresses") == [heading, row]

    filters = answer(agent, "2")
    lines = text(agent, "2")
    blank = lines.index("")
    assert lines[0].split()[:4] == ["NAME", "KIND", "MODE", "TIMEOUT"]
    assert [line.split()[0] for line in lines[1:blank]] == ["first", "second"]
    assert "/bin/sh -c 'sleep 0.2'" in lines[1]  # quoted as shell words
    assert lines[blank + 1].split()[:3] == ["NAME", "RUNS", "SKIPPED"]
    second = lines[blank + 3].split()
    assert second[:4] == ["second", "3", "0", "continue=2,reject=1"]
    assert local_time(filters[1]["last_run"]) in lines[blank + 3]

    status = answer(agent, "status")
    assert (status["version"], status["messages"]) == (__version__, 3)
    assert status["verdicts"] == {"continue": 2, "reject": 1}
    assert status["config"] == str(agent.config)
    lines = text(agent, "status")
    assert lines[0].split() == ["version", __version__]
    assert f"config_loaded_at        {local_time(status['config_loaded_at'])}" in lines

    assert answer(agent, "disable", "second") == {"name": "second", "disabled": True}
    assert answer(agent, "2")[1]["disabled_reason"] == "switched off via the control socket"
    assert text(agent, "enable", "second") == ["name      second", "disabled  False"]
    assert text(agent, "disable", "second") == ["name      second", "disabled  True"]
    assert answer(agent, "enable", "second") == {"name": "second", "disabled": False}
    refused = ma_client(agent, "enable", "nothing")
    assert (refused.returncode, refused.stdout) == (1, "")
    assert refused.stderr == "ma-client: no filter named 'nothing'\n"

    reset = answer(agent, "reset-stats")
    assert reset["reset"] is True and time.time() - reset["stats_since"] < 30
    lines = text(agent, "reset-stats")
    assert lines[0] == "reset        True" and lines[1].startswith("stats_since  20")
    assert [(f["runs"], f["verdicts"]) for f in answer(agent, "2")] == [(0, {}), (0, {})]
    assert [(a["matches"], a["changes"]) for a in answer(agent, "3")] == [(0, 0)]
    status = answer(agent, "status")
    assert (status["messages"], status["connections_total"]) == (0, 0)

    assert answer(agent, "reload") == {"reloaded": True, "error": None}


def test_in_flight_running_waiting_durations_and_status(
    postfix: PostfixInstance, sink: SmtpSink, milter_agent: Agent
) -> None:
    agent = milter_agent(
        """
[Filter]
task_name = slow
run_single_instance = 1
exec_cmd = "/bin/sh -c 'sleep 1.5'"
"""
    )
    postfix.set_milter(agent.postfix_spec)
    started = time.time()
    with ThreadPoolExecutor(2) as pool:
        results = [pool.submit(send, postfix) for _ in range(2)]

        def one_runs_one_waits() -> dict[str, Any] | None:
            # in process, not ma-client: both answers within milliseconds of each other
            (row,) = client.ask(agent.control_spec, "filters")
            status = client.ask(agent.control_spec, "status")
            return status if (row["running"], row["waiting"]) == (1, 1) else None

        during = wait_until(one_runs_one_waits, 15, interval=0.05)
        assert [r.result(timeout=60).accepted for r in results] == [True, True]
    ended = time.time()
    # both messages are spooled while they run or wait
    assert during["spool_files"] >= 2 and during["spool_bytes"] > 0, during
    (row,) = answer(agent, "2")
    assert (row["runs"], row["running"], row["waiting"]) == (2, 0, 0)
    assert 1500 <= row["mean_ms"] <= row["p95_ms"] == row["max_ms"] < 10000
    assert started <= row["last_run"] <= ended
    status = answer(agent, "status")
    assert status["version"] == __version__ and status["pid"] == agent.pid
    assert 0 < status["uptime"] < 120
    assert (status["spool_files"], status["spool_bytes"]) == (0, 0)
    assert status["connections_now"] >= 0 and status["connections_total"] >= 2


def test_the_line_per_message_has_every_section_and_l1_adds_steps(
    postfix: PostfixInstance, sink: SmtpSink, milter_agent: Agent
) -> None:
    agent = milter_agent(CONFIG, extra_args=["-H", "-l", "1"])
    postfix.set_milter(agent.postfix_spec)
    assert not send(postfix, b"REFUSE-ME\r\n").accepted
    agent.wait_for_log("decision=reject")
    summary = re.search(
        r"INFO: (\w+): client=\S+ from=<a@example.org> rcpts=1 size=\d+ decision=reject "
        r"time=[\d.]+ms filters=stamp:\+h:X-Stamp\((\d+)ms\) first:continue\((\d+)ms\) "
        r"second:reject\((\d+)ms\)$",
        agent.log_text(),
        re.M,
    )
    assert summary, agent.log_text()
    queue_id, first_ms = summary.group(1), int(summary.group(3))
    assert 200 <= first_ms < 5000  # first sleeps 0.2 s: its own time, not the message's
    agent.wait_for_log(f"{queue_id}: step 3/3")
    details = re.findall(
        rf"DETAIL: {queue_id}: step (\d)/3 (\w+): (\S+) in [\d.]+ms(.*)$", agent.log_text(), re.M
    )
    assert [d[:3] for d in details] == [
        ("1", "stamp", "+h:X-Stamp"),
        ("2", "first", "continue"),
        ("3", "second", "reject"),
    ]
    assert details[1][3].startswith(": exit 0") and details[2][3].startswith(": exit 0")


class StdoutDaemon(MilterAgentDaemon):
    """Logs on stdout: readiness and log_text read that instead of stderr."""

    def log_text(self) -> str:
        return self.stdout_text()


def start_stdout_daemon(tmp_path: Path, config: str) -> StdoutDaemon:
    (tmp_path / "milter-agent.conf").write_text(config)
    agent = StdoutDaemon(
        tmp_path / "milter-agent.conf",
        f"unix:{tmp_path / 'milter.sock'}",
        f"unix:{tmp_path / 'control.sock'}",
        tmp_path / "spool",
        tmp_path,
    )
    agent.start()
    return agent


def test_log_target_in_the_file_is_kept_with_d1(tmp_path: Path) -> None:
    """-d 1 logs to stderr only when no target was chosen; the file's choice stands, and
    ma-client 1 reports the target in force."""
    agent = start_stdout_daemon(tmp_path, "log_target = stdout\n" + CONFIG)
    try:
        assert answer(agent, "1")["log_target"] == "stdout"
        assert agent.stderr_path.read_text() == ""
        lines = agent.stdout_text().splitlines()
        assert lines and all(re.match(r"<[0-7]>", line) for line in lines), lines
        assert any(line.startswith("<6>listening on unix:") for line in lines), lines
    finally:
        agent.stop()


def test_d1_without_a_target_logs_to_stderr(milter_agent: Agent) -> None:
    agent = milter_agent(CONFIG)
    assert answer(agent, "1")["log_target"] == "stderr"
    assert agent.stdout_text() == ""
    first = agent.log_text().splitlines()[0]
    assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} milter-agent\[\d+\] INFO: ", first)
    when = datetime.strptime(first[:19], "%Y-%m-%d %H:%M:%S")
    assert abs((datetime.now() - when).total_seconds()) < 120
