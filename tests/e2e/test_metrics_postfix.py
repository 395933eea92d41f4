"""Prometheus metrics agree with what was sent through the real Postfix, and with ma-client."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from collections.abc import Callable

from prometheus_client.parser import text_string_to_metric_families

from support.daemon import MilterAgentDaemon
from support.postfix import PostfixInstance
from support.sink import SmtpSink
from support.smtp import build_message, send_message
from support.util import free_port

Agent = Callable[..., MilterAgentDaemon]

CONFIG = """
[Address]
task_name = stamp
add_header_name = "X-Stamp"
add_header_value = "1"

[Filter]
task_name = refuse_marked
reject_exit_codes = "0"
exec_cmd = "/bin/grep -q REFUSE-ME %f"
"""


def samples(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_metrics_and_ma_client_count_what_was_sent(
    postfix: PostfixInstance, sink: SmtpSink, milter_agent: Agent
) -> None:
    port = free_port()
    agent = milter_agent(CONFIG, extra_args=["-H", "--metrics", f"127.0.0.1:{port}"])
    postfix.set_milter(agent.postfix_spec)
    for body in (b"fine\r\n", b"fine too\r\n", b"REFUSE-ME\r\n"):
        send_message(postfix.address, "a@example.org", ["b@example.net"], build_message(body=body))
    sink.wait_for(2)
    agent.wait_for_log("decision=reject")
    m = samples(port)
    assert m[("milter_agent_messages_total", (("verdict", "continue"),))] == 2
    assert m[("milter_agent_messages_total", (("verdict", "reject"),))] == 1
    assert (
        m[
            (
                "milter_agent_filter_runs_total",
                (("filter", "refuse_marked"), ("verdict", "continue")),
            )
        ]
        == 2
    )
    assert (
        m[("milter_agent_filter_runs_total", (("filter", "refuse_marked"), ("verdict", "reject")))]
        == 1
    )
    assert m[("milter_agent_filter_duration_seconds_count", (("filter", "refuse_marked"),))] == 3
    assert (
        m[
            (
                "milter_agent_filter_duration_seconds_bucket",
                (("filter", "refuse_marked"), ("le", "+Inf")),
            )
        ]
        == 3
    )
    assert m[("milter_agent_address_rule_matches_total", (("rule", "stamp"),))] == 3
    assert m[("milter_agent_config_last_reload_success", ())] == 1
    client = subprocess.run(
        [
            sys.executable,
            "-c",
            "from milter_agent.cli import client_main; raise SystemExit(client_main())",
            agent.control_spec,
            "2",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    (stats,) = json.loads(client.stdout)
    assert (stats["runs"], stats["verdicts"], stats["errors"]) == (
        3,
        {"continue": 2, "reject": 1},
        0,
    )
