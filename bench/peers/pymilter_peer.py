#!/usr/bin/env python3
"""The benchmark's pymilter peers (libmilter's C threads calling Python callbacks).

    pymilter_peer.py --mode pass|exec --socket SPEC [--cmd /bin/true] [--tmpdir DIR]
                     [--pidfile FILE] [--latency-file FILE]

pass: every stage asked for and answered (``data()`` is defined: without it pymilter negotiates
      SMFIP_NODATA and over TCP Postfix then stalls ~40 ms per message on Nagle), CONTINUE
      everywhere and ACCEPT at end of message.
exec: the message is written to a temporary file as it arrives; at end of message
      ``subprocess.run([cmd, file])`` with the file on stdin, then ACCEPT (TEMPFAIL if it fails).
--latency-file: on exit, one line per message, microseconds from CONNECT (first message of a
      connection) or MAIL (later ones) to the end-of-message verdict, as milter-agent logs it.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
import threading
import time

import Milter

ARGS = argparse.Namespace()
SAMPLES: list[int] = []
LOCK = threading.Lock()


class PassMilter(Milter.Base):  # type: ignore[misc]
    def __init__(self) -> None:
        self.start = 0.0

    def connect(self, hostname, family, hostaddr):  # type: ignore[no-untyped-def]
        self.start = time.monotonic()
        return Milter.CONTINUE

    def hello(self, helo):  # type: ignore[no-untyped-def]
        return Milter.CONTINUE

    def envfrom(self, f, *params):  # type: ignore[no-untyped-def]
        if not self.start:
            self.start = time.monotonic()
        return Milter.CONTINUE

    def envrcpt(self, to, *params):  # type: ignore[no-untyped-def]
        return Milter.CONTINUE

    def data(self):  # type: ignore[no-untyped-def]
        return Milter.CONTINUE

    def header(self, name, value):  # type: ignore[no-untyped-def]
        return Milter.CONTINUE

    def eoh(self):  # type: ignore[no-untyped-def]
        return Milter.CONTINUE

    def body(self, chunk):  # type: ignore[no-untyped-def]
        return Milter.CONTINUE

    def verdict(self, result: int) -> int:
        elapsed = int((time.monotonic() - self.start) * 1e6)
        self.start = 0.0
        with LOCK:
            SAMPLES.append(elapsed)
        return result

    def eom(self):  # type: ignore[no-untyped-def]
        return self.verdict(Milter.ACCEPT)


class ExecMilter(PassMilter):
    def envfrom(self, f, *params):  # type: ignore[no-untyped-def]
        self.spool = tempfile.NamedTemporaryFile(prefix="pm-", dir=ARGS.tmpdir)  # noqa: SIM115
        return super().envfrom(f, *params)

    def header(self, name, value):  # type: ignore[no-untyped-def]
        self.spool.write(f"{name}: {value}\r\n".encode("utf-8", "surrogateescape"))
        return Milter.CONTINUE

    def eoh(self):  # type: ignore[no-untyped-def]
        self.spool.write(b"\r\n")
        return Milter.CONTINUE

    def body(self, chunk):  # type: ignore[no-untyped-def]
        self.spool.write(chunk)
        return Milter.CONTINUE

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
            fh.writelines(f"{us}\n" for us in SAMPLES)


if __name__ == "__main__":
    main()
