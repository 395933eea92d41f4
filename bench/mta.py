#!/usr/bin/env python3
"""milter-agent and its peers behind a real Postfix, side by side (``make bench``).

A private Postfix instance (tests/support/postfix.py) listens on loopback with one smtpd per
milter transport (none, inet, unix) and relays everything to Postfix's own ``smtp-sink``.
Postfix's ``smtp-source`` is the load: 20 parallel SMTP sessions, one message each, of 4 KB and
of 1 MB. Each scenario runs in a freshly started milter, several interleaved rounds:

    postfix        Postfix alone (no milter): the limit on this machine
    pass           milter-agent, empty pipeline
    header         milter-agent, one [Address] rule adding a header
    exec1 / exec5  milter-agent, one / five [Filter] exec_cmd = "/bin/true %f"
    module         milter-agent, one Python module filter (in the daemon)
    pym-pass       pymilter (libmilter's C threads, Python callbacks), pass-through
    pym-exec       pymilter spawning /bin/true per message
    c-pass         C on libmilter, pass-through: the best a milter can do here
    c-exec         C on libmilter spawning /bin/true per message
    mimedefang     MIMEDefang 3 (Debian) with an accept-all filter

Measured per run, over the measured messages only (the warm-up is excluded): messages/s (from
starting smtp-source to the last message relayed to the sink), the milter's own CPU and its
children's (per 1000 messages, from /proc), Postfix's, the sink's and smtp-source's CPU, the
milter's latency per message (CONNECT to the end-of-message verdict, taken at the milter: from
milter-agent's per-message log line, from the peers' own records; MIMEDefang does not tell) and
its peak RSS. A memory scenario then sends 100 messages of 10 MB at once.

    python bench/mta.py                 # full run (about 13 min); bench/results/mta/
    python bench/mta.py --quick         # every scenario once, 4 KB, a few messages (make test)
    python bench/mta.py --only pass,c-pass --sizes 4k --rounds 2

Needs root (Postfix; scripts/ensure-bench-peers.sh installs and builds the peers). Only
127.0.0.1 and Unix sockets are used; every wait is bounded; every process is stopped.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib.util
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # tests.support
sys.path.insert(0, str(HERE))

from common import (  # noqa: E402
    DISTURBED,
    HEADER_ARGS,
    HEADER_RULE,
    MODULE_FILTER,
    RESULTS_DIR,
    BenchError,
    MachineStat,
    ProcStat,
    Spread,
    code_line,
    descendants,
    machine,
    outcome,
    peak_rss_kib,
    percentile,
    programs,
    source_fingerprint,
    tree_stat,
    update_docs,
    write_results,
)
from tests.support.daemon import DaemonError, MilterAgentDaemon  # noqa: E402
from tests.support.postfix import PostfixInstance, find_postfix_tool  # noqa: E402
from tests.support.util import free_port, make_traversable, wait_until  # noqa: E402

from milter_agent.control.client import ask  # noqa: E402

OUT = RESULTS_DIR / "mta"
DOC_SECTION = "mta"
PEERS = HERE / "peers"
C_MILTER = Path(os.environ.get("MA_BENCH_C_MILTER", "/var/cache/milter-agent-bench/c_milter"))
SIZES = {"4k": 4096, "1m": 1024 * 1024}
SESSIONS = 20
LOG_TIME = re.compile(r" decision=(\w+) time=([\d.]+)ms")


# --- scenarios --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    kind: str  # postfix, agent, pymilter, c, mimedefang
    config: str = ""  # milter-agent: the configuration file
    args: tuple[str, ...] = ()  # milter-agent: extra options; peers: their mode
    transports: tuple[str, ...] = ("inet",)


SCENARIOS: dict[str, Scenario] = {
    s.key: s
    for s in (
        Scenario("postfix", "Postfix alone, no milter", "postfix", transports=("none",)),
        Scenario("pass", "milter-agent pass-through", "agent", transports=("inet", "unix")),
        Scenario(
            "header",
            "milter-agent, 1 address rule + 1 header",
            "agent",
            HEADER_RULE,
            args=HEADER_ARGS,
        ),
        Scenario("exec1", "milter-agent, 1 program /bin/true %f", "agent", programs(1)),
        Scenario("exec5", "milter-agent, 5 programs /bin/true %f", "agent", programs(5)),
        Scenario("module", "milter-agent, 1 Python module filter", "agent", MODULE_FILTER),
        Scenario("pym-pass", "pymilter pass-through", "pymilter", args=("pass",)),
        Scenario("pym-exec", "pymilter spawning /bin/true", "pymilter", args=("exec",)),
        Scenario(
            "c-pass", "C libmilter pass-through", "c", args=("pass",), transports=("inet", "unix")
        ),
        Scenario("c-exec", "C libmilter spawning /bin/true", "c", args=("exec",)),
        Scenario("mimedefang", "MIMEDefang, accept-all filter", "mimedefang"),
    )
}
BASELINE = "postfix"
MIMEDEFANG_FILTER = (
    "sub filter_begin {} sub filter { return action_accept(); } sub filter_end {} 1;\n"
)


# --- milters ----------------------------------------------------------------------------------


class Milter:
    """A milter process tree under test: started fresh for each run, stopped after it."""

    def __init__(self, scenario: Scenario, transport: str, workdir: Path, socket: str) -> None:
        self.scenario = scenario
        self.transport = transport
        self.workdir = workdir
        self.socket = socket  # libmilter spelling: inet:PORT@127.0.0.1 or unix:/path
        self.procs: list[subprocess.Popen[bytes]] = []
        self.latency_file = workdir / "latency.txt"
        self.agent: MilterAgentDaemon | None = None

    # roots of the process tree whose CPU is "the milter's own"
    def roots(self) -> list[int]:
        if self.agent is not None:
            return [self.agent.pid]
        return [p.pid for p in self.procs]

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        kind = self.scenario.kind
        if kind == "agent":
            self._start_agent()
        elif kind == "pymilter":
            self._spawn(
                [
                    sys.executable,
                    str(PEERS / "pymilter_peer.py"),
                    "--mode",
                    self.scenario.args[0],
                    "--socket",
                    self.socket,
                    "--tmpdir",
                    str(self.workdir),
                    "--latency-file",
                    str(self.latency_file),
                ]
            )
        elif kind == "c":
            self._spawn(
                [
                    str(C_MILTER),
                    "-p",
                    self.socket,
                    "-m",
                    self.scenario.args[0],
                    "-T",
                    str(self.workdir),
                    "-L",
                    str(self.latency_file),
                ]
            )
        elif kind == "mimedefang":
            self._start_mimedefang()
        self._wait_listening()

    def _start_agent(self) -> None:
        config = self.workdir / "milter-agent.conf"
        config.write_text("log_level = 0\n\n" + self.scenario.config)
        spec = self.socket
        self.agent = MilterAgentDaemon(
            config,
            spec,
            f"unix:{self.workdir / 'ctrl'}",
            self.workdir / "spool",
            self.workdir,
            socket_mode="0666",
            extra_args=self.scenario.args,
        )
        try:
            self.agent.start()
        except DaemonError as exc:
            raise BenchError(str(exc)) from None

    def _spawn(self, argv: list[str], **kwargs: Any) -> None:
        log = (self.workdir / f"proc{len(self.procs)}.log").open("ab")
        setpriv = shutil.which("setpriv")
        if setpriv:  # if the benchmark dies, its milters die with it
            argv = [setpriv, "--pdeathsig", "KILL", "--", *argv]
        self.procs.append(
            subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                cwd=self.workdir,
                start_new_session=True,
                **kwargs,
            )
        )
        log.close()

    def _start_mimedefang(self) -> None:
        """The multiplexor with its Perl workers, and the milter that talks to it
        (as Debian's init script starts them, in the foreground)."""
        d = self.workdir
        shutil.chown(d, "defang", "defang")
        (d / "filter").write_text(MIMEDEFANG_FILTER)
        mx = d / "mx.sock"
        self._spawn(
            [
                *("mimedefang-multiplexor", "-D", "-E", "-U", "defang", "-z", str(d)),
                *("-s", str(mx), "-F", str(d / "filter")),
                *("-m", "4", "-x", "10", "-q", "100", "-Q", "30"),
            ]
        )
        wait_until(mx.exists, 20, message="mimedefang-multiplexor did not start")
        self._spawn(
            [
                *("mimedefang", "-D", "-U", "defang", "-z", str(d), "-m", str(mx)),
                *("-p", self.socket, "-q", "-X"),
            ]
        )

    def _wait_listening(self) -> None:
        def ready() -> bool:
            for proc in self.procs:
                if proc.poll() is not None:
                    raise BenchError(f"{self.scenario.key} exited early: {self.log_tail()}")
            return _accepts(self.socket)

        try:
            wait_until(ready, 30, interval=0.05)
        except TimeoutError as exc:
            raise BenchError(
                f"{self.scenario.key} not listening: {exc}\n{self.log_tail()}"
            ) from None

    def log_tail(self) -> str:
        if self.agent is not None:
            return "\n".join(self.agent.log_text().splitlines()[-15:])
        texts = [p.read_text(errors="replace") for p in sorted(self.workdir.glob("proc*.log"))]
        return "\n".join("\n".join(texts).splitlines()[-15:])

    def alive(self) -> bool:
        if self.agent is not None:
            return self.agent.running()
        return all(p.poll() is None for p in self.procs)

    def stop(self) -> int | None:
        """SIGTERM (peers then write their latency records), bounded; returns an exit code
        that is not 0 when something went wrong."""
        if self.agent is not None:
            return self.agent.stop()
        worst: int | None = 0
        for proc in reversed(self.procs):
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                code = proc.wait(15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                code = proc.wait(5)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            if code not in (0, -signal.SIGTERM, 143) and worst == 0:
                worst = code
        return worst

    def latencies(self, log_mark: int, warmup: int) -> tuple[list[float], list[float]]:
        """Seconds per measured message at the milter, CONNECT to verdict and time spent in
        the milter (empty if it does not tell): milter-agent's log lines after ``log_mark``
        (its time in the milter comes from added_latency()); the peers' records (every
        message, in order of completion) after the warm-up ones. Call after stop()."""
        if self.agent is not None:
            text = self.agent.log_text()[log_mark:]
            return [float(m.group(2)) / 1000 for m in LOG_TIME.finditer(text)], []
        if not self.latency_file.exists():
            return [], []
        rows = [line.split() for line in self.latency_file.read_text().splitlines()][warmup:]
        return [int(r[0]) / 1e6 for r in rows], [int(r[1]) / 1e6 for r in rows]

    def reset_stats(self) -> None:
        """milter-agent: forget the warm-up in its own statistics."""
        if self.agent is not None:
            ask(self.agent.control_spec, "reset-stats")

    def added_latency(self) -> dict[str, float | None] | None:
        """milter-agent's own percentiles of the time messages spent in it (None: a peer)."""
        if self.agent is None:
            return None
        data = ask(self.agent.control_spec, "status")["added_latency"]
        return {"added_p50_ms": data.get("p50_ms"), "added_p99_ms": data.get("p99_ms")}

    def log_mark(self) -> int:
        return len(self.agent.log_text()) if self.agent is not None else 0


def _accepts(spec: str) -> bool:
    kind, _, rest = spec.partition(":")
    family = socket.AF_UNIX if kind == "unix" else socket.AF_INET
    port, _, host = rest.partition("@")
    address: Any = rest if kind == "unix" else (host, int(port))
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        try:
            s.connect(address)
        except OSError:
            return False
        return True


# --- the MTA around them ----------------------------------------------------------------------


class Rig:
    """Postfix with three smtpd listeners (no milter, inet milter, unix milter), the sink."""

    def __init__(self, workroot: Path) -> None:
        self.workroot = workroot
        self.milter_port = free_port()
        self.milter_path = str(workroot / "milter" / "sock")
        (workroot / "milter").mkdir(parents=True)
        make_traversable(workroot / "milter")
        self.sink_port = free_port()
        self.sink: subprocess.Popen[bytes] | None = None
        self.postfix = PostfixInstance(
            ("127.0.0.1", self.sink_port),
            parent_dir=workroot,
            params={
                "default_process_limit": 200,
                "smtpd_milters": "",
                # fail, not fall back: a milter that breaks shows up as errors, not speed
                "milter_default_action": "tempfail",
                "smtp_destination_concurrency_limit": 40,
                "default_destination_concurrency_limit": 40,
            },
            listeners={
                "inet": {"smtpd_milters": f"inet:127.0.0.1:{self.milter_port}"},
                "unix": {"smtpd_milters": f"unix:{self.milter_path}"},
            },
        )

    def milter_socket(self, transport: str) -> str:
        if transport == "unix":
            return f"unix:{self.milter_path}"
        return f"inet:{self.milter_port}@127.0.0.1"

    def smtpd_port(self, transport: str) -> int:
        return self.postfix.port if transport == "none" else self.postfix.listener_ports[transport]

    def start(self) -> None:
        sink = find_postfix_tool("smtp-sink")
        if sink is None:
            raise BenchError("smtp-sink not found (Debian package postfix)")
        log = (self.workroot / "sink.log").open("ab")
        self.sink = subprocess.Popen(
            [sink, "-u", "nobody", "-m", "512", f"127.0.0.1:{self.sink_port}", "1024"],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
        log.close()
        wait_until(lambda: _accepts(f"inet:{self.sink_port}@127.0.0.1"), 10)
        self.postfix.start()

    def stop(self) -> None:
        self.postfix.stop()
        if self.sink is not None and self.sink.poll() is None:
            self.sink.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.sink.wait(5)
            if self.sink.poll() is None:
                self.sink.kill()

    def sink_pids(self) -> list[int]:
        return [self.sink.pid] if self.sink is not None else []

    def postfix_pids(self) -> list[int]:
        master = self.postfix._master_pid()
        return [master] if master else []

    def delivered(self, since: int) -> tuple[int, int]:
        """Messages relayed to the sink and messages refused or deferred, in the log."""
        text = self.postfix.log_text(since)
        sent = text.count(" status=sent ")
        failed = len(re.findall(r" status=(?:deferred|bounced)|milter-reject|: reject: ", text))
        return sent, failed


@dataclass
class Load:
    """One smtp-source run: its exit code, its own CPU (from wait4) and its stderr."""

    code: int
    cpu: float
    stderr: str


def smtp_source(port: int, count: int, size: int, sessions: int, timeout: float) -> Load:
    source = find_postfix_tool("smtp-source")
    if source is None:
        raise BenchError("smtp-source not found (Debian package postfix)")
    argv = [
        source,
        "-s",
        str(sessions),
        "-m",
        str(count),
        "-l",
        str(size),
        "-f",
        "sender@client.example",
        "-t",
        "rcpt@bench.example",
        "-S",
        "benchmark message",
        "-M",
        "client.example",
        f"127.0.0.1:{port}",
    ]
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=err, stderr=err)
        deadline = time.monotonic() + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                proc.kill()
                pid, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.01)
        proc.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        text = err.read().decode(errors="replace")
    return Load(proc.returncode, usage.ru_utime + usage.ru_stime, text[-2000:])


# --- one run ----------------------------------------------------------------------------------


@dataclass
class RunResult:
    scenario: str
    transport: str
    size: str
    sessions: int
    round: int
    messages: int
    seconds: float
    messages_per_s: float
    milter_cpu_per_1000: float
    children_cpu_per_1000: float
    postfix_cpu_per_1000: float
    rest_cpu_per_1000: float  # the sink and smtp-source
    machine_cpu_per_1000: float
    other_cores: float
    added_p50_ms: float | None  # time a message spent in the milter
    added_p99_ms: float | None
    span_p50_ms: float | None  # CONNECT to the verdict, at the milter
    span_p99_ms: float | None
    peak_rss_mib: float
    errors: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Plan:
    messages: dict[str, int]  # per size key
    warmup: int
    rounds: int
    time_limit: float
    sessions: int = SESSIONS


@dataclass
class Readings:
    """CPU of the milter's process tree, Postfix's and the sink's, and the whole machine's."""

    milter: ProcStat
    postfix: ProcStat
    sink: ProcStat
    machine: MachineStat

    @classmethod
    def take(cls, rig: Rig, roots: Sequence[int]) -> Readings:
        return cls(
            tree_stat(roots),
            tree_stat(rig.postfix_pids()),
            tree_stat(rig.sink_pids()),
            MachineStat.read(),
        )


def run_once(
    rig: Rig, scenario: Scenario, transport: str, size_key: str, round_no: int, plan: Plan
) -> RunResult:
    count = plan.messages[size_key]
    workdir = Path(tempfile.mkdtemp(prefix=f"{scenario.key}-", dir=rig.workroot))
    make_traversable(workdir)
    milter: Milter | None = None
    errors: list[str] = []
    port = rig.smtpd_port(transport)
    try:
        if scenario.kind != "postfix":
            milter = Milter(scenario, transport, workdir, rig.milter_socket(transport))
            milter.start()
        _warm_up(rig, port, plan, SIZES[size_key])
        if milter is not None:
            milter.reset_stats()
        roots = milter.roots() if milter else []
        mark = rig.postfix.log_mark()
        log_mark = milter.log_mark() if milter else 0
        before = Readings.take(rig, roots)
        started = time.monotonic()
        load = smtp_source(port, count, SIZES[size_key], plan.sessions, plan.time_limit)
        _wait_relayed(rig, mark, count, started + plan.time_limit)
        seconds = time.monotonic() - started
        after = Readings.take(rig, roots)
        rss = peak_rss_kib(roots + descendants(roots)) / 1024 if milter else 0.0
        added = milter.added_latency() if milter else None
        if load.code != 0:
            errors.append(f"smtp-source exit {load.code}: {load.stderr.strip()[-300:]}")
        sent, failed = rig.delivered(mark)
        if sent != count or failed:
            errors.append(f"{sent} of {count} relayed, {failed} refused or deferred")
        if milter is not None and not milter.alive():
            errors.append(f"milter died: {milter.log_tail()}")
    finally:
        code = milter.stop() if milter else 0
    if code not in (0, None):
        errors.append(f"milter exit code {code}")
    spans, peer_added = milter.latencies(log_mark, plan.warmup) if milter else ([], [])
    data: dict[str, Any] = {
        **_cpu(before, after, load.cpu, count, seconds),
        **_latency("span", spans),
        **(added or _latency("added", peer_added)),
    }
    return RunResult(
        scenario=scenario.key,
        transport=transport,
        size=size_key,
        sessions=plan.sessions,
        round=round_no,
        messages=count,
        seconds=round(seconds, 3),
        messages_per_s=count / seconds,
        errors=errors,
        peak_rss_mib=round(rss, 1),
        **data,
    )


def _cpu(
    before: Readings, after: Readings, client_cpu: float, count: int, seconds: float
) -> dict[str, float]:
    per_k = 1000 / count

    def spent(attr: str) -> float:
        a, b = getattr(after, attr), getattr(before, attr)
        return float((a.own + a.children) - (b.own + b.children))

    milter_own = after.milter.own - before.milter.own
    milter_children = after.milter.children - before.milter.children
    postfix, sink = spent("postfix"), spent("sink")
    machine_busy = after.machine.busy - before.machine.busy
    other = machine_busy - milter_own - milter_children - postfix - sink - client_cpu
    return {
        "milter_cpu_per_1000": milter_own * per_k,
        "children_cpu_per_1000": milter_children * per_k,
        "postfix_cpu_per_1000": postfix * per_k,
        "rest_cpu_per_1000": (client_cpu + sink) * per_k,
        "machine_cpu_per_1000": machine_busy * per_k,
        "other_cores": max(0.0, other) / seconds,
    }


def _latency(prefix: str, values: list[float]) -> dict[str, float | None]:
    ordered = sorted(values)

    def ms(q: float) -> float | None:
        return round(percentile(ordered, q) * 1000, 2) if ordered else None

    return {f"{prefix}_p50_ms": ms(50), f"{prefix}_p99_ms": ms(99)}


def _warm_up(rig: Rig, port: int, plan: Plan, size: int) -> None:
    if not plan.warmup:
        return
    mark = rig.postfix.log_mark()
    load = smtp_source(port, plan.warmup, size, min(SESSIONS, plan.warmup), 60)
    if load.code != 0:
        raise BenchError(f"warm-up failed: smtp-source exit {load.code}: {load.stderr[-300:]}")
    _wait_relayed(rig, mark, plan.warmup, time.monotonic() + 60)


def _wait_relayed(rig: Rig, mark: int, count: int, deadline: float) -> None:
    """Until Postfix has relayed ``count`` messages since ``mark`` and its queue is empty."""
    while time.monotonic() < deadline:
        sent, _failed = rig.delivered(mark)
        if sent >= count and rig.postfix.queue_count() == 0:
            return
        if rig.postfix.queue_count() == 0 and _failed:
            return
        time.sleep(0.02)
    raise BenchError(f"time limit reached: {rig.delivered(mark)[0]} of {count} relayed")


# --- the memory scenario ----------------------------------------------------------------------


@dataclass
class MemoryResult:
    scenario: str
    sessions: int
    message_mib: float
    seconds: float
    idle_rss_mib: float
    peak_rss_mib: float
    errors: list[str]


def memory_run(rig: Rig, key: str, sessions: int, size: int, time_limit: float) -> MemoryResult:
    """``sessions`` messages of ``size`` bytes at once; the daemon's RSS before and at peak."""
    scenario = SCENARIOS[key]
    workdir = Path(tempfile.mkdtemp(prefix=f"mem-{key}-", dir=rig.workroot))
    make_traversable(workdir)
    milter = Milter(scenario, "inet", workdir, rig.milter_socket("inet"))
    errors: list[str] = []
    port = rig.smtpd_port("inet")
    try:
        milter.start()
        assert milter.agent is not None
        idle = milter.agent.rss_kb() / 1024
        mark = rig.postfix.log_mark()
        started = time.monotonic()
        load = smtp_source(port, sessions, size, sessions, time_limit)
        _wait_relayed(rig, mark, sessions, started + time_limit)
        seconds = time.monotonic() - started
        peak = milter.agent.peak_rss_kb() / 1024
        sent, failed = rig.delivered(mark)
        if load.code != 0 or sent != sessions or failed:
            errors.append(f"smtp-source exit {load.code}, {sent} of {sessions} relayed")
    finally:
        code = milter.stop()
    if code not in (0, None):
        errors.append(f"milter exit code {code}")
    return MemoryResult(
        key, sessions, size / 2**20, round(seconds, 1), round(idle, 1), round(peak, 1), errors
    )


def memory_runs(rig: Rig, quick: bool, failures: list[str]) -> list[MemoryResult]:
    sessions, nbytes = (4, 2**20) if quick else (100, 10 * 2**20)
    results = []
    for key in ("pass", "exec1"):
        try:
            m = memory_run(rig, key, sessions, nbytes, 60 if quick else 600)
        except BenchError as exc:
            failures.append(f"memory {key}: {exc}")
            continue
        failures += [f"memory {key}: {e}" for e in m.errors]
        results.append(m)
        print(
            f"memory {key}: idle {m.idle_rss_mib} MiB peak {m.peak_rss_mib} MiB "
            f"({sessions} x {nbytes >> 20} MiB in {m.seconds} s)",
            file=sys.stderr,
        )
    return results


# --- summary ----------------------------------------------------------------------------------

#: (RunResult field or derived name, column title, digits)
METRICS: tuple[tuple[str, str, int], ...] = (
    ("messages_per_s", "msgs/s", 0),
    ("ratio", "x Postfix alone", 2),
    ("bound_ratio", "x zero-cost bound", 2),
    ("milter_cpu_per_1000", "milter CPU s/1000", 2),
    ("children_cpu_per_1000", "children CPU s/1000", 2),
    ("postfix_cpu_per_1000", "Postfix CPU s/1000", 2),
    ("added_p50_ms", "in milter p50 ms", 2),
    ("added_p99_ms", "in milter p99 ms", 2),
    ("span_p50_ms", "CONNECT-verdict p50 ms", 1),
    ("peak_rss_mib", "peak RSS MiB", 1),
    ("other_cores", "other load (cores)", 2),
)


def _paired(runs: Sequence[RunResult]) -> Iterator[tuple[RunResult, RunResult | None]]:
    """Each run with the Postfix-alone run of the same size, sessions and round."""
    base = {(r.size, r.sessions, r.round): r for r in runs if r.scenario == BASELINE}
    for r in runs:
        yield r, base.get((r.size, r.sessions, r.round))


def _derived(r: RunResult, base: RunResult | None) -> dict[str, float]:
    """Ratios to Postfix alone. The zero-cost bound is the rate this run would have reached
    with a milter that cost nothing: the machine is CPU-bound, so Postfix alone's rate scaled
    by its CPU per message (Postfix, sink and load generator) over this run's without the
    milter's own part, which includes Postfix's extra work for the milter protocol."""
    if base is None:
        return {}
    out = {"ratio": r.messages_per_s / base.messages_per_s}
    alone = base.postfix_cpu_per_1000 + base.rest_cpu_per_1000
    here = r.postfix_cpu_per_1000 + r.rest_cpu_per_1000
    if r.scenario != BASELINE and here > 0:
        bound = base.messages_per_s * alone / here
        out["bound_ratio"] = r.messages_per_s / bound
    return out


def summarise(runs: Sequence[RunResult]) -> list[dict[str, Any]]:
    derived = {id(r): _derived(r, b) for r, b in _paired(runs)}
    rows: list[dict[str, Any]] = []
    groups = dict.fromkeys((r.size, r.sessions, r.scenario, r.transport) for r in runs)
    for group in groups:
        size, sessions, key, transport = group
        mine = [r for r in runs if (r.size, r.sessions, r.scenario, r.transport) == group]
        values: dict[str, list[float]] = {}
        for r in mine:
            data = {**asdict(r), **derived[id(r)]}
            for name, _title, _digits in METRICS:
                if data.get(name) is not None:
                    values.setdefault(name, []).append(float(data[name]))
        rows.append(
            {
                "size": size,
                "sessions": sessions,
                "scenario": key,
                "transport": transport,
                "title": SCENARIOS[key].title,
                "runs": len(mine),
                "messages_per_run": mine[0].messages,
                "disturbed": sum(r.other_cores > DISTURBED for r in mine),
                **{k: asdict(Spread.of(v)) for k, v in values.items()},
            }
        )
    return rows


def markdown_tables(rows: Sequence[dict[str, Any]]) -> str:
    head = ["scenario", "socket", *(t for _n, t, _d in METRICS), "disturbed runs"]
    parts = []
    for size, sessions in dict.fromkeys((r["size"], r["sessions"]) for r in rows):
        mine = [r for r in rows if (r["size"], r["sessions"]) == (size, sessions)]
        parts.append(
            f"**{size.upper().replace('K', ' KB').replace('M', ' MB')} messages, "
            + ("1 session (sequential)" if sessions == 1 else f"{sessions} sessions")
            + f"** ({mine[0]['messages_per_run']:,} per run)\n"
        )
        parts.append("| " + " | ".join(head) + " |")
        parts.append("|" + "---|" * len(head))
        for row in mine:
            cells = [row["title"], row["transport"]]
            for name, _title, digits in METRICS:
                cells.append(Spread(**row[name]).fmt(digits) if name in row else "-")
            cells.append(f"{row['disturbed']} of {row['runs']}")
            parts.append("| " + " | ".join(cells) + " |")
        parts.append("")
    return "\n".join(parts)


def memory_table(results: Sequence[MemoryResult]) -> str:
    lines = [
        "| scenario | sessions | message MiB | seconds | idle RSS MiB | peak RSS MiB |",
        "|---|---|---|---|---|---|",
    ]
    for m in results:
        lines.append(
            f"| {SCENARIOS[m.scenario].title} | {m.sessions} | {m.message_mib:.0f} | "
            f"{m.seconds:.1f} | {m.idle_rss_mib:.1f} | {m.peak_rss_mib:.1f} |"
        )
    return "\n".join(lines) + "\n"


# --- main -------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="every scenario once, a few messages")
    ap.add_argument("--only", help=f"comma-separated scenarios, from {','.join(SCENARIOS)}")
    ap.add_argument("--sizes", help="comma-separated: 4k,1m (default both; --quick: 4k)")
    ap.add_argument("--rounds", type=int, help="interleaved rounds (default 3 for 4k, 2 for 1m)")
    ap.add_argument("--messages", type=int, help="messages per run (default 2000 / 250)")
    ap.add_argument("--no-memory", action="store_true", help="skip the 100 x 10 MB scenario")
    ap.add_argument("--no-sequential", action="store_true", help="skip the 1-session runs")
    ap.add_argument("--out", type=Path, help=f"results directory (default {OUT})")
    ap.add_argument("--update-docs", action="store_true", help="put the tables in the docs")
    args = ap.parse_args(argv)
    keys = args.only.split(",") if args.only else list(SCENARIOS)
    args.sizes = args.sizes or ("4k" if args.quick else "4k,1m")
    sizes = args.sizes.split(",")
    if any(k not in SCENARIOS for k in keys) or any(s not in SIZES for s in sizes):
        ap.error(f"unknown scenario or size in {args.only or ''} {args.sizes}")
    args.keys = [BASELINE] + [k for k in keys if k != BASELINE]
    args.size_keys = sizes
    if args.quick and args.update_docs:
        ap.error("--quick numbers do not belong in the docs")
    return args


#: Scenarios that also run with one session at a time: latency without queueing.
SEQUENTIAL = ("postfix", "pass", "c-pass", "pym-pass")


def plans(args: argparse.Namespace) -> list[tuple[str, Plan, list[str]]]:
    """(size, plan, scenarios) in the order they run: 20 sessions per size, then sequential."""
    quick = args.quick
    counts = (
        {"4k": 20, "1m": 4} if quick else {"4k": args.messages or 2000, "1m": args.messages or 250}
    )
    rounds = {"4k": 1 if quick else args.rounds or 3, "1m": 1 if quick else args.rounds or 2}
    warmup, limit = (2, 60.0) if quick else (20, 300.0)
    out = [(s, Plan(counts, warmup, rounds[s], limit), list(args.keys)) for s in args.size_keys]
    sequential = [k for k in args.keys if k in SEQUENTIAL]
    if not args.no_sequential and "4k" in args.size_keys and len(sequential) > 1:
        seq_counts = {"4k": 10 if quick else 300}
        out.append(("4k", Plan(seq_counts, warmup, rounds["4k"], limit, sessions=1), sequential))
    return out


def check_peers(keys: Sequence[str]) -> None:
    kinds = {SCENARIOS[k].kind for k in keys}
    missing = []
    if "c" in kinds and not C_MILTER.is_file():
        missing.append(f"{C_MILTER} (scripts/ensure-bench-peers.sh builds it)")
    if "pymilter" in kinds and importlib.util.find_spec("Milter") is None:
        missing.append("the pymilter package (scripts/ensure-bench-peers.sh installs it)")
    if "mimedefang" in kinds and shutil.which("mimedefang") is None:
        missing.append("mimedefang (Debian package; scripts/ensure-bench-peers.sh)")
    if missing:
        raise BenchError("missing: " + "; ".join(missing))


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        print("bench/mta.py: a private Postfix needs root", file=sys.stderr)
        return 2
    try:
        check_peers(args.keys)
    except BenchError as exc:
        print(f"bench/mta.py: {exc}", file=sys.stderr)
        return 2
    started = dt.datetime.now().astimezone()
    workroot = Path(tempfile.mkdtemp(prefix="ma-bench-", dir="/tmp"))
    make_traversable(workroot)
    rig = Rig(workroot)
    info = {**machine(), "source": source_fingerprint(), "postfix": _postfix_version()}
    runs: list[RunResult] = []
    memory: list[MemoryResult] = []
    failures: list[str] = []
    t0 = time.monotonic()
    try:
        rig.start()
        for size, plan, keys in plans(args):
            for round_no in range(1, plan.rounds + 1):
                for key in keys:
                    for transport in SCENARIOS[key].transports:
                        _one(rig, key, transport, size, round_no, plan, runs, failures)
        if not args.no_memory:
            memory = memory_runs(rig, args.quick, failures)
    finally:
        rig.stop()
        shutil.rmtree(workroot, ignore_errors=True)
    if source_fingerprint()["src_sha256"] != info["source"]["src_sha256"]:
        info["source"]["changed"] = True
    text = report(runs, memory, info, args, started, time.monotonic() - t0)
    print(text)
    if not args.quick or args.out:
        data = {
            "started": started.isoformat(timespec="seconds"),
            "machine": info,
            "summary": summarise(runs),
            "runs": [asdict(r) for r in runs],
            "memory": [asdict(m) for m in memory],
            "failures": failures,
        }
        for path in write_results(args.out or OUT, started.strftime("%Y%m%dT%H%M%S"), text, data):
            print(f"wrote {path}", file=sys.stderr)
        if args.update_docs and not failures:
            update_docs(DOC_SECTION, text)
    return outcome(failures, len(runs), time.monotonic() - t0)


def _one(
    rig: Rig,
    key: str,
    transport: str,
    size: str,
    round_no: int,
    plan: Plan,
    runs: list[RunResult],
    failures: list[str],
) -> None:
    label = f"{size} x{plan.sessions} round {round_no} {key}/{transport}"
    try:
        r = run_once(rig, SCENARIOS[key], transport, size, round_no, plan)
    except BenchError as exc:
        failures.append(f"{label}: {exc}")
        print(f"FAIL {failures[-1]}", file=sys.stderr)
        return
    failures += [f"{label}: {e}" for e in r.errors]
    runs.append(r)
    lat = f"in milter p50 {r.added_p50_ms} p99 {r.added_p99_ms} ms" if r.added_p50_ms else ""
    print(
        f"{label:34} {r.messages_per_s:7.0f}/s  milter {r.milter_cpu_per_1000:5.2f}"
        f"+{r.children_cpu_per_1000:5.2f} postfix {r.postfix_cpu_per_1000:5.2f} s/1000 "
        f"other {r.other_cores:4.2f} {lat}" + ("  ERRORS" if r.errors else ""),
        file=sys.stderr,
        flush=True,
    )


def _postfix_version() -> str:
    postconf = find_postfix_tool("postconf")
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        if postconf:
            return subprocess.run(
                [postconf, "-d", "-h", "mail_version"], capture_output=True, text=True, timeout=10
            ).stdout.strip()
    return "unknown"


def report(
    runs: Sequence[RunResult],
    memory: Sequence[MemoryResult],
    info: dict[str, Any],
    args: argparse.Namespace,
    started: dt.datetime,
    wall: float,
) -> str:
    lines = [
        f"Run {started.isoformat(timespec='seconds')} {code_line(info)} Postfix "
        f"{info['postfix']}; {wall / 60:.0f} min in all.",
        "Cells: median (min-max) over interleaved rounds. Disturbed runs: the rest of the "
        f"machine kept more than {DISTURBED} cores busy.",
    ]
    if args.quick:
        lines.append("--quick: a smoke test of the benchmark; these numbers are not worth quoting.")
    lines += ["", markdown_tables(summarise(runs))]
    if memory:
        lines += [
            "**Memory**: all messages at once; peak RSS of the daemon (VmHWM)\n",
            memory_table(memory),
        ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
