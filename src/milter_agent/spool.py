"""Message files on disk: what ``%f`` names for filters.

A message is written as it arrives (headers as received, CRLF, a blank line, the body), so memory
stays bounded whatever its size. Files live in a private directory (0700), are created 0600 with
``O_EXCL`` under a random name (never derived from message data), and are removed when the
message ends, is aborted or its connection drops. A write error (full disk, permissions) raises
:class:`SpoolError`, which the session turns into a tempfail for that one message.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
from pathlib import Path
from typing import BinaryIO

from milter_agent.errors import SpoolError

_NEWLINE = re.compile(rb"\r?\n")
# below glibc's mmap threshold (128 KiB): a bigger buffer costs an mmap and a munmap per message
_WRITE_BUFFER = 64 * 1024


class Spool:
    """The private directory where message files are made."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)

    def prepare(self, owner: tuple[int, int] | None = None) -> None:
        """Create the directory 0700 (and chown it to the daemon user) if needed; check it."""
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            if owner is not None:
                os.chown(self.directory, *owner)
            os.chmod(self.directory, 0o700)
        except OSError as exc:
            raise SpoolError(f"cannot prepare spool directory {self.directory}: {exc}") from exc

    def usage(self) -> dict[str, int]:
        """Files and bytes in the spool now (messages in flight and filter output)."""
        files = size = 0
        with contextlib.suppress(OSError), os.scandir(self.directory) as entries:
            for entry in entries:
                with contextlib.suppress(OSError):
                    size += entry.stat(follow_symlinks=False).st_size
                    files += 1
        return {"spool_files": files, "spool_bytes": size}

    def new_path(self, suffix: str) -> Path:
        return self.directory / f"{secrets.token_hex(8)}.{suffix}"

    def create(self, suffix: str = "msg") -> SpoolFile:
        """A new, empty message file open for writing."""
        return SpoolFile(*self._open_exclusive(suffix))

    def create_empty(self, suffix: str) -> Path:
        """A fresh empty 0600 file for a filter to write into (``%r``, ``%n``, ``%h``)."""
        path, fd = self._open_exclusive(suffix)
        os.close(fd)
        return path

    def _open_exclusive(self, suffix: str) -> tuple[Path, int]:
        for _ in range(5):
            path = self.new_path(suffix)
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            except FileExistsError:
                continue
            except OSError as exc:
                raise SpoolError(f"cannot create a file in {self.directory}: {exc}") from exc
            return path, fd
        raise SpoolError(f"cannot find a free file name in {self.directory}")


class SpoolFile:
    """One message being written; ``path`` stays valid until :meth:`remove`."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self.size = 0
        self._file: BinaryIO | None = open(fd, "wb", buffering=_WRITE_BUFFER)  # noqa: SIM115

    def write_header(self, name: str, raw_value: str) -> None:
        """One header line as received: ``raw_value`` is everything after the colon."""
        value = _NEWLINE.sub(b"\r\n", raw_value.encode("utf-8", "surrogateescape"))
        self.write(name.encode("utf-8", "surrogateescape") + b":" + value + b"\r\n")

    def write(self, data: bytes) -> None:
        if self._file is None:
            raise SpoolError(f"spool file {self.path} is closed")
        try:
            self._file.write(data)
        except OSError as exc:
            raise SpoolError(f"cannot write spool file {self.path}: {exc}") from exc
        self.size += len(data)

    def finish(self) -> None:
        """Flush to disk (before filters read it); the file stays until :meth:`remove`."""
        if self._file is None:
            return
        try:
            self._file.close()
        except OSError as exc:
            raise SpoolError(f"cannot write spool file {self.path}: {exc}") from exc
        finally:
            self._file = None

    def remove(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
