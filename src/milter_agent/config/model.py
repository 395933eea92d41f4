"""The configuration as immutable values: global settings, address rules, filters, the whole config.

This is the contract the rest of the daemon codes against. It holds no parsing and no I/O; the
few methods here are the meaning of the conditions (what "this section applies" means), so
that every caller agrees on it. Equality is semantic: where a section starts in the file, the
file's path and times do not take part in ``==``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from milter_agent.conditions import AddressList, CronExpression, SubjectList, any_matches
from milter_agent.variables import ArgTemplate, expand, macros, required_files

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "DEFAULT_CONTROL_SOCKET",
    "DEFAULT_SOCKET",
    "DEFAULT_SPOOL_DIR",
    "DEFAULT_USER",
    "AddressList",
    "AddressRule",
    "ArgTemplate",
    "Config",
    "CronExpression",
    "DefaultAction",
    "FileStamp",
    "FilterSpec",
    "HeaderTemplate",
    "LogTarget",
    "Section",
    "Settings",
    "SubjectList",
    "Verdict",
]

DEFAULT_CONFIG_PATH = "/etc/mail/milter-agent.conf"
DEFAULT_SPOOL_DIR = "/var/spool/milter-agent"
DEFAULT_SOCKET = f"unix:{DEFAULT_SPOOL_DIR}/sock"
DEFAULT_CONTROL_SOCKET = f"unix:{DEFAULT_SPOOL_DIR}/cmd"
DEFAULT_USER = "_milter-agent"

DefaultAction = Literal["tempfail", "accept", "reject"]
LogTarget = Literal["syslog", "stderr", "stdout"]
Verdict = Literal["continue", "reject", "tempfail", "accept", "discard"]

#: When a module_safe_use worker is replaced by a fresh one (0 = never): after this many
#: messages, or once its resident memory or its open file descriptors grew by more than this
#: since the module was set up. The per-filter defaults of the module_worker_max_* keys.
WORKER_MAX_MESSAGES = 10_000
WORKER_MAX_RSS = 256 * 1024 * 1024
WORKER_MAX_FDS = 256


@dataclass(frozen=True)
class Settings:
    """Every global option, with the seed's defaults (almost everything off)."""

    socket: str = DEFAULT_SOCKET
    control_socket: str = DEFAULT_CONTROL_SOCKET
    io_timeout: float = 0.0
    user: str = DEFAULT_USER
    log_level: int = 0
    daemon_mode: int = 0
    error_threshold: int = 0
    allow_add_recipient: bool = False
    allow_remove_recipient: bool = False
    allow_add_header: bool = False
    allow_change_header: bool = False
    allow_change_body: bool = False
    lock_config: bool = False
    close_fds: bool = False
    stop_on_error: bool = False
    watch_config: bool = False
    allow_kill_program: bool = False
    allow_kill_module: bool = False
    regex: bool = False
    log_tempfile: bool = False
    last_recipient: bool = False
    verbose: bool = False
    spool_dir: str = DEFAULT_SPOOL_DIR
    socket_mode: int = 0o660
    default_action: DefaultAction = "tempfail"
    log_target: LogTarget = "syslog"
    pid_file: str | None = None
    kill_grace: float = 5.0
    progress_interval: float = 5.0
    shutdown_grace: float = 30.0
    max_header_size: int = 1024 * 1024
    notice_cmd: tuple[str, ...] | None = None
    notice_idle: float = 0.0
    admin_group: str | None = None
    metrics: str | None = None

    @property
    def foreground(self) -> bool:
        """``-d N`` with N > 0: stay in the foreground (the seed's "debugging terminal")."""
        return self.daemon_mode > 0

    @property
    def pid_path(self) -> str | None:
        """The pid file: ``pid_file``, or with ``-d 0`` one next to the sockets in the spool
        directory (per instance, so two daemons with their own spool never share one)."""
        if self.pid_file is not None or self.foreground:
            return self.pid_file
        return f"{self.spool_dir.rstrip('/')}/milter-agent.pid"

    @property
    def forward_missing(self) -> str:
        """The switches a forward lacks, e.g. ``-A`` or ``-AR`` ("" when it may run): a forward
        removes and adds recipients, and doing only half of it would lose or duplicate mail."""
        letters = ("A", self.allow_add_recipient), ("R", self.allow_remove_recipient)
        missing = "".join(letter for letter, given in letters if not given)
        return f"-{missing}" if missing else ""


@dataclass(frozen=True)
class HeaderTemplate:
    """A header to add or change; the value may use variables such as ``%s`` or ``%{queue_id}``."""

    name: str
    value: ArgTemplate

    def render(self, values: Mapping[str, str | Sequence[str]]) -> str:
        """The header value for one message; CR and LF from variable values become spaces so a
        value can never start a header of its own."""
        text = "".join(expand(self.value, values))
        return text.replace("\r", " ").replace("\n", " ")


@dataclass(frozen=True)
class FileStamp:
    """What identifies the content of the file a config was read from."""

    device: int
    inode: int
    size: int
    mtime_ns: int


@dataclass(frozen=True)
class AddressRule:
    """One ``[Address]`` section: conditions on the envelope and changes to recipients/headers."""

    name: str
    line: int = field(default=0, compare=False)
    message_sender: AddressList | None = None
    message_recipient: AddressList | None = None
    add_recipient: tuple[str, ...] = ()
    forward_recipients: tuple[str, ...] = ()
    add_headers: tuple[HeaderTemplate, ...] = ()
    change_headers: tuple[HeaderTemplate, ...] = ()
    remove_headers: tuple[str, ...] = ()
    run_time: tuple[CronExpression, ...] = ()
    skip_time: tuple[CronExpression, ...] = ()

    def matching_recipients(self, recipients: Sequence[str]) -> tuple[str, ...]:
        """The recipients ``message_recipient`` selects (all of them when it is not set)."""
        if self.message_recipient is None:
            return tuple(recipients)
        return tuple(rcpt for rcpt in recipients if self.message_recipient.matches(rcpt))

    def applies(self, sender: str, recipients: Sequence[str], now: datetime | None = None) -> bool:
        """Sender matches (if set) AND at least one recipient matches (if set) AND the time
        conditions hold at ``now`` (default: the current local time)."""
        if self.message_sender is not None and not self.message_sender.matches(sender):
            return False
        if self.message_recipient is not None and not self.matching_recipients(recipients):
            return False
        if not (self.run_time or self.skip_time):
            return True
        when = now or datetime.now()
        return _time_holds(self.run_time, when) and not any_matches(self.skip_time, when)


@dataclass(frozen=True)
class FilterSpec:
    """One ``[Filter]`` section: an external program or a module, when to run it, what its exit
    codes mean."""

    name: str
    argv: tuple[ArgTemplate, ...]
    line: int = field(default=0, compare=False)
    module_name: str | None = None
    module_safe_use: bool = False
    timeout: float = 60.0
    reject_exit_codes: frozenset[int] = frozenset()
    tempfail_exit_codes: frozenset[int] = frozenset()
    accept_exit_codes: frozenset[int] = frozenset()
    discard_exit_codes: frozenset[int] = frozenset()
    reject_message: str | None = None
    tempfail_message: str | None = None
    reject_code: str = "550 5.7.1"
    tempfail_code: str = "451 4.7.1"
    run_message_sender: AddressList | None = None
    run_message_recipient: AddressList | None = None
    skip_recipient: AddressList | None = None
    skip_message_sender: AddressList | None = None
    run_message_subject: SubjectList | None = None
    skip_message_subject: SubjectList | None = None
    run_time: tuple[CronExpression, ...] = ()
    skip_time: tuple[CronExpression, ...] = ()
    single_instance: int = 0
    error_threshold: int | None = None
    stdin: Literal["none", "message"] = "none"
    mode: Literal["enforce", "monitor"] = "enforce"
    max_message_size: int | None = None
    error_cooldown: float = 0.0
    module_worker_max_messages: int = WORKER_MAX_MESSAGES
    module_worker_max_rss: int = WORKER_MAX_RSS
    module_worker_max_fds: int = WORKER_MAX_FDS

    @property
    def is_module(self) -> bool:
        return self.module_name is not None

    @property
    def program(self) -> str | None:
        """The program path for a program filter (always literal text), None for a module."""
        if self.is_module:
            return None
        return "".join(part for part in self.argv[0].parts if isinstance(part, str))

    @property
    def required_files(self) -> set[str]:
        """Which of reply_file, body_file, header_file must be created before the run."""
        return required_files(self.argv)

    def verdict_for(self, exit_code: int) -> Verdict:
        """What an exit code means; codes in no list (and 0 unless listed) continue the chain."""
        table: tuple[tuple[Verdict, frozenset[int]], ...] = (
            ("reject", self.reject_exit_codes),
            ("tempfail", self.tempfail_exit_codes),
            ("accept", self.accept_exit_codes),
            ("discard", self.discard_exit_codes),
        )
        return next((verdict for verdict, codes in table if exit_code in codes), "continue")

    def applies_to(
        self,
        sender: str,
        recipients: Sequence[str],
        subject: str,
        now: datetime,
        size: int | None = None,
    ) -> bool:
        """All conditions ANDed, as the seed says (see :meth:`skip_reason`)."""
        return self.skip_reason(sender, recipients, subject, now, size) is None

    def skip_reason(
        self,
        sender: str,
        recipients: Sequence[str],
        subject: str,
        now: datetime,
        size: int | None = None,
    ) -> str | None:
        """The first condition that does not hold (its key), or None when the filter runs.

        A recipient condition holds when ANY recipient matches ``run_message_recipient``;
        ``skip_recipient`` skips only when EVERY recipient matches, so adding a skipped
        recipient to a message can never shield the other recipients from the filter.
        """
        checks = (
            ("run_message_sender", _holds(self.run_message_sender, sender)),
            ("skip_message_sender", not _holds_some(self.skip_message_sender, sender)),
            (
                "run_message_recipient",
                self.run_message_recipient is None
                or self.run_message_recipient.matches_any(recipients),
            ),
            (
                "skip_recipient",
                not (
                    self.skip_recipient is not None
                    and bool(recipients)
                    and all(self.skip_recipient.matches(rcpt) for rcpt in recipients)
                ),
            ),
            ("run_message_subject", _holds(self.run_message_subject, subject)),
            ("skip_message_subject", not _holds_some(self.skip_message_subject, subject)),
            ("run_time", _time_holds(self.run_time, now)),
            ("skip_time", not any_matches(self.skip_time, now)),
            (
                "max_message_size",
                self.max_message_size is None or size is None or size <= self.max_message_size,
            ),
        )
        return next((key for key, holds in checks if not holds), None)


def _time_holds(run_time: tuple[CronExpression, ...], when: datetime) -> bool:
    """A run_time condition: absent, or one of its expressions matches."""
    return not run_time or any_matches(run_time, when)


def _holds(condition: AddressList | SubjectList | None, value: str) -> bool:
    """A run_ condition: absent, or matching."""
    return condition is None or condition.matches(value)


def _holds_some(condition: AddressList | SubjectList | None, value: str) -> bool:
    """A skip_ condition: present and matching."""
    return condition is not None and condition.matches(value)


Section = AddressRule | FilterSpec


@dataclass(frozen=True)
class Config:
    """A whole configuration: settings and sections in file order (address rules and filters
    interleave exactly as written)."""

    settings: Settings = field(default_factory=Settings)
    sections: tuple[Section, ...] = ()
    path: str = field(default="", compare=False)
    stamp: FileStamp | None = field(default=None, compare=False)
    loaded_at: float = field(default=0.0, compare=False)
    warnings: tuple[str, ...] = field(default=(), compare=False)

    @property
    def mtime_ns(self) -> int:
        return self.stamp.mtime_ns if self.stamp else 0

    @property
    def filters(self) -> tuple[FilterSpec, ...]:
        return tuple(s for s in self.sections if isinstance(s, FilterSpec))

    @property
    def address_rules(self) -> tuple[AddressRule, ...]:
        return tuple(s for s in self.sections if isinstance(s, AddressRule))

    def section(self, name: str) -> Section | None:
        return next((s for s in self.sections if s.name == name), None)

    @property
    def extra_macros(self) -> frozenset[str]:
        """Every ``%{macro:NAME}`` used anywhere, so the daemon can ask the MTA for it."""
        templates: list[ArgTemplate] = []
        for section in self.sections:
            if isinstance(section, FilterSpec):
                templates.extend(section.argv)
            else:
                templates.extend(h.value for h in section.add_headers + section.change_headers)
        return macros(templates)
