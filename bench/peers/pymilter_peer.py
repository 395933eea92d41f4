#!/usr/bin/env python3
"""The benchmark's pymilter peers (libmilter's C threads calling Python callbacks).

    pymilter_peer.py --mode pass|exec --socket SPEC [--cmd /bin/true] [--tmpdir DIR]
                     [--pidfile FILE] [--latency-file FILE]

pass: every stage asked for and answered (``data()`` is defined: without it pymilter negotiates
      SMFIP_NODATA and over TCP Postfix then stalls ~40 ms per message on Nagle), CONTINUE
      everywhere and ACCEPT at end of message.
exec: the message is written to a temporary file as it arrives; at end of message
      ``subprocess.run([cmd, file])`` with the file on stdin, then ACCEPT (TEMPFAIL if it fails).
--latency-file: on exit, one line per message: microseconds from CONNECT (first message of a
      connection) or MAIL (later ones) to the end-of-message verdict, as milter-agent logs it,
      and microseconds spent in the callbacks for it (what the milter adds; libmilter's own
      reading and writing is not in it).
"""

from __future__ import annotations

import argparse
import functools
import os
import subprocess
import tempfile
import threading
import time

import Milter

ARGS = argparse.Namespace()
SAMPLES: list[tuple[int, int]] = []
LOCK = threading.Lock()


def timed(callback):  # type: ignore[no-untyped-def]
    """Count the time spent in a callback toward the message's time in the milter (once, when
    a callback calls another through super())."""

    @functools.wraps(callback)
    def run(self, *args):  # type: ignore[no-untyped-def]
        if self.entered:
            return callback(self, *args)
        self.entered = time.perf_counter()
        try:
            return callback(self, *args)
        finally:
            if self.entered:  # verdict() has not taken it
                self.busy += time.perf_counter() - self.entered
            self.entered = 0.0

    return run


class PassMilter(Milter.Base):  # type: ignore[misc]
    def __init__(self) -> None:
        self.start = 0.0
        self.busy = 0.0
        self.entered = 0.0

    @timed
    def connect(self, hostname, family, hostaddr):  # type: ignore[no-untyped-def]
        self.start = time.monotonic()
        return Milter.CONTINUE

    @timed
    def hello(self, helo):  # type: ignore[no-untyped-def]
        return Milter.CONTINUE

    @timed
    def envfrom(self, f, *params):  # type: ignore[no-untyped-def]
        if not self.start:
            self.start = time.monotonic()
        return Milter.CONTINUE

    @timed
    def envrcpt(self, to, *params):  # type: ignore[no-untyped-def]
        return Milter.CONTINUE

    @timed
    def data(self):  # type: ignore[no-untyped-def]
        return Milter.CONTINUE

    @timed
    def header(self, name, value):  # type: ignore[no-untyped-def]
        return Milter.CONTINUE

    @timed
    def eoh(self):  # type: ignore[no-untyped-def]
        return Milter.CONTINUE

    @timed
    def body(self, chunk):  # type: ignore[no-untyped-def]
        return Milter.CONTINUE

    def verdict(self, result: int) -> int:
        elapsed = int((time.monotonic() - self.start) * 1e6)
        busy = self.busy + time.perf_counter() - self.entered
        self.start = self.busy = self.entered = 0.0
        with LOCK:
            SAMPLES.append((elapsed, int(busy * 1e6)))
        return result

    @timed
    def eom(self):  # type: ignore[no-untyped-def]
        return self.verdict(Milter.ACCEPT)


class ExecMilter(PassMilter):
    @timed
    def envfrom(self, f, *params):  # type: ignore[no-untyped-def]
        self.spool = tempfile.NamedTemporaryFile(prefix="pm-", dir=ARGS.tmpdir)  # noqa: SIM115
        return super().envfrom(f, *params)

    @timed
    def header(self, name, value):  # type: ignore[no-untyped-def]
        self.spool.write(f"{name}: {value}\r\n".encode("utf-8", "surrogateescape"))
        return Milter.CONTINUE

    @timed
    def eoh(self):  # type: ignore[no-untyped-def]
        self.spool.write(b"\r\n")
        return Milter.CONTINUE

    @timed
    def body(self, chunk):  # type: ignore[no-untyped-def]
        self.spool.write(chunk)
        return Milter.CONTINUE

    @timed
    def eom(self):  # type: ignore[no-untyped-def]
        with self.spool as spool:
            spool.flush()
            spool.seek(0)
            done = subprocess.run(
                [ARGS.cmd, spool.name], stdin=spool, stdout=subprocess.DEVNULL, check=False
            )
        return self.verdict(Milter.ACCEPT if done.returncode == 0 else Milter.TEMPFAIL)

    def abort(self):  # type: ignore[no-untyped-def]
        if getattr(self, "spool", None) is not None:
            self.spool.close()
        return Milter.CONTINUE


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", default="pass", choices=["pass", "exec"])
    parser.add_argument("--socket", required=True)
    parser.add_argument("--cmd", default="/bin/true")
    parser.add_argument("--tmpdir", default=None)
    parser.add_argument("--pidfile", default=None)
    parser.add_argument("--latency-file", default=None)
    parser.parse_args(namespace=ARGS)
    Milter.factory = ExecMilter if ARGS.mode == "exec" else PassMilter
    Milter.set_flags(Milter.ADDHDRS)
    if ARGS.socket.startswith(("unix:", "local:")):
        os.umask(0o111)  # smtpd (user postfix) must be able to connect
    if ARGS.pidfile:
        with open(ARGS.pidfile, "w") as fh:
            fh.write(f"{os.getpid()}\n")
    print(f"pymilter {ARGS.mode} listening on {ARGS.socket} pid {os.getpid()}", flush=True)
    Milter.runmilter("bench-" + ARGS.mode, ARGS.socket, 600)
    if ARGS.latency_file:
        with open(ARGS.latency_file, "w") as fh, LOCK:
            fh.writelines(f"{span} {busy}\n" for span, busy in SAMPLES)


if __name__ == "__main__":
    main()
