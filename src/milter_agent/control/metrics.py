"""Prometheus metrics, read from the daemon's state when scraped (nothing on the message path).

Served by prometheus-client's own HTTP server on the address of ``--metrics`` (e.g.
``127.0.0.1:9464``), in a thread. Names follow Prometheus conventions: ``milter_agent_`` prefix,
``_total`` counters, seconds for durations.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from itertools import accumulate

from prometheus_client import start_http_server
from prometheus_client.core import (
    CollectorRegistry,
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from milter_agent.errors import ConfigError
from milter_agent.registry import DURATION_BUCKETS, FilterState


@dataclass(slots=True)
class Snapshot:
    """What a scrape reads; built by the daemon."""

    messages: dict[str, int]
    message_bytes: int
    connections_now: int
    connections_total: int
    config_generation: int
    last_reload_ok: bool
    uptime: float
    spool_files: int = 0
    spool_bytes: int = 0
    filters: list[tuple[str, FilterState]] = field(default_factory=list)
    address_rules: list[tuple[str, FilterState]] = field(default_factory=list)


class DaemonCollector:
    def __init__(self, snapshot: Callable[[], Snapshot]) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        s = self.snapshot()
        messages = CounterMetricFamily(
            "milter_agent_messages", "Messages decided, by verdict", labels=["verdict"]
        )
        for verdict, count in sorted(s.messages.items()):
            messages.add_metric([verdict], count)
        yield messages
        yield from _daemon_metrics(s)
        yield from _filter_metrics(s.filters)
        yield from _address_metrics(s.address_rules)


def _daemon_metrics(s: Snapshot) -> Iterator[Metric]:
    """The daemon's unlabelled series, each a counter or a gauge of one value."""
    counter, gauge = CounterMetricFamily, GaugeMetricFamily
    series: tuple[tuple[type[CounterMetricFamily | GaugeMetricFamily], str, str, float], ...] = (
        (counter, "message_bytes", "Bytes of messages seen", s.message_bytes),
        # not "milter_agent_connections": that family is the counter below (its samples are
        # ..._total), and one name for two families is refused by OpenMetrics parsers
        (gauge, "connections_open", "MTA connections open now", s.connections_now),
        (counter, "connections", "MTA connections accepted", s.connections_total),
        (gauge, "config_generation", "Configurations loaded", s.config_generation),
        (
            gauge,
            "config_last_reload_success",
            "1 if the last configuration load succeeded",
            int(s.last_reload_ok),
        ),
        (gauge, "uptime_seconds", "Seconds since start", s.uptime),
        (gauge, "spool_files", "Files in the spool now", s.spool_files),
        (gauge, "spool_bytes", "Bytes in the spool now", s.spool_bytes),
    )
    for family, name, doc, value in series:
        yield family(f"milter_agent_{name}", doc, value=value)


def _address_metrics(rules: Iterable[tuple[str, FilterState]]) -> Iterator[Metric]:
    matches = CounterMetricFamily(
        "milter_agent_address_rule_matches", "Messages an address rule applied to", labels=["rule"]
    )
    changes = CounterMetricFamily(
        "milter_agent_address_rule_changes",
        "Recipient and header changes made by an address rule",
        labels=["rule"],
    )
    for name, state in rules:
        matches.add_metric([name], state.runs)
        changes.add_metric([name], state.changes)
    yield matches
    yield changes


def _filter_metrics(filters: Iterable[tuple[str, FilterState]]) -> Iterator[Metric]:
    """Every series has the labels ``filter`` and ``mode`` (enforce or monitor), so a monitor
    filter's series can be told apart without knowing the configuration."""
    prefix, labels = "milter_agent_filter_", ["filter", "mode"]
    runs = CounterMetricFamily(
        f"{prefix}runs", "Filter runs, by verdict", labels=[*labels, "verdict"]
    )
    counters = {
        attr: CounterMetricFamily(f"{prefix}{attr}", doc, labels=labels)
        for attr, doc in (
            ("errors", "Filter errors"),
            ("timeouts", "Filter timeouts"),
            ("queue_timeouts", "Messages that found no free filter instance in time (not errors)"),
            ("kills", "Filter programs killed on timeout"),
            ("skipped", "Messages the filter did not run for"),
        )
    }
    gauges = {
        attr: GaugeMetricFamily(f"{prefix}{attr}", doc, labels=labels)
        for attr, doc in (
            ("disabled", "1 if switched off"),
            ("running", "Instances running now"),
            ("waiting", "Messages waiting for an instance"),
        )
    }
    durations = HistogramMetricFamily(f"{prefix}duration_seconds", "Filter run time", labels=labels)
    bounds = [str(b) for b in DURATION_BUCKETS] + ["+Inf"]
    for name, state in filters:
        values = [name, state.mode]
        for verdict, count in sorted(state.verdicts.items()):
            runs.add_metric([*values, verdict], count)
        for attr, counter in counters.items():
            counter.add_metric(values, getattr(state, attr))
        for attr, gauge in gauges.items():
            gauge.add_metric(values, int(getattr(state, attr)))
        cumulative = list(zip(bounds, accumulate(state.histogram.counts), strict=True))
        durations.add_metric(values, cumulative, state.histogram.total)
    yield runs
    yield from counters.values()
    yield from gauges.values()
    yield durations


def serve_metrics(address: str, snapshot: Callable[[], Snapshot]) -> None:
    """Start the metrics listener on ``host:port`` (a thread of prometheus-client's)."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError(f"metrics: expected host:port, not {address!r}")
    registry = CollectorRegistry(auto_describe=True)
    registry.register(DaemonCollector(snapshot))
    start_http_server(int(port), addr=host.strip("[]") or "127.0.0.1", registry=registry)
