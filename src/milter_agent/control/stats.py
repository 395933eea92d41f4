"""Snapshots of the daemon's state for the control socket: plain data, ready for JSON."""

from __future__ import annotations

import math
import shlex
import statistics
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from milter_agent.config.model import AddressRule, Config, FilterSpec
from milter_agent.registry import FilterState, Registry, Samples

Handler = Callable[[list[str]], Any]


@dataclass(slots=True)
class MessageCounters:
    """Daemon-wide message counts, fed by the session's end-of-message hook."""

    messages: int = 0
    verdicts: Counter[str] = field(default_factory=Counter)
    bytes: int = 0

    #: seconds each of the latest messages spent in the milter (see MilterProtocol)
    waits: Samples = field(default_factory=lambda: Samples(10_000))

    def reset(self) -> None:
        self.messages = self.bytes = 0
        self.verdicts.clear()
        self.waits.clear()

    def count(self, verdict: str, size: int) -> None:
        self.messages += 1
        self.verdicts[verdict] += 1
        self.bytes += size


def added_latency(counters: MessageCounters) -> dict[str, float | int]:
    """Percentiles of the time the latest messages (at most 10,000) spent in the milter."""
    values = sorted(counters.waits)
    if not values:
        return {"messages": 0}
    out: dict[str, float | int] = {"messages": len(values)}
    for name, fraction in (("p50_ms", 0.5), ("p99_ms", 0.99)):
        out[name] = round(values[nearest_rank(len(values), fraction)] * 1000, 3)
    out["max_ms"] = round(values[-1] * 1000, 3)
    return out


def nearest_rank(count: int, fraction: float) -> int:
    """Index (0-based) of the nearest-rank percentile: the smallest value with at least
    ``fraction`` of the values at or below it (rank ceil(fraction * count))."""
    return max(0, math.ceil(fraction * count) - 1)


def _durations(state: FilterState) -> dict[str, float]:
    values = sorted(state.durations)
    if not values:
        return {"mean_ms": 0.0, "p95_ms": 0.0, "max_ms": 0.0}
    p95 = values[nearest_rank(len(values), 0.95)]
    return {
        "mean_ms": round(statistics.fmean(values) * 1000, 2),
        "p95_ms": round(p95 * 1000, 2),
        "max_ms": round(values[-1] * 1000, 2),
    }


def state_data(state: FilterState) -> dict[str, Any]:
    return {
        "runs": state.runs,
        "skipped": state.skipped,
        "verdicts": dict(state.verdicts),
        "errors": state.errors,
        "timeouts": state.timeouts,
        "queue_timeouts": state.queue_timeouts,
        "kills": state.kills,
        "error_count": state.error_count,
        "disabled": state.disabled,
        "disabled_reason": state.disabled_reason,
        "disabled_at": state.disabled_at,
        "running": state.running,
        "waiting": state.waiting,
        "last_run": state.last_run,
        "last_error": state.last_error,
        "last_error_at": state.last_error_at,
        "stats_since": state.since,
        **_durations(state),
    }


def filter_data(spec: FilterSpec, state: FilterState) -> dict[str, Any]:
    return {
        "name": spec.name,
        "kind": "module" if spec.is_module else "program",
        # shlex.join: an argument with a space must read as one word, as in the config file
        "command": spec.module_name or shlex.join(str(a) for a in spec.argv),
        "timeout": spec.timeout,
        "single_instance": spec.single_instance,
        "mode": spec.mode,
        "line": spec.line,
        **state_data(state),
    }


def address_data(rule: AddressRule, state: FilterState) -> dict[str, Any]:
    return {
        "name": rule.name,
        "line": rule.line,
        "message_sender": list(rule.message_sender.items) if rule.message_sender else [],
        "message_recipient": list(rule.message_recipient.items) if rule.message_recipient else [],
        "add_recipient": list(rule.add_recipient),
        "forward_recipients": list(rule.forward_recipients),
        "add_headers": [h.name for h in rule.add_headers],
        "change_headers": [h.name for h in rule.change_headers],
        "remove_headers": list(rule.remove_headers),
        "run_time": [expression.text for expression in rule.run_time],
        "skip_time": [expression.text for expression in rule.skip_time],
        "matches": state.runs,
        "changes": state.changes,
        "last_match": state.last_run,
        "stats_since": state.since,
    }


def filters(config: Config, registry: Registry) -> list[dict[str, Any]]:
    return [filter_data(f, registry.get(f.name)) for f in config.filters]


def addresses(config: Config, registry: Registry) -> list[dict[str, Any]]:
    return [address_data(r, registry.get(r.name)) for r in config.address_rules]


def settings(config: Config, **effective: Any) -> dict[str, Any]:
    """The settings in force; ``effective`` overrides what the daemon decided at start-up
    (e.g. the log target ``-d 1`` chose when none was given)."""
    return {**asdict(config.settings), **effective}


def uptime(started: float) -> float:
    return round(time.time() - started, 1)
