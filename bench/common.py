"""What the two benchmarks share: CPU and memory readings from /proc, the quiet-machine wait,
percentiles and spreads, the fingerprint of the code measured, and writing results.

``bench/mta.py`` measures milter-agent and its peers behind a real Postfix (``make bench``);
``bench/micro.py`` drives the daemon directly with the project's codec, without an MTA, to
profile the per-packet path.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "bench" / "results"
DOC = ROOT / "docs" / "performance.md"
CLK_TCK = os.sysconf("SC_CLK_TCK")
#: A run during which the rest of the machine kept more than this many cores busy is counted
#: as disturbed (it stays in the medians; the count is shown next to them).
DISTURBED = 0.25


# The milter-agent configurations both benchmarks measure (besides an empty one).
HEADER_RULE = (
    '[Address]\ntask_name = stamp\nmessage_recipient = "^rcpt"\n'
    'add_header_name = "X-Bench"\nadd_header_value = "checked for %s"\n'
)
HEADER_ARGS = ("-H", "-X")
MODULE_FILTER = (
    '[Filter]\ntask_name = dummy\nmodule_name = "milter_agent.modules.dummy"\nexec_cmd = "%f"\n'
)


def programs(count: int) -> str:
    """``count`` program filters running ``/bin/true %f``."""
    return "".join(
        f'\n[Filter]\ntask_name = true{i}\nexec_cmd = "/bin/true %f"\n' for i in range(1, count + 1)
    )


class BenchError(RuntimeError):
    """Something the benchmark cannot accept: a process that does not start, a wrong reply."""


@dataclass(frozen=True)
class ProcStat:
    """CPU seconds of a process (own) and of its waited-for children, from /proc/PID/stat."""

    own: float
    children: float

    @classmethod
    def read(cls, pid: int) -> ProcStat:
        fields = _stat_fields(pid)
        # fields[0] is field 3 (state): utime=14 stime=15 cutime=16 cstime=17 (1-based).
        utime, stime, cutime, cstime = (int(x) for x in fields[11:15])
        return cls((utime + stime) / CLK_TCK, (cutime + cstime) / CLK_TCK)

    def __add__(self, other: ProcStat) -> ProcStat:
        return ProcStat(self.own + other.own, self.children + other.children)


def _stat_fields(pid: int) -> list[str]:
    with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
        return f.read().rpartition(")")[2].split()


def descendants(roots: Iterable[int]) -> list[int]:
    """Every live process below ``roots`` (not the roots themselves)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                children.setdefault(int(_stat_fields(int(entry))[1]), []).append(int(entry))
    found: list[int] = []
    todo = list(roots)
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def tree_stat(roots: Sequence[int]) -> ProcStat:
    """CPU of a process tree: ``own`` is the roots' own time; ``children`` everything below
    them, live (their whole time) or already reaped (in the roots' cutime). Because a reaped
    process's time moves into its parent's cutime, the sum stays right while children come
    and go between two readings."""
    own = children = 0.0
    for pid in roots:
        with contextlib.suppress(OSError):
            stat = ProcStat.read(pid)
            own += stat.own
            children += stat.children
    for pid in descendants(roots):
        with contextlib.suppress(OSError):
            stat = ProcStat.read(pid)
            children += stat.own + stat.children
    return ProcStat(own, children)


def peak_rss_kib(pids: Iterable[int]) -> int:
    """Sum of the processes' VmHWM (peak resident set), in KiB."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError), open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1])
                    break
    return total


@dataclass(frozen=True)
class MachineStat:
    """Whole-machine CPU seconds from /proc/stat: busy (user+nice+system+irq+softirq) and
    steal (taken by the hypervisor)."""

    busy: float
    steal: float

    @classmethod
    def read(cls) -> MachineStat:
        with open("/proc/stat", encoding="ascii") as f:
            fields = [int(x) for x in f.readline().split()[1:9]]
        user, nice, system, _idle, _iowait, irq, softirq, steal = fields
        return cls((user + nice + system + irq + softirq) / CLK_TCK, steal / CLK_TCK)


def wait_for_quiet(limit: float, threshold: float = DISTURBED, window: float = 0.5) -> float:
    """Wait (at most ``limit`` seconds) until the machine has been idle, but for ``threshold``
    cores, for ``window`` seconds; returns the seconds waited. Shared machines run other
    people's test suites: starting a run in a quiet moment is cheaper than discarding it."""
    started = time.monotonic()
    while True:
        a = MachineStat.read()
        time.sleep(window)
        busy = (MachineStat.read().busy - a.busy) / window
        waited = time.monotonic() - started
        if busy <= threshold or waited >= limit:
            return waited


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted sequence."""
    if not sorted_values:
        return float("nan")
    rank = max(1, int(-(-q * len(sorted_values) // 100)))  # ceil(q/100 * n)
    return sorted_values[min(rank, len(sorted_values)) - 1]


@dataclass
class Spread:
    median: float
    low: float
    high: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        return cls(statistics.median(values), min(values), max(values))

    def fmt(self, digits: int = 0) -> str:
        def f(x: float) -> str:
            return f"{x:,.{digits}f}"

        if f(self.low) == f(self.high):
            return f(self.median)
        return f"{f(self.median)} ({f(self.low)}-{f(self.high)})"


def _git(*args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(ROOT), *args], capture_output=True, text=True, timeout=10, check=True
    ).stdout.strip()


def source_fingerprint() -> dict[str, Any]:
    """Which code was measured: the commit, and a hash of src/ as it is on disk (others may
    be editing the tree; a changed hash during a run is reported)."""
    digest = hashlib.sha256()
    for path in sorted((ROOT / "src" / "milter_agent").rglob("*.py")):
        digest.update(path.relative_to(ROOT).as_posix().encode() + b"\0" + path.read_bytes())
    commit, dirty = "unknown", False
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        commit = _git("rev-parse", "--short", "HEAD")
        dirty = bool(_git("status", "--porcelain", "--", "src"))
    return {"commit": commit, "src_dirty": dirty, "src_sha256": digest.hexdigest()[:16]}


def machine() -> dict[str, Any]:
    model = "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    load1, load5, _ = os.getloadavg()
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "kernel": platform.release(),
        "loadavg_at_start": [round(load1, 2), round(load5, 2)],
    }


def code_line(info: dict[str, Any]) -> str:
    """The sentence that says which code and machine a table comes from."""
    src = info["source"]
    return (
        f"on {info['nproc']} x {info['cpu_model']}, Python {info['python']}, "
        f"Linux {info['kernel']}, load average at start {info['loadavg_at_start'][0]}. "
        f"Code: commit {src['commit']}"
        + (" with uncommitted changes in src/" if src["src_dirty"] else "")
        + f", src/ sha256 {src['src_sha256']}"
        + (" (src/ CHANGED during the run: numbers mix versions)" if src.get("changed") else "")
        + "."
    )


def write_results(out: Path, stamp: str, text: str, data: dict[str, Any]) -> list[Path]:
    """``STAMP.md``/``STAMP.json`` and ``latest.md``/``latest.json`` under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    body = json.dumps(data, indent=2) + "\n"
    files = []
    for name, content in (
        (f"{stamp}.md", text),
        (f"{stamp}.json", body),
        ("latest.md", text),
        ("latest.json", body),
    ):
        (out / name).write_text(content)
        files.append(out / name)
    return files


def outcome(failures: Sequence[str], runs: int, seconds: float) -> int:
    """Say how the benchmark went; its exit status (1 if anything failed)."""
    if failures:
        print(f"bench: {len(failures)} failure(s):", file=sys.stderr)
        for failure in failures:
            print(f"  {failure}", file=sys.stderr)
        return 1
    print(f"bench: OK, {runs} runs in {seconds:.0f} s", file=sys.stderr)
    return 0


def update_docs(section: str, text: str) -> None:
    """Replace what stands between ``<!-- SECTION:begin ... -->`` and ``<!-- SECTION:end -->``
    in docs/performance.md."""
    doc = DOC.read_text()
    begin = doc.find(f"<!-- {section}:begin")
    begin_end = doc.find("-->", begin) + 3
    end = doc.find(f"<!-- {section}:end -->")
    if begin < 0 or end < begin_end:
        raise BenchError(f"{DOC}: markers for {section!r} not found")
    DOC.write_text(doc[:begin_end] + "\n" + text + doc[end:])
