"""The worker process of ``module_safe_use``: load one module, then run it for one message at a
time, until the daemon closes the pipe.

Started by :mod:`milter_agent.filters.module_pool` as
``python -m milter_agent.filters.module_worker PARENT_PID``. Frames are a 4-byte big-endian
length and a pickle. In (stdin): ``("load", ModuleConfig, (log_target, log_level))`` once, then
``("run", args, ModuleMessage)`` per message. Out: ``("ok", value)`` or ``("error", reason)``.
End of stdin: ``teardown()`` and exit. The reply channel is moved off fd 1 first and fd 1 then
points to stderr, so a module's ``print`` or a C ``printf`` cannot garble it. The worker dies
with the daemon (PR_SET_PDEATHSIG) and ignores SIGINT (a terminal's Ctrl-C is the daemon's).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import inspect
import logging
import os
import pickle
import signal
import struct
import sys
from typing import Any, BinaryIO

from milter_agent.filters.module_api import ModuleConfig
from milter_agent.filters.module_load import LoadedModule, describe, load_module, normalize_outcome

FRAME_HEADER = struct.Struct(">I")
_PR_SET_PDEATHSIG = 1


def encode_frame(value: object) -> bytes:
    data = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    return FRAME_HEADER.pack(len(data)) + data


def _read_exactly(stream: BinaryIO, size: int) -> bytes | None:
    data = bytearray()
    while len(data) < size:
        chunk = stream.read(size - len(data))
        if not chunk:
            return None
        data += chunk
    return bytes(data)


def read_frame(stream: BinaryIO) -> Any:
    """The next request, or None at end of input."""
    header = _read_exactly(stream, FRAME_HEADER.size)
    if header is None:
        return None
    data = _read_exactly(stream, FRAME_HEADER.unpack(header)[0])
    return None if data is None else pickle.loads(data)  # noqa: S301 - our own parent


def _die_with_parent(parent: int) -> None:
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # the daemon died before prctl
        os._exit(1)


def _take_stdio() -> tuple[BinaryIO, BinaryIO]:
    """The request and reply pipes, moved off fds 0 and 1."""
    requests = os.fdopen(os.dup(0), "rb", buffering=0)
    replies = os.fdopen(os.dup(1), "wb", buffering=0)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    os.dup2(2, 1)
    return requests, replies


def _setup_logging(target: str, level: int) -> None:
    """Log where the daemon logs, so a module's log lines land in the same place."""
    from milter_agent.logsetup import setup_logging  # noqa: PLC0415 - only when asked

    setup_logging(target)
    logging.getLogger().setLevel(level)


class Worker:
    """One loaded module and the event loop its async functions run on."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.module: LoadedModule | None = None

    def resolve(self, value: Any) -> Any:
        return self.loop.run_until_complete(value) if inspect.isawaitable(value) else value

    def load(self, config: ModuleConfig) -> None:
        module = load_module(config.module_name)
        if module.setup is not None:
            try:
                self.resolve(module.setup(config))
            except BaseException:
                module.unload()
                raise
        self.module = module

    def run(self, args: list[str], message: Any) -> Any:
        assert self.module is not None
        return normalize_outcome(self.resolve(self.module.call(args, message)))

    def close(self) -> None:
        if self.module is not None and self.module.teardown is not None:
            with contextlib.suppress(Exception):
                self.resolve(self.module.teardown())
        self.loop.close()


def _answer(action: Any, *args: Any) -> tuple[str, Any]:
    try:
        return "ok", action(*args)
    except BaseException as exc:  # noqa: BLE001 - every failure goes back as a reason
        return "error", describe(exc)


def serve(requests: BinaryIO, replies: BinaryIO) -> None:
    worker = Worker()
    try:
        while (request := read_frame(requests)) is not None:
            if request[0] == "load":
                _setup_logging(*request[2])
                reply = _answer(worker.load, request[1])
            else:
                reply = _answer(worker.run, request[1], request[2])
            replies.write(encode_frame(reply))
            if request[0] == "load" and reply[0] == "error":
                return
    finally:
        worker.close()


def main() -> None:
    _die_with_parent(int(sys.argv[1]))
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    requests, replies = _take_stdio()
    with contextlib.suppress(BrokenPipeError):
        serve(requests, replies)


if __name__ == "__main__":
    main()
