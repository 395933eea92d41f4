"""Reload bookkeeping: a broken edit never replaces a working configuration."""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from milter_agent.config import reload as reload_module
from milter_agent.config.model import Config
from milter_agent.config.options import parse_command_line
from milter_agent.config.parser import ConfigLocked, load_config
from milter_agent.config.problems import ConfigErrors
from milter_agent.config.reload import CHECK_INTERVAL, ConfigStore
from milter_agent.errors import ConfigError

GOOD = "[Filter]\ntask_name = one\nexec_cmd = /bin/one\n"
BETTER = GOOD + "[Filter]\ntask_name = two\nexec_cmd = /bin/two\n"
BROKEN = "[Filter]\ntask_name = one\nexec_cmd = /bin/one %q\nbogus = 1\n"


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def write(path: Path, text: str) -> None:
    """Write and move the mtime forward, so a change is visible whatever the clock resolution."""
    path.write_text(text)
    info = os.stat(path)
    os.utime(path, ns=(info.st_atime_ns, info.st_mtime_ns + 1_000_000_000))


@pytest.fixture
def conf(tmp_path: Path) -> Path:
    path = tmp_path / "milter-agent.conf"
    path.write_text(GOOD)
    return path


def store_for(path: Path, *options: str, clock: Clock | None = None) -> ConfigStore:
    line = parse_command_line(["-c", str(path), *options])
    return ConfigStore(line, wall_clock=clock or Clock())


def names(store: ConfigStore) -> list[str]:
    return [section.name for section in store.current.sections]


def test_initial_load(conf: Path) -> None:
    store = store_for(conf)
    assert names(store) == ["one"]
    assert store.generation == 1
    assert store.last_error is None and store.last_error_time is None
    assert store.path == str(conf)


def test_initial_failure_is_fatal(conf: Path) -> None:
    conf.write_text(BROKEN)
    with pytest.raises(ConfigErrors):
        store_for(conf)


def test_reload_installs_a_valid_config(conf: Path) -> None:
    store = store_for(conf)
    first = store.current
    write(conf, BETTER)
    assert store.reload() is True
    assert names(store) == ["one", "two"]
    assert store.generation == 2
    assert store.current.loaded_at >= first.loaded_at
    assert first.sections[0].name == "one"  # the old object is untouched for running messages


def test_broken_edit_keeps_the_old_config(conf: Path, caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    store = store_for(conf, clock=clock)
    old = store.current
    write(conf, BROKEN)
    clock.now = 1_000_100.0
    with caplog.at_level(logging.ERROR, logger="milter_agent.config"):
        assert store.reload() is False
    assert store.current is old
    assert store.generation == 1
    assert isinstance(store.last_error, ConfigErrors)
    assert store.last_error_time == 1_000_100.0
    text = caplog.text
    assert "refused (2 errors)" in text
    assert f"{conf}:3: exec_cmd: unknown variable %q" in text
    assert f"{conf}:4: bogus: unknown key in [Filter]" in text


def test_fixing_the_file_clears_the_error(conf: Path) -> None:
    store = store_for(conf)
    write(conf, BROKEN)
    store.reload()
    write(conf, BETTER)
    assert store.reload() is True
    assert store.last_error is None and store.last_error_time is None
    assert names(store) == ["one", "two"]


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "no settings and no sections"),
        (b"\x7fELF\x02\x01\x01\x00\x00\x00\xff\xfe", "not UTF-8 text"),
        (b'[Filter]\ntask_name = one\nexec_cmd = "/bin/one', "missing closing quote"),
    ],
)
def test_truncated_or_garbage_file_keeps_the_old_config(
    conf: Path, content: bytes, reason: str
) -> None:
    store = store_for(conf)
    old = store.current
    conf.write_bytes(content)
    assert store.reload() is False
    assert store.current is old
    assert store.last_error is not None and reason in str(store.last_error)


def test_deleted_file_keeps_the_old_config(conf: Path) -> None:
    store = store_for(conf)
    old = store.current
    conf.unlink()
    assert store.reload() is False
    assert store.current is old
    assert "cannot read" in str(store.last_error)


def test_maybe_reload_does_nothing_without_watch_config(conf: Path) -> None:
    store = store_for(conf)
    write(conf, BETTER)
    assert store.maybe_reload(10.0) is False
    assert names(store) == ["one"]


def test_maybe_reload_sees_changes_at_most_once_a_second(conf: Path) -> None:
    store = store_for(conf, "-F")
    assert store.maybe_reload(10.0) is False  # unchanged
    write(conf, BETTER)
    assert store.maybe_reload(10.0 + CHECK_INTERVAL / 2) is False  # too soon to look
    assert names(store) == ["one"]
    assert store.maybe_reload(10.0 + CHECK_INTERVAL) is True
    assert names(store) == ["one", "two"]
    assert store.maybe_reload(20.0) is False  # nothing changed since


def test_maybe_reload_notices_a_same_size_edit(conf: Path) -> None:
    store = store_for(conf, "-F")
    write(conf, GOOD.replace("/bin/one", "/bin/eno"))
    assert store.maybe_reload(10.0) is True
    assert store.current.filters[0].program == "/bin/eno"


def test_maybe_reload_notices_a_replaced_file(conf: Path, tmp_path: Path) -> None:
    """Editors often write a new file and rename it over the old one: a new inode."""
    store = store_for(conf, "-F")
    replacement = tmp_path / "new.conf"
    replacement.write_text(GOOD.replace("/bin/one", "/bin/new"))
    info = os.stat(conf)
    os.utime(replacement, ns=(info.st_atime_ns, info.st_mtime_ns))  # same mtime and size
    os.replace(replacement, conf)
    assert store.maybe_reload(10.0) is True
    assert store.current.filters[0].program == "/bin/new"


def test_watch_config_from_the_file_itself(conf: Path) -> None:
    conf.write_text("watch_config = yes\n" + GOOD)
    store = store_for(conf)
    write(conf, "watch_config = yes\n" + BETTER)
    assert store.maybe_reload(10.0) is True


def test_a_broken_file_is_tried_once_per_change(
    conf: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = store_for(conf, "-F")
    write(conf, BROKEN)
    with caplog.at_level(logging.ERROR, logger="milter_agent.config"):
        assert store.maybe_reload(10.0) is False
        assert store.maybe_reload(12.0) is False
        assert store.maybe_reload(14.0) is False
    assert caplog.text.count("refused") == 1
    write(conf, BETTER)
    assert store.maybe_reload(16.0) is True


def test_a_deleted_file_is_reported_once_and_its_return_is_noticed(
    conf: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = store_for(conf, "-F")
    old = store.current
    conf.unlink()
    with caplog.at_level(logging.ERROR, logger="milter_agent.config"):
        assert store.maybe_reload(10.0) is False
        assert store.maybe_reload(12.0) is False
    assert caplog.text.count("refused") == 1
    assert store.current is old
    assert isinstance(store.last_error, ConfigError)
    conf.write_text(BETTER)
    assert store.maybe_reload(14.0) is True
    assert names(store) == ["one", "two"]


def test_lock_follows_the_config_in_force(conf: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[bool | None] = []

    def spy(*args: Any, **kwargs: Any) -> Any:
        seen.append(kwargs.get("lock"))
        return load_config(*args, **kwargs)

    conf.write_text("lock_config = yes\n" + GOOD)
    store = store_for(conf)
    monkeypatch.setattr(reload_module, "load_config", spy)
    write(conf, BETTER)  # the new file no longer asks for the lock...
    store.reload()
    store.reload()
    assert seen == [True, False]  # ...which applies from the next read on


# --- -a: waiting for a writer's lock -----------------------------------------------------------


class Writer:
    """Another process's editor: holds an exclusive flock while it writes the file."""

    def __init__(self, path: Path) -> None:
        self.file = open(path, "r+b")  # noqa: SIM115 - closed by release()
        fcntl.flock(self.file.fileno(), fcntl.LOCK_EX)

    def write(self, text: str) -> None:
        self.file.seek(0)
        self.file.truncate()
        self.file.write(text.encode())
        self.file.flush()
        info = os.fstat(self.file.fileno())
        os.utime(self.file.fileno(), ns=(info.st_atime_ns, info.st_mtime_ns + 1_000_000_000))

    def release(self) -> None:
        fcntl.flock(self.file.fileno(), fcntl.LOCK_UN)
        self.file.close()


def test_a_lock_timeout_does_not_hide_the_change(
    conf: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The file changed while a writer held it locked past the wait: its content was never
    read, so the next check must read it (not take the change as seen)."""
    monkeypatch.setattr(reload_module, "LOCK_TIMEOUT", 0.1)
    store = store_for(conf, "-F", "-a")
    writer = Writer(conf)
    try:
        writer.write(BETTER)
        with caplog.at_level(logging.WARNING, logger="milter_agent.config"):
            assert store.maybe_reload(10.0) is False
        assert isinstance(store.last_error, ConfigLocked)
        assert "not read: still locked by another process after 0.1s" in caplog.text
        assert "refused" not in caplog.text
        assert store.maybe_reload(12.0) is False  # still locked: tried again, not skipped
    finally:
        writer.release()
    assert store.maybe_reload(14.0) is True
    assert names(store) == ["one", "two"]
    assert store.last_error is None


def test_a_reader_in_a_thread_waits_for_the_writer_and_the_loop_keeps_serving(
    conf: Path,
) -> None:
    store = store_for(conf, "-a")
    writer = Writer(conf)
    writer.write(BETTER + "[Filter]\ntask_name = three\nexec_cmd = /bin/three\n")

    async def scenario() -> tuple[int, bool, bool]:
        reading = asyncio.ensure_future(store.reload_in_thread())
        ticks = 0
        for _ in range(30):  # 0.3 s of other work on the loop while the reader waits
            await asyncio.sleep(0.01)
            ticks += 1
        done_while_locked = reading.done()
        writer.release()
        return ticks, done_while_locked, await reading

    started = time.monotonic()
    ticks, done_early, installed = asyncio.run(asyncio.wait_for(scenario(), 10))
    assert ticks == 30 and not done_early and installed
    assert time.monotonic() - started < 5  # released after 0.3 s, not the 5 s lock timeout
    assert names(store) == ["one", "two", "three"]
    assert store.generation == 2 and store.last_error is None


def test_reload_unless_locked_records_nothing_while_locked(conf: Path) -> None:
    store = store_for(conf, "-a")
    writer = Writer(conf)
    try:
        writer.write(BETTER)
        assert store.reload_unless_locked() is None
        assert store.last_error is None and store.generation == 1
    finally:
        writer.release()
    assert store.reload_unless_locked() is True
    assert names(store) == ["one", "two"]


def test_a_slow_older_read_never_replaces_a_newer_one(
    conf: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = store_for(conf)
    old_text, gate = store.current, threading.Event()
    write(conf, BETTER)
    newer = load_config(str(conf))
    results = iter([old_text, newer])

    def read(_timeout: float) -> Config:
        config = next(results)
        if config is old_text:
            gate.wait(10)  # the first read is slow (say, a big file on a slow disk)
        return config

    monkeypatch.setattr(store, "_read", read)

    async def scenario() -> bool:
        slow = asyncio.ensure_future(store.reload_in_thread())
        await asyncio.sleep(0.05)
        assert store.reload() is True  # SIGUSR1 meanwhile: the newer read wins
        gate.set()
        return await slow

    assert asyncio.run(asyncio.wait_for(scenario(), 10)) is False
    assert store.current is newer and store.generation == 2
