#!/usr/bin/env python3
"""Soak: many messages through a real, private Postfix and milter-agent with two external
filters, with faults injected at random, then a reconciliation that must balance exactly.

    .venv/bin/python tests/soak/soak.py --messages 2000        # a few minutes at most
    .venv/bin/python tests/soak/soak.py                        # 100,000 messages (make soak)

Faults, chosen per message by a seeded random generator (the Subject carries the choice):
- in the first filter ("scan"): reject, tempfail, SIGKILL, SIGSEGV, hang past its timeout
  (killed with -T), a grandchild holding stdout, 4 MB of stdout;
- the SMTP client hangs up in the middle of DATA (Postfix then aborts the milter transaction);
- in the background: a raw milter connection that hangs up at a random stage, twice a second,
  and a configuration reload (SIGHUP) every 10 s.
The second filter ("stamp") adds a header and replaces the body of every message it sees.

Reconciliation (every number must agree, or the exit status is 1):
- client side: sent = delivered + rejected + tempfailed, where "sent" counts the transactions
  the client completed (DATA finished) and every one got exactly one final answer;
- the sink: exactly the delivered messages, each once, each with both filters' changes; none
  of the client's half-sent messages;
- Postfix's log: one status=sent per delivered message, one milter-reject per rejected (5xx)
  and tempfailed (4xx) one;
- milter-agent: ``status --json`` verdicts (continue, reject, tempfail) equal the same three
  numbers, and ``filters --json`` counts one error per injected filter failure;
- resources: the daemon's open fds, children and spool files back to their baseline; RSS and
  fds sampled during the run show no growth between the first and the last quarter.

Everything talks to 127.0.0.1 or Unix sockets only; every wait is bounded.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import random
import re
import shutil
import signal
import smtplib
import socket
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
TESTS = HERE.parent
sys.path.insert(0, str(TESTS))
sys.path.insert(0, str(TESTS.parent / "src"))

from faults.faultkit import (  # noqa: E402
    MilterClient,
    baseline,
    children,
    fd_count,
    filters,
    message_commands,
    spool_files,
    status,
    write_script,
)
from milter_agent import protocol as p  # noqa: E402
from support.daemon import MilterAgentDaemon  # noqa: E402
from support.postfix import PostfixInstance  # noqa: E402
from support.sink import SinkMessage, SmtpSink  # noqa: E402
from support.smtp import build_message, send_message  # noqa: E402
from support.util import wait_until  # noqa: E402

#: fault -> share of messages. What is left is plain mail.
FAULTS = {
    "reject": 0.03,
    "tempfail": 0.03,
    "sigkill": 0.01,
    "segv": 0.01,
    "hang": 0.002,
    "grandchild": 0.005,
    "flood": 0.005,
    "client-abort": 0.01,
}
#: faults that are filter errors, hence tempfailed with -E
FILTER_ERRORS = ("sigkill", "segv", "hang")

SCAN = """#!/bin/sh
# $1 = the message, $2 = the header file
case "$(grep -m1 '^Subject:' "$1")" in
  *fault=reject*) echo "rejected by the soak"; exit 1 ;;
  *fault=tempfail*) echo "try again, says the soak"; exit 75 ;;
  *fault=sigkill*) kill -KILL $$ ;;
  *fault=segv*) kill -SEGV $$ ;;
  *fault=hang*) sleep 60 ;;
  *fault=grandchild*) (sleep 1; echo late) & ;;
  *fault=flood*) head -c 4000000 /dev/zero ;;
esac
echo "X-Scan: clean" > "$2"
"""

STAMP = """#!/bin/sh
# $1 = the message, $2 = the header file, $3 = the new body
echo "X-Stamp: $(wc -c < "$1")" > "$2"
printf 'stamped body\\r\\n' > "$3"
"""


def config(scan: Path, stamp: Path) -> str:
    return f"""log_level = 0
kill_grace = 1
[Filter]
task_name = scan
reject_exit_codes = "1"
tempfail_exit_codes = "75"
task_timeout = 3
exec_cmd = "{scan} %f %h"

[Filter]
task_name = stamp
exec_cmd = "{stamp} %f %h %n"
"""


# --- sending ----------------------------------------------------------------------------------


@dataclass
class Outcome:
    fault: str
    code: int  # the final SMTP code; 0 when the client hung up on purpose
    error: str = ""


def client_abort(address: tuple[str, int], data: bytes) -> Outcome:
    """Start DATA, send half the message, hang up."""
    client = smtplib.SMTP(timeout=60)
    try:
        client.connect(*address)
        client.ehlo("client.example.test")
        client.mail("a@example.org")
        client.rcpt("b@example.net")
        code, _ = client.docmd("DATA")
        if code != 354:
            return Outcome("client-abort", code, "DATA refused")
        assert client.sock is not None
        client.sock.sendall(data[: len(data) // 2])
        client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
    finally:
        client.close()
    return Outcome("client-abort", 0)


def send_one(address: tuple[str, int], n: int, fault: str) -> Outcome:
    subject = f"soak {n} fault={fault}"
    data = build_message(subject=subject, body_size=2048, message_id=f"<soak-{n}@example.org>")
    try:
        if fault == "client-abort":
            return client_abort(address, data)
        result = send_message(address, "a@example.org", ["b@example.net"], data, timeout=120)
    except (OSError, smtplib.SMTPException) as exc:
        return Outcome(fault, -1, repr(exc))
    if result.stage not in ("accepted", "eom"):
        return Outcome(fault, result.code, f"ended at {result.stage}: {result.text}")
    return Outcome(fault, result.code)


# --- background chaos and sampling ------------------------------------------------------------


class Chaos(threading.Thread):
    """Raw milter connections that hang up at a random stage, and config reloads."""

    def __init__(self, agent: MilterAgentDaemon, rng: random.Random) -> None:
        super().__init__(daemon=True)
        self.agent, self.rng = agent, rng
        self.stop = threading.Event()
        self.hangups = self.reloads = self.failures = 0

    def run(self) -> None:
        last_reload = time.monotonic()
        while not self.stop.wait(0.5):
            try:
                self.hang_up()
                self.hangups += 1
            except (OSError, AssertionError):
                self.failures += 1
            if time.monotonic() - last_reload > 10:
                self.agent.send_signal(signal.SIGHUP)
                self.reloads += 1
                last_reload = time.monotonic()

    def hang_up(self) -> None:
        with MilterClient(self.agent.socket_spec, timeout=10) as mta:
            mta.handshake()
            commands = message_commands()[:-1]  # never the end of message: no verdict
            for command in commands[: self.rng.randrange(len(commands))]:
                mta.command(command)
            if self.rng.random() < 0.5:
                mta.raw(p.encode_command(p.Body(b"x" * 1000))[:500])  # half a packet


@dataclass
class Samples:
    times: list[float] = field(default_factory=list)
    fds: list[int] = field(default_factory=list)
    rss_kb: list[int] = field(default_factory=list)


class Sampler(threading.Thread):
    def __init__(self, agent: MilterAgentDaemon, interval: float) -> None:
        super().__init__(daemon=True)
        self.agent, self.interval = agent, interval
        self.samples = Samples()
        self.stop = threading.Event()
        self.started = time.monotonic()

    def run(self) -> None:
        while not self.stop.wait(self.interval):
            with contextlib.suppress(OSError):
                self.samples.times.append(time.monotonic() - self.started)
                self.samples.fds.append(fd_count(self.agent.pid))
                self.samples.rss_kb.append(self.agent.rss_kb())


# --- the sink tally ---------------------------------------------------------------------------


class Tally:
    """Counts what the sink receives without keeping the messages (100,000 would not fit)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.ids: collections.Counter[int] = collections.Counter()
        self.unchanged: list[int] = []

    def record(self, msg: SinkMessage) -> None:
        n = int(re.search(r"soak (-?\d+) ", str(msg.headers["Subject"])).group(1))  # type: ignore[union-attr]
        changed = (
            msg.header_values("X-Scan") == ["clean"]
            and len(msg.header_values("X-Stamp")) == 1
            and msg.body == b"stamped body\r\n"
        )
        with self.lock:
            self.ids[n] += 1
            if not changed:
                self.unchanged.append(n)


# --- the run ----------------------------------------------------------------------------------


def choose_faults(count: int, rng: random.Random) -> list[str]:
    names, weights = list(FAULTS), list(FAULTS.values())
    names.append("none")
    weights.append(1 - sum(weights))
    return rng.choices(names, weights, k=count)


def postfix_counts(text: str) -> dict[str, int]:
    rejects = re.findall(r"milter-reject: END-OF-MESSAGE from \S+: (\d)\.\d+\.\d+", text)
    return {
        "status=sent": len(re.findall(r" status=sent ", text)),
        "milter-reject 5xx": rejects.count("5"),
        "milter-reject 4xx": rejects.count("4"),
        "milter errors": len(re.findall(r"warning: milter ", text)),
        "lost in DATA": len(re.findall(r"lost connection after DATA", text)),
    }


def growth(values: list[int]) -> tuple[float, float]:
    """Mean of the first and of the last quarter of the samples."""
    quarter = max(1, len(values) // 4)
    return statistics.mean(values[:quarter]), statistics.mean(values[-quarter:])


def run(args: argparse.Namespace) -> int:
    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="ma-soak-"))
    tally = Tally()
    status_code = 1
    with SmtpSink() as sink:
        sink._record = tally.record  # type: ignore[method-assign]
        postfix = PostfixInstance(sink.address, parent_dir=work)
        try:
            postfix.start()
            status_code = soak(args, rng, work, postfix, tally)
        finally:
            postfix.stop()
            if status_code == 0 and not args.keep:
                shutil.rmtree(work, ignore_errors=True)
            else:
                print(f"logs, configuration and Postfix instance kept in {work}", file=sys.stderr)
    return status_code


def soak(
    args: argparse.Namespace,
    rng: random.Random,
    work: Path,
    postfix: PostfixInstance,
    tally: Tally,
) -> int:
    scan = write_script(work / "scan.sh", SCAN)
    stamp = write_script(work / "stamp.sh", STAMP)
    (work / "agent").mkdir()
    conf = work / "agent" / "milter-agent.conf"
    conf.write_text(config(scan, stamp))
    agent = MilterAgentDaemon(
        conf,
        f"unix:{work / 'agent' / 'milter.sock'}",
        f"unix:{work / 'agent' / 'control.sock'}",
        work / "agent" / "spool",
        work / "agent",
        extra_args=["-E", "-T", "-H", "-B", "-t", "300"],
        socket_mode="0666",
    )
    agent.start()
    try:
        postfix.set_milter(agent.postfix_spec)
        faults = choose_faults(args.messages, rng)
        # warm up (imports, caches) before the resource baseline
        assert send_one(postfix.address, -1, "none").code == 250
        base_fds = baseline(agent).fds
        sampler = Sampler(agent, max(0.5, args.messages / 20_000))
        chaos = Chaos(agent, random.Random(args.seed + 1))
        sampler.start()
        chaos.start()
        started = time.monotonic()
        outcomes: list[Outcome] = []
        with ThreadPoolExecutor(args.concurrency) as pool:
            for i, outcome in enumerate(
                pool.map(lambda nf: send_one(postfix.address, *nf), enumerate(faults))
            ):
                outcomes.append(outcome)
                if args.progress and (i + 1) % args.progress == 0:
                    rate = (i + 1) / (time.monotonic() - started)
                    print(f"  {i + 1} messages, {rate:.0f}/s", file=sys.stderr, flush=True)
        elapsed = time.monotonic() - started
        chaos.stop.set()
        chaos.join(15)
        postfix.wait_drained(timeout=300)
        wait_until(lambda: status(agent)["connections_now"] == 0, 60)
        wait_until(lambda: not children(agent.pid) and not spool_files(agent), 30)
        sampler.stop.set()
        sampler.join(15)
        return report(
            args, agent, postfix, tally, faults, outcomes, elapsed, base_fds, sampler, chaos
        )
    finally:
        agent.stop()


def report(
    args: argparse.Namespace,
    agent: MilterAgentDaemon,
    postfix: PostfixInstance,
    tally: Tally,
    faults: list[str],
    outcomes: list[Outcome],
    elapsed: float,
    base_fds: int,
    sampler: Sampler,
    chaos: Chaos,
) -> int:
    problems: list[str] = []
    codes = collections.Counter(o.code // 100 if o.code > 0 else o.code for o in outcomes)
    aborted = sum(1 for o in outcomes if o.fault == "client-abort" and o.code == 0)
    errors = [o for o in outcomes if o.code < 0 or o.error]
    sent = len(outcomes) - aborted + 1  # + the warm-up message
    delivered, rejected, tempfailed = codes[2] + 1, codes[5], codes[4]
    if errors:
        problems.append(f"{len(errors)} transactions without a final answer: {errors[:5]}")

    sink_ids = tally.ids
    expected = {i for i, o in enumerate(outcomes) if o.code == 250} | {-1}
    sink_delivered = sum(sink_ids.values())
    if set(sink_ids) != expected:
        problems.append(f"sink ids differ: {sorted(set(sink_ids) ^ expected)[:10]}")
    if any(count > 1 for count in sink_ids.values()):
        problems.append("a message was delivered twice")
    if tally.unchanged:
        problems.append(f"delivered without both filters' changes: {tally.unchanged[:10]}")
    aborted_ids = {i for i, o in enumerate(outcomes) if o.fault == "client-abort"}
    if aborted_ids & set(sink_ids):
        problems.append("a half-sent message was delivered")

    pf = postfix_counts(postfix.log_text())
    st = status(agent)
    verdicts = collections.Counter(st["verdicts"])  # type: ignore[arg-type]
    fl = {f["name"]: f for f in filters(agent)}
    injected = collections.Counter(faults)
    filter_errors = sum(injected[f] for f in FILTER_ERRORS)

    answered = (
        delivered + rejected + tempfailed,
        pf["status=sent"] + pf["milter-reject 5xx"] + pf["milter-reject 4xx"],
        verdicts["continue"] + verdicts["reject"] + verdicts["tempfail"],
    )
    rows = [
        ("delivered", delivered, sink_delivered, pf["status=sent"], verdicts["continue"]),
        ("rejected (5xx)", rejected, "-", pf["milter-reject 5xx"], verdicts["reject"]),
        ("tempfailed (4xx)", tempfailed, "-", pf["milter-reject 4xx"], verdicts["tempfail"]),
        ("answered (sum of the above)", answered[0], "-", answered[1], answered[2]),
        ("sent (DATA completed)", sent, "-", "-", st["messages"]),
        ("hung up by the client in DATA", aborted, "-", pf["lost in DATA"], "-"),
    ]
    for name, *values in rows:
        numbers = {v for v in values if v != "-"}
        if len(numbers) != 1:
            problems.append(f"{name}: {values}")
    if set(verdicts) - {"continue", "reject", "tempfail"}:
        problems.append(f"unexpected verdicts: {dict(verdicts)}")
    if sent != delivered + rejected + tempfailed:
        problems.append(f"sent {sent} != {delivered} + {rejected} + {tempfailed}")
    if fl["scan"]["errors"] != filter_errors:
        problems.append(f"scan errors {fl['scan']['errors']} != injected {filter_errors}")
    if fl["scan"]["kills"] != injected["hang"]:
        problems.append(f"scan kills {fl['scan']['kills']} != injected hangs {injected['hang']}")
    if fl["stamp"]["errors"]:
        problems.append(f"stamp errors: {fl['stamp']['errors']}")
    if pf["milter errors"]:
        problems.append(f"Postfix logged {pf['milter errors']} milter warnings")
    if chaos.failures:
        problems.append(f"{chaos.failures} raw milter connections failed")

    end_fds = baseline(agent).fds
    kids = children(agent.pid)
    spool = spool_files(agent)
    if end_fds != base_fds:
        problems.append(f"fds: {base_fds} at the start, {end_fds} at the end")
    if kids or spool:
        problems.append(f"left behind: children {kids}, spool files {spool}")
    s = sampler.samples
    fd_first, fd_last = growth(s.fds) if s.fds else (0, 0)
    rss_first, rss_last = growth(s.rss_kb) if s.rss_kb else (0, 0)
    rss_end = agent.rss_kb()
    # "no growth": the last quarter's mean within 10 % (and 8 MiB) of the first quarter's
    if rss_last > rss_first * 1.10 and rss_last - rss_first > 8192:
        problems.append(f"RSS grew: {rss_first:.0f} -> {rss_last:.0f} KiB")
    if fd_last > fd_first * 1.10 + 5:
        problems.append(f"fds grew: {fd_first:.1f} -> {fd_last:.1f}")

    print()
    print(f"milter-agent soak: {len(outcomes) + 1} messages ({aborted} hung up by the client)")
    print(f"in {elapsed:.0f} s ({len(outcomes) / elapsed:.0f} messages/s), seed {args.seed}, "
          f"concurrency {args.concurrency}")  # fmt: skip
    print()
    print(f"{'':32}{'client':>9}{'sink':>9}{'postfix':>9}{'milter':>9}")
    print("-" * 68)
    for name, *values in rows:
        print(f"{name:32}" + "".join(f"{v!s:>9}" for v in values))
    print()
    print("injected faults: " + ", ".join(f"{k} {injected[k]}" for k in [*FAULTS, "none"]))
    print(
        f"filter scan: runs {fl['scan']['runs']}, errors {fl['scan']['errors']} "
        f"(injected {filter_errors}), timeouts {fl['scan']['timeouts']}, kills "
        f"{fl['scan']['kills']}; filter stamp: runs {fl['stamp']['runs']}, errors "
        f"{fl['stamp']['errors']}"
    )
    print(
        f"background: {chaos.hangups} raw milter hang-ups, {chaos.reloads} reloads; "
        f"connections total {st['connections_total']}"
    )
    print(
        f"daemon fds: {base_fds} at start, {end_fds} at end "
        f"(mean first/last quarter {fd_first:.1f}/{fd_last:.1f}, max {max(s.fds, default=0)})"
    )
    print(
        f"daemon RSS: mean first/last quarter {rss_first / 1024:.1f}/{rss_last / 1024:.1f} MiB, "
        f"end {rss_end / 1024:.1f} MiB, peak {agent.peak_rss_kb() / 1024:.1f} MiB "
        f"({len(s.rss_kb)} samples)"
    )
    print(f"left behind: {len(kids)} children, {len(spool)} spool files")
    print()
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "rows": rows,
                    "injected": injected,
                    "filters": fl,
                    "status": st,
                    "postfix": pf,
                    "elapsed": elapsed,
                    "samples": s.__dict__,
                    "problems": problems,
                },
                indent=1,
                default=str,
            )
        )
    if problems:
        print("NOT RECONCILED:")
        for problem in problems:
            print(f"  - {problem}")
        return 1
    print("reconciled: every message has exactly one definite answer; no growth, nothing left")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--seed", type=int, default=10)
    parser.add_argument("--progress", type=int, default=0, help="print a line every N messages")
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("soak: needs root (a private Postfix instance)", file=sys.stderr)
        return 2
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
