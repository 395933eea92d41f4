#!/usr/bin/env python3
"""milter-agent's cost per message, measured without an MTA.

A load generator speaks the milter protocol to the daemon directly, through the project's own
sans-IO codec (``milter_agent.protocol``), over N parallel connections on a Unix socket and on
inet loopback. Each connection negotiates once, warms up, then sends many ~4 KB messages the way
Postfix does: a macro packet before each command, one packet per header, body chunks of at most
65535 bytes, every event answered.

Every scenario runs in its own, freshly started daemon process (``python -m milter_agent -d 1
-u root -c CONF -p SPEC -i unix:CTRL --spool-dir DIR``, like ``tests/support/daemon.py``).
Scenarios run interleaved (A B C D A B C D ...) for several rounds; ratios are taken between
runs of the same round and transport, then summarised as median and min-max.

Measured per run, over the measured messages only (handshake and warm-up excluded):
messages/s (wall clock), the daemon's own CPU (utime+stime from /proc/PID/stat) and its reaped
children's CPU (cutime+cstime), the client's own CPU, latency per message as the client sees it
(first MAIL byte written -> final reply to end-of-message read) and the daemon's VmHWM.

    python bench/micro.py                 # full run, results in bench/results/
    python bench/micro.py --quick         # a few seconds; exit 1 on any failure (used by make test)
    python bench/micro.py --profile exec1 # cProfile one scenario's daemon, print the top functions

Only 127.0.0.1 and Unix sockets are used; every wait is bounded; daemons are always stopped.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import importlib.util
import io
import os
import pstats
import shutil
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))  # a checkout's code
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests.support
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    DISTURBED,
    DOC,
    HEADER_ARGS,
    HEADER_RULE,
    MODULE_FILTER,
    RESULTS_DIR,
    BenchError,
    MachineStat,
    ProcStat,
    Spread,
    code_line,
    machine,
    outcome,
    percentile,
    programs,
    source_fingerprint,
    update_docs,
    wait_for_quiet,
    write_results,
)
from tests.support.daemon import DaemonError, MilterAgentDaemon
from tests.support.util import free_port

from milter_agent import protocol as p
from milter_agent.protocol.constants import Action, ProtocolFlag
from milter_agent.protocol.framing import FrameBuffer

DOC_SECTION = "micro"
MAX_BODY_CHUNK = 65535  # libmilter MILTER_MAX_DATA_SIZE; Postfix never sends more per packet
MESSAGE_SIZE = 4096
BENCH_HEADER = "X-Bench"
QID_PLACEHOLDER = b"QQQQQQQQQQ"  # replaced per message by a queue id of the same length
POSTFIX_OFFER = p.OptNeg(6, Action(0x1FF), ProtocolFlag(0x1FFFFF))


# --- scenarios --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    config: str
    args: tuple[str, ...] = ()
    expect_header: bool = False


SCENARIOS: dict[str, Scenario] = {
    s.key: s
    for s in (
        Scenario("pass", "pass-through", "log_level = 0\n"),
        Scenario(
            "header",
            "1 address rule adding a header (-H)",
            "log_level = 0\n\n" + HEADER_RULE,
            args=HEADER_ARGS,
            expect_header=True,
        ),
        Scenario("exec1", "1 program filter /bin/true %f", "log_level = 0\n" + programs(1)),
        Scenario("exec5", "5 program filters /bin/true %f", "log_level = 0\n" + programs(5)),
        Scenario("module", "1 Python module filter (dummy)", "log_level = 0\n" + MODULE_FILTER),
    )
}
BASELINE = "pass"
#: At most this many seconds of waiting for a quiet machine in a whole benchmark run.
QUIET_BUDGET = 30.0


# --- the daemon -------------------------------------------------------------------------------


class Daemon(MilterAgentDaemon):
    """One milter-agent process as the end-to-end tests start it, optionally under cProfile."""

    def __init__(self, scenario: Scenario, transport: str, workdir: Path, profile: Path | None):
        self.scenario = scenario
        self.transport = transport
        self.profile = profile
        self.path = str(workdir / "sock")
        self.port = free_port() if transport == "inet" else 0
        spec = f"unix:{self.path}" if transport == "unix" else f"inet:{self.port}@127.0.0.1"
        config = workdir / "milter-agent.conf"
        workdir.mkdir(parents=True, exist_ok=True)
        config.write_text(scenario.config)
        super().__init__(
            config,
            spec,
            f"unix:{workdir / 'ctrl'}",
            workdir / "spool",
            workdir,
            extra_args=scenario.args,
        )

    @property
    def argv(self) -> list[str]:
        argv = super().argv
        if self.profile is None:
            return argv
        return [argv[0], "-m", "cProfile", "-o", str(self.profile), *argv[1:]]

    def stat(self) -> ProcStat:
        return ProcStat.read(self.pid)

    def log_tail(self, lines: int = 15) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])


# --- what the client sends --------------------------------------------------------------------


def _packet(macros: p.Macro | None, command: p.Command) -> bytes:
    """A command preceded by its macro packet, written together (Postfix's stream buffer
    flushes only when it waits for the reply)."""
    return (p.encode_command(macros) if macros else b"") + p.encode_command(command)


def handshake_packets(index: int) -> list[bytes]:
    """OPTNEG, then CONNECT and HELO with their macros (each answered)."""
    return [
        p.encode_command(POSTFIX_OFFER),
        _packet(
            p.Macro(
                b"C",
                {
                    "j": "mx.bench.example",
                    "{daemon_name}": "mx.bench.example",
                    "{daemon_addr}": "127.0.0.1",
                    "v": "Postfix 3.7.11",
                    "_": "client.example [192.0.2.1]",
                    "{client_addr}": "192.0.2.1",
                    "{client_name}": "client.example",
                    "{client_port}": str(40000 + index),
                    "{client_ptr}": "client.example",
                },
            ),
            p.Connect("client.example", "4", 40000 + index, "192.0.2.1"),
        ),
        _packet(p.Macro(b"H", {}), p.Helo("client.example")),
    ]


def message_headers() -> list[tuple[str, str]]:
    """Postfix-like headers; values keep their leading space (HDR_LEADSPC is negotiated)."""
    qid = QID_PLACEHOLDER.decode()
    return [
        (
            "Received",
            " from client.example (client.example [192.0.2.1])\n\tby mx.bench.example "
            f"(Postfix) with ESMTP id {qid}\n\tfor <rcpt@bench.example>; "
            "Mon,  3 Jun 2024 10:00:00 +0000 (UTC)",
        ),
        ("From", " Sender Name <sender@client.example>"),
        ("To", " Recipient <rcpt@bench.example>"),
        ("Subject", " benchmark message"),
        ("Date", " Mon, 3 Jun 2024 10:00:00 +0000"),
        ("Message-ID", f" <{qid}@client.example>"),
        ("MIME-Version", " 1.0"),
        ("Content-Type", " text/plain; charset=us-ascii"),
    ]


def message_body(headers: Sequence[tuple[str, str]], size: int = MESSAGE_SIZE) -> bytes:
    """CRLF text lines so that headers + blank line + body is ``size`` bytes."""
    header_bytes = sum(len(n) + 1 + len(v.replace("\n", "\r\n")) + 2 for n, v in headers) + 2
    remaining = max(size - header_bytes, 2)
    line = b"The quick brown fox jumps over the lazy dog; milter-agent benchmark text.\r\n"
    body = line * (remaining // len(line) + 1)
    return body[: remaining - 2] + b"\r\n"


def message_packets(chunk: int = MAX_BODY_CHUNK) -> tuple[list[bytes], int]:
    """One message as written packets (each answered), and the message size in bytes."""
    qid = QID_PLACEHOLDER.decode()
    i = {"i": qid}
    headers = message_headers()
    body = message_body(headers)
    packets = [
        _packet(
            p.Macro(
                b"M",
                {
                    "i": qid,
                    "{mail_addr}": "sender@client.example",
                    "{mail_host}": "client.example",
                    "{mail_mailer}": "smtp",
                },
            ),
            p.Mail("<sender@client.example>", (f"SIZE={MESSAGE_SIZE}",)),
        ),
        _packet(
            p.Macro(
                b"R",
                {
                    "i": qid,
                    "{rcpt_addr}": "rcpt@bench.example",
                    "{rcpt_host}": "bench.example",
                    "{rcpt_mailer}": "local",
                },
            ),
            p.Rcpt("<rcpt@bench.example>"),
        ),
        _packet(p.Macro(b"T", i), p.Data()),
    ]
    packets += [_packet(p.Macro(b"L", i), p.Header(n, v)) for n, v in headers]
    packets.append(_packet(p.Macro(b"N", i), p.EndOfHeaders()))
    packets += [
        _packet(p.Macro(b"B", i), p.Body(body[k : k + chunk])) for k in range(0, len(body), chunk)
    ]
    packets.append(_packet(p.Macro(b"E", i), p.EndOfMessage()))
    size = sum(len(n) + 1 + len(v.replace("\n", "\r\n")) + 2 for n, v in headers) + 2 + len(body)
    return packets, size


# --- the load generator -----------------------------------------------------------------------

#: Modification actions an MTA accepts before the final reply to end-of-message.
ACTIONS = frozenset(bytes((b,)) for b in b"+-2hibmeq")


@dataclass
class Load:
    """Shared state of one run's connections."""

    packets: list[bytes]
    expect_header: bool
    warmup: int
    measured: int
    deadline: float
    loop: asyncio.AbstractEventLoop
    gate: asyncio.Future[None]
    latencies: list[float] = field(default_factory=list)
    completed: int = 0
    progress: int = 0
    errors: list[str] = field(default_factory=list)
    last_done: float = 0.0

    def fail(self, text: str) -> None:
        if len(self.errors) < 20:
            self.errors.append(text)


class MilterClient(asyncio.Protocol):
    """The MTA side of one connection, callback-driven to keep the client's own CPU low.

    Steps: handshake packets, ``warmup`` messages, wait for the gate, ``measured`` messages,
    QUIT. Every reply is checked: OPTNEG gets ``O``; every other command exactly one ``c``;
    end-of-message optional ``p`` progress, the expected actions (one ``h`` of our header in
    the header scenario, none otherwise), then ``c``."""

    def __init__(self, load: Load, index: int) -> None:
        self.load = load
        self.index = index
        self.frames = FrameBuffer()
        self.transport: asyncio.Transport | None = None
        self.done: asyncio.Future[None] = load.loop.create_future()
        self.warm: asyncio.Future[None] = load.loop.create_future()
        self.steps = handshake_packets(index)
        self.step = 0
        self.in_handshake = True
        self.quitting = False
        self.sent_messages = 0
        self.message_started = 0.0
        self.actions: list[tuple[bytes, bytes]] = []

    # asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family == socket.AF_INET:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as Postfix does
        transport.write(self.steps[0])

    def data_received(self, data: bytes) -> None:
        self.frames.feed(data)
        try:
            while (packet := self.frames.next_packet()) is not None:
                if self.done.done():
                    return
                if self.quitting:
                    self._error(f"a packet after QUIT: {packet[0]!r} {packet[1][:60]!r}")
                    return
                self._reply(*packet)
        except Exception as exc:  # a framing error from the daemon is a failed run
            self._error(f"bad packet: {exc}")

    def connection_lost(self, exc: Exception | None) -> None:
        if self.quitting and exc is None and not self.done.done():
            self.done.set_result(None)  # the daemon closed after our QUIT, nothing extra sent
        if not self.done.done():
            self._error(f"connection closed by the daemon ({exc})")
        if not self.warm.done():
            self.warm.set_result(None)

    # the state machine

    def _error(self, text: str) -> None:
        self.load.fail(f"connection {self.index}: {text}")
        if not self.done.done():
            self.done.set_result(None)
        if not self.warm.done():
            self.warm.set_result(None)
        if self.transport is not None:
            self.transport.abort()

    def _reply(self, cmd: bytes, payload: bytes) -> None:
        last = self.step == len(self.steps) - 1
        if self.in_handshake:
            want = b"O" if self.step == 0 else b"c"
            if cmd != want:
                self._error(f"handshake step {self.step}: got {cmd!r}, want {want!r}")
                return
            self._advance()
            return
        if not last:
            if cmd != b"c":
                self._error(f"message step {self.step}: got {cmd!r} {payload[:60]!r}, want 'c'")
                return
            self._advance()
            return
        # end of message
        if cmd == b"p":
            self.load.progress += 1
            return
        if cmd in ACTIONS:
            self.actions.append((cmd, payload))
            return
        if cmd != b"c":
            self._error(f"end of message: got {cmd!r} {payload[:80]!r}, want 'c'")
            return
        if self.load.expect_header:
            ok = len(self.actions) == 1 and self.actions[0][0] == b"h"
            ok = ok and self.actions[0][1].startswith(BENCH_HEADER.encode() + b"\0")
        else:
            ok = not self.actions
        if not ok:
            self._error(f"end of message: unexpected actions {self.actions!r}")
            return
        self.actions = []
        self._message_done()

    def _advance(self) -> None:
        assert self.transport is not None
        self.step += 1
        if self.step < len(self.steps):
            self.transport.write(self.steps[self.step])
            return
        if self.in_handshake:
            self.in_handshake = False
            self._next_message()

    def _message_done(self) -> None:
        now = time.perf_counter()
        load = self.load
        if self.sent_messages > load.warmup:
            load.latencies.append(now - self.message_started)
            load.completed += 1
            load.last_done = now
        self._next_message()

    def _gate_opened(self, gate: asyncio.Future[None]) -> None:
        if not gate.cancelled() and self.transport is not None and not self.transport.is_closing():
            self._next_message()

    def _next_message(self) -> None:
        assert self.transport is not None
        load = self.load
        if self.done.done():
            return
        if self.sent_messages == load.warmup and not load.gate.done():
            # Warmed up: wait until every connection is, then the measured part starts.
            self.warm.set_result(None)
            load.gate.add_done_callback(self._gate_opened)
            return
        if self.sent_messages >= load.warmup + load.measured:
            # QUIT, then wait for the daemon to close: a reply it still sends (one too many
            # for some command) shows up here as an error.
            self.quitting = True
            self.transport.write(p.encode_command(p.Quit()))
            return
        if time.monotonic() > load.deadline:
            self._error("time limit reached")
            return
        self.sent_messages += 1
        qid = f"{self.index:03X}{self.sent_messages:07X}".encode()
        self.steps = [s.replace(QID_PLACEHOLDER, qid) for s in load.packets]
        self.step = 0
        self.message_started = time.perf_counter()
        self.transport.write(self.steps[0])


@dataclass
class RunResult:
    scenario: str
    transport: str
    round: int
    connections: int
    messages: int
    seconds: float
    messages_per_s: float
    daemon_cpu_s: float
    children_cpu_s: float
    client_cpu_s: float
    daemon_cpu_per_1000: float
    children_cpu_per_1000: float
    client_cpu_per_1000: float
    daemon_utilisation: float
    other_cores: float
    steal_cores: float
    latency_p50_ms: float
    latency_p99_ms: float
    latency_max_ms: float
    peak_rss_kib: int
    progress_packets: int
    errors: list[str]
    waited_for_quiet_s: float = 0.0


@dataclass(frozen=True)
class Measured:
    load: Load
    seconds: float
    client_cpu: float
    before: ProcStat
    after: ProcStat
    machine_before: MachineStat
    machine_after: MachineStat


async def drive(
    daemon: Daemon, connections: int, per_connection: int, warmup: int, time_limit: float
) -> Measured:
    """Open the connections, warm up, then measure ``per_connection`` messages on each."""
    loop = asyncio.get_running_loop()
    packets, _size = message_packets()
    load = Load(
        packets=packets,
        expect_header=daemon.scenario.expect_header,
        warmup=warmup,
        measured=per_connection,
        deadline=time.monotonic() + time_limit,
        loop=loop,
        gate=loop.create_future(),
    )
    clients = [MilterClient(load, k) for k in range(connections)]

    async def connect(client: MilterClient) -> None:
        def factory() -> MilterClient:
            return client

        if daemon.transport == "unix":
            await loop.create_unix_connection(factory, daemon.path)
        else:
            await loop.create_connection(factory, "127.0.0.1", daemon.port)

    def remaining() -> float:
        return max(0.1, load.deadline - time.monotonic())

    try:
        await asyncio.wait_for(asyncio.gather(*(connect(c) for c in clients)), remaining())
        await asyncio.wait_for(asyncio.gather(*(c.warm for c in clients)), remaining())
        if load.errors:
            raise BenchError("; ".join(load.errors))
        before = daemon.stat()
        machine0 = MachineStat.read()
        cpu0 = time.process_time()
        t0 = time.perf_counter()
        load.gate.set_result(None)
        await asyncio.wait_for(asyncio.gather(*(c.done for c in clients)), remaining())
        t1 = load.last_done or time.perf_counter()
        cpu1 = time.process_time()
        after = daemon.stat()
        machine1 = MachineStat.read()
    except TimeoutError:
        load.fail(f"time limit of {time_limit:.0f}s reached, {load.completed} messages done")
        raise BenchError("; ".join(load.errors)) from None
    finally:
        for c in clients:
            if c.transport is not None and not c.transport.is_closing():
                c.transport.abort()
        if not load.gate.done():
            load.gate.cancel()
    return Measured(load, t1 - t0, cpu1 - cpu0, before, after, machine0, machine1)


def run_once(
    scenario: Scenario,
    transport: str,
    round_no: int,
    *,
    connections: int,
    messages: int,
    warmup: int,
    time_limit: float,
    workroot: Path,
    profile: Path | None = None,
) -> RunResult:
    per_connection = max(1, messages // connections)
    workdir = Path(tempfile.mkdtemp(prefix=f"{scenario.key}-{transport}-", dir=workroot))
    daemon = Daemon(scenario, transport, workdir, profile)
    try:
        try:
            daemon.start()
        except DaemonError as exc:
            raise BenchError(f"{scenario.key}/{transport}: {exc}") from None
        m = asyncio.run(drive(daemon, connections, per_connection, warmup, time_limit))
        load, seconds = m.load, m.seconds
        if not daemon.running():
            load.fail(f"daemon died: {daemon.log_tail()}")
        peak = daemon.peak_rss_kb()
    finally:
        code = daemon.stop()
    if profile is None and code not in (0, None):
        load.fail(f"daemon exit code {code}: {daemon.log_tail()}")
    done = load.completed
    if done != per_connection * connections and not load.errors:
        load.fail(f"{done} of {per_connection * connections} messages answered")
    lat = sorted(load.latencies)
    own = m.after.own - m.before.own
    children = m.after.children - m.before.children
    other = m.machine_after.busy - m.machine_before.busy - own - children - m.client_cpu
    steal = m.machine_after.steal - m.machine_before.steal
    per_k = 1000 / done if done else float("nan")
    return RunResult(
        scenario=scenario.key,
        transport=transport,
        round=round_no,
        connections=connections,
        messages=done,
        seconds=seconds,
        messages_per_s=done / seconds if seconds > 0 else float("nan"),
        daemon_cpu_s=own,
        children_cpu_s=children,
        client_cpu_s=m.client_cpu,
        daemon_cpu_per_1000=own * per_k,
        children_cpu_per_1000=children * per_k,
        client_cpu_per_1000=m.client_cpu * per_k,
        daemon_utilisation=own / seconds if seconds > 0 else float("nan"),
        other_cores=max(0.0, other) / seconds if seconds > 0 else float("nan"),
        steal_cores=steal / seconds if seconds > 0 else float("nan"),
        latency_p50_ms=percentile(lat, 50) * 1000,
        latency_p99_ms=percentile(lat, 99) * 1000,
        latency_max_ms=(lat[-1] if lat else float("nan")) * 1000,
        peak_rss_kib=peak,
        progress_packets=load.progress,
        errors=load.errors,
    )


# --- summary and reports ----------------------------------------------------------------------


METRICS: tuple[tuple[str, str, int], ...] = (
    # (RunResult field, column title, digits)
    ("messages_per_s", "msgs/s", 0),
    ("ratio", "x pass-through", 2),
    ("daemon_cpu_per_1000", "daemon CPU s/1000", 2),
    ("children_cpu_per_1000", "children CPU s/1000", 2),
    ("daemon_utilisation", "daemon CPU util", 2),
    ("latency_p50_ms", "p50 ms", 1),
    ("latency_p99_ms", "p99 ms", 1),
    ("peak_rss_mib", "peak RSS MiB", 1),
    ("client_cpu_per_1000", "client CPU s/1000", 2),
    ("other_cores", "other load (cores)", 2),
)


def summarise(runs: Sequence[RunResult]) -> list[dict[str, Any]]:
    """Per transport and scenario: median and min-max of every metric. Ratios are paired:
    each run against the pass-through run of the same round and transport."""
    base = {(r.transport, r.round): r.messages_per_s for r in runs if r.scenario == BASELINE}
    rows: list[dict[str, Any]] = []
    transports = list(dict.fromkeys(r.transport for r in runs))
    scenarios = list(dict.fromkeys(r.scenario for r in runs))
    for transport in transports:
        for key in scenarios:
            mine = [r for r in runs if r.transport == transport and r.scenario == key]
            if not mine:
                continue
            values: dict[str, list[float]] = {name: [] for name, _t, _d in METRICS}
            for r in mine:
                for name, _t, _d in METRICS:
                    if name == "ratio":
                        b = base.get((transport, r.round))
                        if b:
                            values[name].append(r.messages_per_s / b)
                    elif name == "peak_rss_mib":
                        values[name].append(r.peak_rss_kib / 1024)
                    else:
                        values[name].append(float(getattr(r, name)))
            rows.append(
                {
                    "transport": transport,
                    "scenario": key,
                    "title": SCENARIOS[key].title,
                    "rounds": len(mine),
                    "disturbed": sum(r.other_cores > DISTURBED for r in mine),
                    "messages_per_run": statistics.median(r.messages for r in mine),
                    **{k: asdict(Spread.of(v)) for k, v in values.items() if v},
                }
            )
    return rows


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    head = ["transport", "scenario", *(title for _n, title, _d in METRICS), "disturbed runs"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [row["transport"], row["title"]]
        for name, _title, digits in METRICS:
            cells.append(Spread(**row[name]).fmt(digits) if name in row else "-")
        cells.append(f"{row['disturbed']} of {row['rounds']}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def report(
    runs: Sequence[RunResult], params: dict[str, Any], info: dict[str, Any], started: str
) -> tuple[str, dict[str, Any]]:
    rows = summarise(runs)
    table = markdown_table(rows)
    text = "\n".join(
        [
            f"Run {started} {code_line(info)}",
            f"{params['connections']} connection{'s' if params['connections'] != 1 else ''}, "
            f"{params['messages_per_run']} measured messages "
            f"of {params['message_size']} bytes per run (after {params['warmup']} warm-up "
            f"messages per connection), {params['rounds']} interleaved rounds. Cells: median "
            f"(min-max) over rounds; disturbed runs: other load > {DISTURBED} cores"
            + (
                f" (before each run the benchmark waited up to {params['quiet_wait_limit_s']:.0f}"
                f" s, {QUIET_BUDGET:.0f} s in all, for a quiet machine: "
                f"{params['waited_for_quiet_s']:.0f} s waited)."
                if params["quiet_wait_limit_s"] > 0
                else "."
            ),
            *(
                ["--quick: a smoke test of the benchmark; these numbers are not worth quoting."]
                if params["quick"]
                else []
            ),
            "",
            table,
            "",
        ]
    )
    data = {
        "started": started,
        "machine": info,
        "parameters": params,
        "summary": rows,
        "runs": [asdict(r) for r in runs],
    }
    return text, data


# --- profiling --------------------------------------------------------------------------------


def profile(args: argparse.Namespace, workroot: Path) -> int:
    """Run one scenario once with the daemon under cProfile and print its hottest functions."""
    out = workroot / "daemon.prof"
    result = run_once(
        SCENARIOS[args.profile],
        args.transports[0],
        1,
        connections=args.connections,
        messages=args.messages,
        warmup=args.warmup,
        time_limit=args.time_limit,
        workroot=workroot,
        profile=out,
    )
    print(
        f"{result.scenario}/{result.transport}: {result.messages} messages, "
        f"{result.messages_per_s:.0f}/s under cProfile (slower than without)"
    )
    stream = io.StringIO()
    stats = pstats.Stats(str(out), stream=stream)
    stats.sort_stats("tottime").print_stats(25)
    stats.sort_stats("cumulative").print_stats(25)
    print(stream.getvalue())
    return 1 if result.errors else 0


# --- main -------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--quick", action="store_true", help="tiny run that checks every reply")
    ap.add_argument("--messages", type=int, help="measured messages per run (all connections)")
    ap.add_argument("--rounds", type=int, help="interleaved rounds")
    ap.add_argument("--connections", type=int, default=20, help="parallel connections")
    ap.add_argument("--warmup", type=int, help="unmeasured messages per connection first")
    ap.add_argument("--out", type=Path, help="results directory (default bench/results)")
    ap.add_argument(
        "--scenarios",
        default=",".join(SCENARIOS),
        help=f"comma-separated, from {','.join(SCENARIOS)} (pass is always included)",
    )
    ap.add_argument("--transports", default="unix,inet", help="comma-separated: unix,inet")
    ap.add_argument("--time-limit", type=float, help="seconds allowed per run")
    ap.add_argument(
        "--quiet-wait",
        type=float,
        help="before each run, wait up to this many seconds for the machine to be idle",
    )
    ap.add_argument("--update-docs", action="store_true", help=f"put the table in {DOC.name}")
    ap.add_argument("--profile", choices=list(SCENARIOS), help="cProfile one scenario's daemon")
    args = ap.parse_args(argv)
    quick = args.quick
    args.messages = args.messages or (40 if quick else 600)
    args.rounds = args.rounds or (1 if quick else 5)
    args.warmup = args.warmup if args.warmup is not None else (1 if quick else 3)
    args.time_limit = args.time_limit or (20.0 if quick else 120.0)
    if args.quiet_wait is None:
        args.quiet_wait = 0.0 if quick else 5.0
    if quick:
        args.connections = min(args.connections, 4)
        if args.update_docs:
            ap.error("--quick numbers do not belong in the docs; drop --update-docs")
    keys = [k for k in args.scenarios.split(",") if k]
    unknown = [k for k in keys if k not in SCENARIOS]
    transports = [t for t in args.transports.split(",") if t]
    if unknown or any(t not in ("unix", "inet") for t in transports) or not transports:
        ap.error(f"unknown scenario or transport: {unknown or transports}")
    args.scenarios = [BASELINE] + [k for k in keys if k != BASELINE]
    args.transports = transports
    if args.messages < args.connections or args.rounds < 1 or args.connections < 1:
        ap.error("need --connections >= 1, --messages >= --connections, --rounds >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if importlib.util.find_spec("regex") is None or importlib.util.find_spec("cronsim") is None:
        print(
            "bench/micro.py: milter-agent's dependencies are missing; use .venv/bin/python",
            file=sys.stderr,
        )
        return 2
    if os.geteuid() != 0:
        print("bench/micro.py: the daemon is started with -u root; run as root", file=sys.stderr)
        return 2
    started = dt.datetime.now().astimezone()
    stamp = started.strftime("%Y%m%dT%H%M%S")
    workroot = Path(tempfile.mkdtemp(prefix="ma-bench-", dir="/tmp"))  # short Unix socket paths
    try:
        if args.profile:
            try:
                return profile(args, workroot)
            except BenchError as exc:
                print(f"bench: {exc}", file=sys.stderr)
                return 1
        info = machine()
        info["source"] = source_fingerprint()
        runs: list[RunResult] = []
        failures: list[str] = []
        t_start = time.monotonic()
        total_waited = 0.0
        for round_no in range(1, args.rounds + 1):
            for transport in args.transports:
                for key in args.scenarios:
                    budget = min(args.quiet_wait, QUIET_BUDGET - total_waited)
                    waited = wait_for_quiet(budget) if budget > 0 else 0.0
                    total_waited += waited
                    try:
                        r = run_once(
                            SCENARIOS[key],
                            transport,
                            round_no,
                            connections=args.connections,
                            messages=args.messages,
                            warmup=args.warmup,
                            time_limit=args.time_limit,
                            workroot=workroot,
                        )
                    except BenchError as exc:
                        failures.append(f"round {round_no} {key}/{transport}: {exc}")
                        print(f"FAIL {failures[-1]}", file=sys.stderr)
                        continue
                    failures += [f"round {round_no} {key}/{transport}: {e}" for e in r.errors]
                    r.waited_for_quiet_s = round(waited, 1)
                    runs.append(r)
                    print(
                        f"round {round_no} {transport:5} {key:7} {r.messages:6} msgs "
                        f"{r.messages_per_s:7.0f}/s  p50 {r.latency_p50_ms:6.1f} ms  "
                        f"p99 {r.latency_p99_ms:6.1f} ms  daemon CPU "
                        f"{r.daemon_cpu_per_1000:5.2f}+{r.children_cpu_per_1000:5.2f} s/1000 "
                        f"util {r.daemon_utilisation:4.2f} other {r.other_cores:4.2f} "
                        f"steal {r.steal_cores:4.2f}" + ("  ERRORS" if r.errors else ""),
                        file=sys.stderr,
                        flush=True,
                    )
        if source_fingerprint()["src_sha256"] != info["source"]["src_sha256"]:
            info["source"]["changed"] = True
            print("bench: WARNING: src/ changed during the run", file=sys.stderr)
        params = {
            "quick": args.quick,
            "connections": args.connections,
            "messages_per_run": max(1, args.messages // args.connections) * args.connections,
            "warmup": args.warmup,
            "rounds": args.rounds,
            "transports": args.transports,
            "scenarios": {k: asdict(SCENARIOS[k]) for k in args.scenarios},
            "message_size": message_packets()[1],
            "quiet_wait_limit_s": args.quiet_wait,
            "waited_for_quiet_s": round(total_waited, 1),
            "wall_seconds": round(time.monotonic() - t_start, 1),
        }
        if runs:
            text, data = report(runs, params, info, started.isoformat(timespec="seconds"))
            data["failures"] = failures
            print(text)
            out = args.out or (None if args.quick else RESULTS_DIR / "micro")
            if out is not None:
                for path in write_results(out, stamp, text, data):
                    print(f"wrote {path}", file=sys.stderr)
            if args.update_docs and not failures:
                update_docs(DOC_SECTION, text)
                print(f"updated {DOC}", file=sys.stderr)
        return outcome(failures, len(runs), params["wall_seconds"])
    finally:
        shutil.rmtree(workroot, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
