"""The tables of known keys: global settings (with their command-line letters) and section keys.

One table per kind, read by the parser (what is allowed where), the command line (letters, long
forms, help) and the renderer (how to write a value back). Adding a setting means one row here
and one field in ``model.Settings``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from milter_agent.config import values as v


@dataclass(frozen=True)
class SettingKey:
    """A global setting: config-file key ``name``, Settings field ``name``."""

    name: str
    parse: Callable[[str], Any]
    format: Callable[[Any], str]
    help: str
    letter: str | None = None
    long: str | None = None
    metavar: str | None = None

    @property
    def is_switch(self) -> bool:
        return self.parse is v.parse_bool


def _switch(name: str, letter: str, long: str, help_text: str) -> SettingKey:
    return SettingKey(name, v.parse_bool, v.format_bool, help_text, letter, long)


def _text(value: Any) -> str:
    return str(value)


_ACTIONS = ("tempfail", "accept", "reject")
_LOG_TARGETS = ("syslog", "stderr", "stdout")

_SETTING_ROWS = (
    SettingKey(
        "socket",
        v.parse_socket,
        _text,
        "socket the MTA connects to (unix:/path, inet:port@host, inet6:port@host)",
        "p",
        "--socket",
        "SOCKET",
    ),
    SettingKey(
        "control_socket",
        v.parse_socket,
        _text,
        "socket for ma-client (status and control)",
        "i",
        "--control-socket",
        "SOCKET",
    ),
    SettingKey(
        "io_timeout",
        v.parse_seconds,
        v.format_number,
        "I/O timeout on the MTA socket, seconds (0 = none)",
        "t",
        "--io-timeout",
        "SECONDS",
    ),
    SettingKey("user", v.parse_account, _text, "user to run as after start", "u", "--user", "USER"),
    SettingKey(
        "log_level", v.parse_count, str, "log level (0 = normal)", "l", "--log-level", "LEVEL"
    ),
    SettingKey(
        "daemon_mode",
        v.parse_count,
        str,
        "0 = daemon; more = stay in the foreground (debugging terminal)",
        "d",
        "--debug-mode",
        "MODE",
    ),
    SettingKey(
        "error_threshold",
        v.parse_count,
        str,
        "switch a filter off after this many errors (0 = never)",
        "m",
        "--error-threshold",
        "N",
    ),
    _switch("allow_add_recipient", "A", "--allow-add-recipient", "allow adding recipients"),
    _switch("allow_remove_recipient", "R", "--allow-remove-recipient", "allow removing recipients"),
    _switch("allow_add_header", "H", "--allow-add-header", "allow adding headers"),
    _switch("allow_change_header", "G", "--allow-change-header", "allow changing headers"),
    _switch("allow_change_body", "B", "--allow-change-body", "allow replacing the message body"),
    _switch("lock_config", "a", "--lock-config", "take a shared lock on the config while reading"),
    _switch(
        "close_fds",
        "C",
        "--close-fds",
        "accepted for compatibility: filters never inherit the daemon's descriptors anyway",
    ),
    _switch(
        "stop_on_error", "E", "--stop-on-error", "a filter error tempfails the message (no skip)"
    ),
    _switch("watch_config", "F", "--watch-config", "reload the config when the file changes"),
    _switch("allow_kill_program", "T", "--allow-kill-program", "kill a program filter on timeout"),
    _switch("allow_kill_module", "M", "--allow-kill-module", "stop a module filter on timeout"),
    _switch("regex", "X", "--regex", "list items may be POSIX extended regular expressions"),
    _switch("log_tempfile", "I", "--log-tempfile", "log each message's spool file name and size"),
    _switch("last_recipient", "Q", "--last-recipient", "%{recipient} is the last, not the first"),
    _switch("verbose", "v", "--verbose", "more detailed output"),
    SettingKey(
        "spool_dir",
        v.parse_absolute_path,
        _text,
        "directory for message files",
        None,
        "--spool-dir",
        "DIR",
    ),
    SettingKey(
        "socket_mode",
        v.parse_octal_mode,
        v.format_octal_mode,
        "file mode of the unix sockets (octal)",
        None,
        "--socket-mode",
        "MODE",
    ),
    SettingKey(
        "default_action",
        lambda text: v.parse_choice(text, _ACTIONS),
        _text,
        "answer to the MTA when milter-agent itself fails: tempfail, accept or reject",
    ),
    SettingKey(
        "log_target",
        lambda text: v.parse_choice(text, _LOG_TARGETS),
        _text,
        "where logs go: syslog, stderr or stdout",
        None,
        "--log-target",
        "TARGET",
    ),
    SettingKey(
        "pid_file",
        v.parse_absolute_path,
        _text,
        "write the daemon's process id here",
        None,
        "--pid-file",
        "PATH",
    ),
    SettingKey(
        "kill_grace",
        v.parse_seconds,
        v.format_number,
        "seconds between SIGTERM and SIGKILL for a timed-out filter",
    ),
    SettingKey(
        "progress_interval",
        v.parse_positive_seconds,
        v.format_number,
        "seconds between progress packets to the MTA while filters run",
    ),
    SettingKey(
        "shutdown_grace",
        v.parse_seconds,
        v.format_number,
        "on SIGTERM or SIGINT, seconds the messages in flight have to finish",
    ),
    SettingKey(
        "max_header_size",
        v.parse_positive_size,
        str,
        "most header bytes held per message (k, M suffixes); a message over it is rejected",
    ),
    SettingKey(
        "notice_cmd",
        v.parse_command,
        v.format_command,
        "program run with a notice (filter switched off, filter idle)",
    ),
    SettingKey(
        "notice_idle",
        v.parse_seconds,
        v.format_number,
        "send a notice when a filter has not run for this many seconds (0 = off)",
    ),
    SettingKey("admin_group", v.parse_account, _text, "group allowed to use the control socket"),
    SettingKey(
        "metrics",
        v.parse_host_port,
        _text,
        "serve Prometheus metrics on host:port, e.g. 127.0.0.1:9464 (unset = off)",
        None,
        "--metrics",
        "HOST:PORT",
    ),
)

SETTINGS: Mapping[str, SettingKey] = {row.name: row for row in _SETTING_ROWS}

#: ``-1`` means these letters, as the seed says (``-ARHGITMX``).
ALL_LETTERS = "ARHGITMX"

#: [Address] keys; True = the key may repeat (its values add up).
ADDRESS_KEYS: Mapping[str, bool] = {
    "task_name": False,
    "message_sender": True,
    "message_recipient": True,
    "add_recipient": True,
    "message_forward_recipient": True,
    "add_header_name": True,
    "add_header_value": True,
    "change_header_name": True,
    "change_header_value": True,
    "remove_header_name": True,
    "run_time": True,
    "skip_time": True,
}

#: [Filter] keys; True = the key may repeat (its values add up).
FILTER_KEYS: Mapping[str, bool] = {
    "task_name": False,
    "exec_cmd": False,
    "module_name": False,
    "module_safe_use": False,
    "task_timeout": False,
    "reject_exit_codes": True,
    "tempfail_exit_codes": True,
    "accept_exit_codes": True,
    "discard_exit_codes": True,
    "reject_message": False,
    "tempfail_message": False,
    "reject_code": False,
    "tempfail_code": False,
    "run_message_sender": True,
    "run_message_recipient": True,
    "skip_recipient": True,
    "skip_message_sender": True,
    "run_message_subject": True,
    "skip_message_subject": True,
    "run_time": True,
    "skip_time": True,
    "run_single_instance": False,
    "error_threshold": False,
    "stdin": False,
    "mode": False,
    "max_message_size": False,
    "error_cooldown": False,
    "module_worker_max_messages": False,
    "module_worker_max_rss": False,
    "module_worker_max_fds": False,
}

SECTION_KEYS: Mapping[str, Mapping[str, bool]] = {
    "address": ADDRESS_KEYS,
    "filter": FILTER_KEYS,
}

#: Section names as written in the file (matched case-insensitively).
SECTION_TITLES: Mapping[str, str] = {"global": "Global", "address": "Address", "filter": "Filter"}
