"""Prometheus metrics agree with what was sent through the real Postfix, and with ma-client."""

from __future__ import annotations

import urllib.request
from collections.abc import Callable

from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families

from support.daemon import MilterAgentDaemon, ma_json
from support.postfix import PostfixInstance
from support.sink import SmtpSink
from support.smtp import build_message, send_message
from support.util import free_port

Agent = Callable[..., MilterAgentDaemon]
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]
OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"

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


def scrape(port: int, accept: str | None = None) -> tuple[str, str]:
    """(content type, text) of one scrape."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}/metrics")
    if accept:
        request.add_header("Accept", accept)
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.headers["Content-Type"], response.read().decode()


def samples(port: int) -> Samples:
    """The samples of the classic text format, checked against the OpenMetrics parser (which
    refuses e.g. two families of one name): both must read the same values."""
    content_type, text = scrape(port)
    assert content_type.startswith("text/plain"), content_type
    classic = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    content_type, text = scrape(port, OPENMETRICS)
    assert content_type.startswith("application/openmetrics-text"), content_type
    families = list(openmetrics_families(text))
    names = [f.name for f in families]
    assert len(names) == len(set(names)), names
    strict = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in families
        for s in family.samples
    }
    assert strict.keys() == classic.keys()
    moving = {"milter_agent_uptime_seconds", "milter_agent_connections_open"}
    assert {k: v for k, v in strict.items() if k[0] not in moving} == {
        k: v for k, v in classic.items() if k[0] not in moving
    }
    return classic


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
    refuse_marked = (("filter", "refuse_marked"), ("mode", "enforce"))  # labels of its series
    runs = "milter_agent_filter_runs_total"
    assert m[(runs, (*refuse_marked, ("verdict", "continue")))] == 2
    assert m[(runs, (*refuse_marked, ("verdict", "reject")))] == 1
    assert m[("milter_agent_filter_duration_seconds_count", refuse_marked)] == 3
    every = (("filter", "refuse_marked"), ("le", "+Inf"), ("mode", "enforce"))  # sorted labels
    assert m[("milter_agent_filter_duration_seconds_bucket", every)] == 3
    assert m[("milter_agent_address_rule_matches_total", (("rule", "stamp"),))] == 3
    assert m[("milter_agent_address_rule_changes_total", (("rule", "stamp"),))] == 3
    assert m[("milter_agent_config_last_reload_success", ())] == 1
    # one a message, and the test helper's readiness probe
    assert m[("milter_agent_connections_total", ())] >= 3
    assert m[("milter_agent_connections_open", ())] in (0, 1, 2, 3)  # smtpd may keep them
    assert m[("milter_agent_spool_files", ())] == 0  # nothing in flight
    assert m[("milter_agent_spool_bytes", ())] == 0
    assert m[("milter_agent_uptime_seconds", ())] > 0
    (stats,) = ma_json(agent, "2")
    assert (stats["runs"], stats["verdicts"], stats["errors"]) == (
        3,
        {"continue": 2, "reject": 1},
        0,
    )
