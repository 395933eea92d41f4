"""Per-filter state that outlives one message and one configuration: statistics, the error
count toward the threshold, the switched-off state, and the instance limit.

Keyed by the filter's name, so a filter keeps its counters across reloads while its name stays.
A reload switches every filter back on (the seed's way to re-enable a failing filter).
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import time
from array import array
from collections import Counter
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass, field

from milter_agent.errors import MilterAgentError

log = logging.getLogger("milter_agent.registry")


class NoFreeInstance(MilterAgentError):
    """Every instance of a filter (or every module worker) stayed busy for the whole wait.

    Not a FilterError: the filter never ran for the message, so it has not failed. Counting it
    toward -m would switch a single-instance scanner off merely for being busy under load; the
    engine counts it as a queue timeout instead (see ``Engine._no_free_instance``).
    """


#: Upper bounds (seconds) of the duration histogram buckets; the last one is +Inf.
DURATION_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Samples:
    """The latest ``size`` values (seconds), unboxed in a preallocated array.

    Not a deque of floats: each float kept for long would pin the small-object pool it was
    allocated in, among the short-lived objects of its message; with thousands kept, the
    daemon's memory grew by a pool (4 KiB) per message until the window was full."""

    __slots__ = ("_count", "_next", "_values")

    def __init__(self, size: int) -> None:
        self._values = array("d", bytes(8 * size))
        self._next = 0
        self._count = 0

    def append(self, value: float) -> None:
        self._values[self._next] = value
        self._next = (self._next + 1) % len(self._values)
        self._count = min(self._count + 1, len(self._values))

    def clear(self) -> None:
        self._next = self._count = 0

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[float]:
        return iter(self._values[: self._count])


@dataclass(slots=True)
class Histogram:
    """Cumulative-ready counts of durations, for metrics (cheap: one bisect per run)."""

    counts: list[int] = field(default_factory=lambda: [0] * (len(DURATION_BUCKETS) + 1))
    total: float = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(DURATION_BUCKETS, seconds)] += 1
        self.total += seconds


@dataclass(slots=True)
class FilterState:
    name: str
    runs: int = 0
    skipped: int = 0
    changes: int = 0  # address rules: recipient and header changes made
    verdicts: Counter[str] = field(default_factory=Counter)
    errors: int = 0
    timeouts: int = 0
    #: messages that found no free instance (or module worker) in time: apart from
    #: ``timeouts``, which are runs that took too long and count toward the threshold
    queue_timeouts: int = 0
    kills: int = 0
    error_count: int = 0  # since last switched on; compared with the threshold
    disabled_reason: str | None = None
    disabled_at: float | None = None
    by_threshold: bool = False  # switched off by the error threshold (error_cooldown applies)
    reenabled_at: float | None = None
    running: int = 0
    waiting: int = 0
    durations: Samples = field(default_factory=lambda: Samples(1000))
    histogram: Histogram = field(default_factory=Histogram)
    last_run: float | None = None
    last_error: str | None = None
    last_error_at: float | None = None
    #: When this name appeared or its statistics were reset: idle time is measured from here,
    #: not from the daemon's start, so a filter added by a reload is not idle at once.
    since: float = field(default_factory=time.time)
    limit: int = 0
    #: the filter's mode in the configuration in force (the Engine built from it sets it),
    #: for the metrics' mode label; configuration, not a statistic: reset() keeps it
    mode: str = "enforce"
    _slots: asyncio.Semaphore | None = None
    _refusals: set[str] = field(default_factory=set)

    @property
    def disabled(self) -> bool:
        return self.disabled_reason is not None

    def set_limit(self, limit: int) -> None:
        if limit != self.limit or (limit and self._slots is None):
            self.limit = limit
            self._slots = asyncio.Semaphore(limit) if limit > 0 else None

    @contextlib.asynccontextmanager
    async def slot(self, timeout: float) -> AsyncIterator[None]:
        """Hold one of the filter's ``limit`` instances; waits in arrival order, bounded
        (:class:`NoFreeInstance` after ``timeout`` seconds, 0 = no bound)."""
        slots = self._slots
        if slots is not None:
            self.waiting += 1
            try:
                async with asyncio.timeout(timeout or None):
                    await slots.acquire()
            except TimeoutError:
                raise NoFreeInstance(f"no free instance within {timeout:g}s") from None
            finally:
                self.waiting -= 1
        self.running += 1
        try:
            yield
        finally:
            self.running -= 1
            if slots is not None:
                slots.release()

    def record_run(self, outcome: str, seconds: float) -> None:
        self.runs += 1
        self.verdicts[outcome] += 1
        self.observe(seconds)
        self.last_run = time.time()

    def observe(self, seconds: float) -> None:
        self.durations.append(seconds)
        self.histogram.observe(seconds)

    def record_error(self, reason: str, threshold: int) -> bool:
        """Count an error; True if that switched the filter off (threshold 0 = never)."""
        self.errors += 1
        self.error_count += 1
        self.last_error = reason
        self.last_error_at = time.time()
        if threshold and self.error_count >= threshold and not self.disabled:
            self.disable(f"{self.error_count} errors (threshold {threshold}); last: {reason}")
            self.by_threshold = True
            return True
        return False

    def disable(self, reason: str) -> None:
        self.disabled_reason = reason
        self.disabled_at = time.time()
        self.by_threshold = False

    def enable(self) -> None:
        self.disabled_reason = None
        self.disabled_at = None
        self.by_threshold = False
        self.error_count = 0

    def reset(self) -> None:
        """Zero the statistics in place (reset-stats).

        In place, because runs in flight hold this object: they must count here when they end,
        keep the running/waiting counts right and keep sharing the one instance semaphore. The
        on/off state and the error count toward the threshold stay: they steer the filter,
        they are not statistics.
        """
        self.runs = self.skipped = self.changes = 0
        self.errors = self.timeouts = self.queue_timeouts = self.kills = 0
        self.verdicts.clear()
        self.durations.clear()
        self.histogram = Histogram()
        self.last_run = self.last_error_at = None
        self.last_error = None
        self.since = time.time()

    def refused_once(self, what: str) -> bool:
        """True the first time this kind of refusal is seen for this filter."""
        if what in self._refusals:
            return False
        self._refusals.add(what)
        return True


class Registry:
    """All filters' states, by name."""

    def __init__(self) -> None:
        self.states: dict[str, FilterState] = {}

    def get(self, name: str) -> FilterState:
        state = self.states.get(name)
        if state is None:
            state = self.states[name] = FilterState(name)
        return state

    def configure(self, limits: Iterable[tuple[str, int]]) -> None:
        """After a (re)load: keep states of names still present, switch everything on.

        ``limits`` must name every section, filters and address rules alike (an address rule's
        limit is 0): a state whose name is missing is dropped with its counters.
        """
        wanted = dict(limits)
        for name in list(self.states):
            if name not in wanted:
                del self.states[name]
        for name, limit in wanted.items():
            state = self.get(name)
            state.set_limit(limit)
            if state.disabled:
                log.info("filter %s switched on again by the reload", name)
            state.enable()
