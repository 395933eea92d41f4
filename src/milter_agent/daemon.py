"""The running daemon: configuration, pipeline, server, signals and privileges, wired together.

Start-up order: load the configuration (an error is fatal only here, where there is no older one
to keep), set up logging, detach if ``-d 0``, bind the sockets as root, drop to the user, check
the installation is still readable, serve. Reloads (``-F`` file watch, SIGUSR1, SIGHUP) build a
new :class:`~milter_agent.engine.Engine`; a message keeps the engine it started with.
"""

from __future__ import annotations

import asyncio
import logging
import os
import resource
import signal
import sys
import time
from pathlib import Path

from milter_agent import __version__
from milter_agent.config.model import Config, FileStamp, FilterSpec, Settings
from milter_agent.config.options import CommandLine
from milter_agent.config.parser import lex
from milter_agent.config.problems import Problems
from milter_agent.config.reload import ConfigStore
from milter_agent.control import notices, stats
from milter_agent.control.metrics import Snapshot, serve_metrics
from milter_agent.control.server import ControlServer
from milter_agent.detach import Readiness, detach, remove_pid_file, write_pid_file
from milter_agent.engine import Engine
from milter_agent.errors import ConfigError, SpoolError
from milter_agent.filters import module as modules
from milter_agent.logsetup import DETAIL, setup_logging
from milter_agent.message import Message
from milter_agent.pipeline import Decision, Pipeline, Verdict
from milter_agent.privileges import (
    Account,
    check_config_readable,
    check_installation_readable,
    drop_to,
    group_id,
    needed_paths,
    resolve_user,
)
from milter_agent.procs import OrphanReaper, become_subreaper
from milter_agent.protocol import Policy
from milter_agent.registry import Registry
from milter_agent.server import AcceptErrorLog, MilterServer
from milter_agent.session import Services
from milter_agent.socketspec import parse_socket_spec
from milter_agent.spool import Spool

log = logging.getLogger("milter_agent.daemon")

#: Settings bound at start-up; a reload that changes them takes effect at the next restart.
#: Every other setting applies from the reload on (see _apply_live and docs/configuration.md).
_RESTART_ONLY = (
    "socket",
    "control_socket",
    "user",
    "spool_dir",
    "socket_mode",
    "daemon_mode",
    "log_target",
    "log_level",
    "verbose",
    "pid_file",
    "metrics",
    "admin_group",
)


class Daemon:
    def __init__(self, command_line: CommandLine, spool_dir: str | None = None) -> None:
        self.command_line = command_line
        self.store = ConfigStore(command_line)
        self.started = time.time()
        settings = self.store.current.settings
        self.spec = parse_socket_spec(settings.socket)
        self.account: Account | None = None
        self.spool = Spool(Path(spool_dir or settings.spool_dir) / "messages")
        self.registry = Registry()
        self.engine = self._build(self.store.current)
        self.server: MilterServer | None = None
        self._policy: tuple[object, Policy] = (None, Policy())
        self.counters = stats.MessageCounters()
        self.stats_since = self.started
        self._connections_before_reset = 0
        self._started_with = settings  # what the restart-only settings are in force with
        self._reloads: set[asyncio.Task[None]] = set()  # running; the loop keeps weak refs only
        self.readiness: Readiness | None = None  # -d 0: tells the starting process we are up
        # logging is set up once, at start: these are the values in force, whatever a later
        # reload says (ma-client 1 reports these)
        self.log_target = effective_log_target(command_line, self.store.current)
        self.logging: dict[str, object] = {
            "log_target": self.log_target,
            "log_level": settings.log_level,
            "verbose": settings.verbose,
        }

    # --- configuration ------------------------------------------------------------------------

    def _build(self, config: Config) -> Engine:
        # every section's name: a state left out is dropped, address rules' counters too
        self.registry.configure(
            [(f.name, f.single_instance) for f in config.filters]
            + [(r.name, 0) for r in config.address_rules]
        )
        modules.HOST.configure(config.filters)  # unload modules whose filter left or changed
        return Engine(config, self.registry, self.spool)

    def reload_soon(self, always: bool) -> None:
        """Start a reload in the background: ``always`` (SIGUSR1, SIGHUP), or with -F when the
        file changed and no reload is reading it already."""
        stamp = None
        if not always:
            if self._reloads:
                return
            stamp = self.store.poll(time.monotonic())
            if stamp is None:
                return
        task = asyncio.ensure_future(self.reload(stamp))
        self._reloads.add(task)
        task.add_done_callback(self._reloads.discard)

    async def reload(self, stamp: FileStamp | None = None) -> None:
        """Read the file in a worker thread (with -a it may wait there for a writer's lock: the
        event loop keeps serving) and, if it is valid, put it in force."""
        try:
            if await self.store.reload_in_thread(stamp):
                self._installed()
        except Exception:
            # a background task: nobody else would see it, and the old engine keeps working
            log.exception("reload of %s failed", self.store.path)

    def _installed(self) -> None:
        """The store holds a new configuration: the messages that start from now on use it."""
        settings = self.store.current.settings
        for key in _RESTART_ONLY:
            if getattr(settings, key) != getattr(self._started_with, key):
                log.warning("setting %s changed; it takes effect at the next restart", key)
        self._apply_live(settings)
        self.engine = self._build(self.store.current)

    def _apply_live(self, settings: Settings) -> None:
        """Settings read outside the engine: the MTA socket's I/O timeout and the shutdown
        grace at once; the answer on failure, the progress interval, -I and the header cap
        for connections from now on."""
        if self.server is not None:
            self.server.io_timeout = settings.io_timeout
            self.server.shutdown_grace = settings.shutdown_grace
            self.server.services = self.services()

    def pipeline(self) -> Pipeline:
        """The pipeline for a message starting now. As the seed does, a message arriving is a
        reason to look at the file (-F); a change applies to the messages after it is read."""
        self.reload_soon(False)
        return self.engine

    def policy(self) -> Policy:
        config = self.store.current
        if self._policy[0] is not config:  # one per configuration, not per connection
            self._policy = (config, self._new_policy())
        return self._policy[1]

    def _new_policy(self) -> Policy:
        s = self.store.current.settings
        return Policy.from_permissions(
            add_recipient=s.allow_add_recipient,
            remove_recipient=s.allow_remove_recipient,
            add_header=s.allow_add_header,
            change_header=s.allow_change_header,
            change_body=s.allow_change_body,
            extra_macros=self.store.current.extra_macros,
        )

    # --- running ------------------------------------------------------------------------------

    def services(self) -> Services:
        s = self.store.current.settings
        return Services(
            policy=self.policy,
            pipeline=self.pipeline,
            spool=self.spool,
            default_action=Verdict(s.default_action),
            progress_interval=s.progress_interval,
            log_tempfile=s.log_tempfile,
            on_message_done=self._message_done,
            max_header_size=s.max_header_size,
            on_answered=self.counters.waits.append,
        )

    def _message_done(self, message: Message, decision: Decision, seconds: float) -> None:
        self.counters.count(decision.verdict.value, message.size)
        if log.isEnabledFor(DETAIL):
            log_steps(message, decision)

    # --- control socket -----------------------------------------------------------------------

    def control_handlers(self) -> dict[str, stats.Handler]:
        return {
            "status": lambda _args: self.status(),
            "settings": lambda _args: stats.settings(self.store.current, **self.logging),
            "filters": lambda _args: stats.filters(self.store.current, self.registry),
            "addresses": lambda _args: stats.addresses(self.store.current, self.registry),
            "reload": self._control_reload,
            "enable": lambda args: self._switch(args, on=True),
            "disable": lambda args: self._switch(args, on=False),
            "reset-stats": self._reset_stats,
        }

    def status(self) -> dict[str, object]:
        error = self.store.last_error
        return {
            "version": __version__,
            "pid": os.getpid(),
            "uptime": stats.uptime(self.started),
            "config": self.store.path,
            "config_loaded_at": self.store.current.loaded_at,
            "config_generation": self.store.generation,
            "last_reload_error": str(error) if error else None,
            "last_reload_error_time": self.store.last_error_time,
            "connections_now": self.server.connections_now if self.server else 0,
            "connections_total": self.connections_total(),
            "messages": self.counters.messages,
            "verdicts": dict(self.counters.verdicts),
            "bytes": self.counters.bytes,
            "stats_since": self.stats_since,
            "added_latency": stats.added_latency(self.counters),
            **self.spool.usage(),
        }

    def connections_total(self) -> int:
        """Connections accepted since start or the last reset-stats."""
        total = self.server.connections_total if self.server else 0
        return total - self._connections_before_reset

    def snapshot(self) -> Snapshot:
        """For a metrics scrape (runs in the metrics thread; reads only)."""
        config, server, states = self.store.current, self.server, self.registry.states
        spool = self.spool.usage()
        return Snapshot(
            messages=dict(self.counters.verdicts),
            message_bytes=self.counters.bytes,
            connections_now=server.connections_now if server else 0,
            connections_total=self.connections_total(),
            config_generation=self.store.generation,
            last_reload_ok=self.store.last_error is None,
            uptime=time.time() - self.started,
            spool_files=spool["spool_files"],
            spool_bytes=spool["spool_bytes"],
            filters=[(f.name, st) for f in config.filters if (st := states.get(f.name))],
            address_rules=[
                (r.name, st) for r in config.address_rules if (st := states.get(r.name))
            ],
        )

    def _control_reload(self, _args: list[str]) -> dict[str, object]:
        installed = self.store.reload_unless_locked()  # never wait for a lock on the loop
        if installed is None:
            self.reload_soon(True)  # a worker thread waits for the writer instead
            reason = "locked by another process: it is read as soon as the lock is released"
            return {"reloaded": False, "error": f"{self.store.path}: {reason}"}
        if installed:
            self._installed()
        error = self.store.last_error
        return {"reloaded": error is None, "error": str(error) if error else None}

    def _switch(self, args: list[str], *, on: bool) -> dict[str, object]:
        # filters only: an address rule has no on/off state (the engine never skips one)
        if len(args) != 1 or not isinstance(self.store.current.section(args[0]), FilterSpec):
            raise ValueError(f"no filter named {' '.join(args)!r}")
        state = self.registry.get(args[0])
        if on:
            state.enable()
        else:
            state.disable("switched off via the control socket")
        log.warning("filter %s switched %s via the control socket", args[0], "on" if on else "off")
        return {"name": args[0], "disabled": state.disabled}

    def _reset_stats(self, _args: list[str]) -> dict[str, object]:
        """Zero every counter: filters', address rules', messages and connections accepted.
        In place: messages in flight finish on the same state objects (see FilterState.reset)."""
        for state in self.registry.states.values():
            state.reset()
        self.counters.reset()
        self._connections_before_reset = self.server.connections_total if self.server else 0
        self.stats_since = time.time()
        log.info("statistics reset via the control socket")
        return {"reset": True, "stats_since": self.stats_since}

    async def serve(self) -> None:
        settings = self.store.current.settings
        owner = self.account.owner if self.account else None
        self.spool.prepare(owner)
        asyncio.get_running_loop().set_exception_handler(AcceptErrorLog())
        self.server = MilterServer(
            self.spec,
            self.services(),
            socket_mode=settings.socket_mode,
            socket_owner=owner,
            io_timeout=settings.io_timeout,
            shutdown_grace=settings.shutdown_grace,
        )
        control = None
        try:
            await self.server.start()
            if settings.control_socket:
                control = ControlServer(
                    parse_socket_spec(settings.control_socket).path,
                    self.control_handlers(),
                    admin_gid=group_id(settings.admin_group),
                    owner=owner,
                )
                await control.start()
            if settings.metrics:
                serve_metrics(settings.metrics, self.snapshot)
                log.info("metrics on http://%s/metrics", settings.metrics)
            if self.account is not None:
                needed = needed_paths()
                drop_to(self.account)
                check_installation_readable(self.account, needed)
                check_config_readable(self.account, self.store.path)
            await self._run_until_stopped()
        finally:
            if control is not None:
                await control.stop()
            await self.server.stop()
            await modules.HOST.close()  # teardown, stop module workers

    async def _run_until_stopped(self) -> None:
        become_subreaper()
        reaper = OrphanReaper()
        reaper.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        for sig in (signal.SIGUSR1, signal.SIGHUP):
            loop.add_signal_handler(sig, self.reload_soon, True)
        watcher = asyncio.ensure_future(self._watch())
        noticer = asyncio.ensure_future(
            notices.watch(
                notices.NoticeWatcher(self.store, lambda: self.registry),
                lambda: self.store.current.settings.notice_cmd,
            )
        )
        log.info("milter-agent %s started (pid %d, uid %d)", __version__, os.getpid(), os.getuid())
        if self.readiness is not None:
            self.readiness.ready()  # after the signal handlers: a SIGHUP now reloads, not kills
        await stop.wait()
        log.info("stopping: no new connections")
        watcher.cancel()
        noticer.cancel()
        reaper.stop()

    async def _watch(self) -> None:
        """-F: look at the file once a second even when no mail arrives. Always running, so a
        reload that turns watch_config on takes effect at once (off: ``poll`` does nothing)."""
        while True:
            await asyncio.sleep(1.0)
            self.reload_soon(False)


def log_steps(message: Message, decision: Decision) -> None:
    """-l 1: one line per section that took part, after the message's summary line."""
    queue_id = message.queue_id or "NOQUEUE"
    for number, step in enumerate(decision.steps, start=1):
        log.log(
            DETAIL,
            "%s: step %d/%d %s: %s in %.1fms%s",
            queue_id,
            number,
            len(decision.steps),
            step.name,
            step.outcome,
            step.seconds * 1000,
            f": {step.detail}" if step.detail else "",
        )


def raise_open_files_limit() -> None:
    """Soft RLIMIT_NOFILE up to the hard limit: every MTA connection, spool file and filter
    pipe is a descriptor, and the usual soft limit (1024) is reached long before the hard one
    by a busy Postfix (one connection per smtpd process)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == hard:
        return
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError) as exc:
        log.warning("open files limit stays at %d (cannot raise it to %d: %s)", soft, hard, exc)
        return
    log.debug("open files limit raised from %d to %d", soft, hard)


def effective_log_target(command_line: CommandLine, config: Config) -> str:
    """Where logs go: with -d 1, stderr, unless a target was chosen on the command line or in
    the configuration file (the seed's debugging terminal, without overriding a choice)."""
    settings = config.settings
    if not settings.foreground or command_line.given("log_target"):
        return settings.log_target
    return settings.log_target if _file_sets(config.path, "log_target") else "stderr"


def _file_sets(path: str, key: str) -> bool:
    """Whether the file's global settings give ``key`` (the parsed settings cannot tell a
    default from the same value written out)."""
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    sections = lex(text.removeprefix("\ufeff"), Problems(path))
    return any(e.key == key for raw in sections if raw.kind == "global" for e in raw.entries)


def run(command_line: CommandLine) -> int:
    """Start the daemon; returns the exit status."""
    try:
        daemon = Daemon(command_line)
        user = daemon.store.current.settings.user
        daemon.account = resolve_user(user, command_line.given("user"))
    except ConfigError as exc:
        print(f"milter-agent: {exc}", file=sys.stderr)
        return 1
    settings = daemon.store.current.settings
    setup_logging(daemon.log_target, settings.log_level, settings.verbose)
    if not settings.foreground:
        daemon.readiness = detach()  # the starting process exits once we say how start went
    pid_file = settings.pid_path
    try:
        if pid_file:
            write_pid_file(pid_file, daemon.account.owner if daemon.account else None)
        raise_open_files_limit()
        asyncio.run(daemon.serve())
    except (ConfigError, SpoolError, OSError) as exc:
        log.critical("cannot start: %s", exc)
        if daemon.readiness is not None:
            daemon.readiness.failed(f"cannot start: {exc}")
        return 1
    finally:
        if pid_file:
            remove_pid_file(pid_file)
    log.info("stopped")
    return 0
