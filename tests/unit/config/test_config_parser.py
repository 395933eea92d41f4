"""The file: syntax, every key, every error message (file:line, key, reason, suggestion)."""

from __future__ import annotations

import fcntl
import os
from datetime import datetime
from pathlib import Path

import pytest
from config_helpers import (
    PATH,
    errors_of,
    filter_with,
    only_error,
    only_filter,
    only_rule,
    parse,
)
from hypothesis import given
from hypothesis import strategies as st

from milter_agent.config.keys import SETTINGS
from milter_agent.config.model import AddressRule, FilterSpec, Settings
from milter_agent.config.options import parse_command_line
from milter_agent.config.parser import (
    ConfigLocked,
    load_config,
    parse_config_text,
    parse_value,
    quote_value,
)
from milter_agent.config.problems import ConfigErrors
from milter_agent.errors import ConfigError
from milter_agent.variables import Variable

# --- line syntax ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rest", "value"),
    [
        (' "abc"', "abc"),
        (" abc", "abc"),
        (' "a # b"', "a # b"),
        (' "a b" # comment', "a b"),
        (" a b # comment", "a b"),
        (" 0 9 * * mon#1", "0 9 * * mon#1"),  # "#" inside a word is not a comment
        (" #all comment", ""),
        (r' "say \"hi\""', 'say "hi"'),
        (r' "back\\slash"', "back\\slash"),
        (r' "test@home\.(ru|jp|us)"', r"test@home\.(ru|jp|us)"),  # other backslashes stay
        (' ""', ""),
        ('"x"', "x"),
    ],
)
def test_values(rest: str, value: str) -> None:
    assert parse_value(rest) == value


@pytest.mark.parametrize("value", ["", "plain", 'q"uote', "back\\slash", r"a\.b", "# not", "\\"])
def test_quote_value_round_trips(value: str) -> None:
    assert parse_value(quote_value(value)) == value


def test_comments_blank_lines_and_layout() -> None:
    config = parse(
        """
        # a comment
           # an indented comment

        regex=yes   # trailing comment
          [ filter ]   # a comment after a section
        task_name = t
            exec_cmd = "/bin/f %f"    # trailing comment after a quoted value
        """
    )
    assert config.settings.regex
    assert only_filter(config).name == "t"


def test_section_names_are_case_insensitive() -> None:
    config = parse("[ADDRESS]\nadd_recipient = a\n[filter]\ntask_name = t\nexec_cmd = /bin/t\n")
    assert [type(s) for s in config.sections] == [AddressRule, FilterSpec]


def test_keys_are_case_insensitive() -> None:
    assert only_filter(parse("[Filter]\nTask_Name = t\nEXEC_CMD = /bin/t\n")).name == "t"


def test_crlf_line_endings_and_bom() -> None:
    text = '\ufeffregex = yes\r\n[Filter]\r\ntask_name = t\r\nexec_cmd = "/bin/t %f"\r\n'
    config = parse_config_text(text, PATH)
    assert config.settings.regex
    assert only_filter(config).argv[1].parts == (Variable("file"),)


def test_sections_keep_file_order() -> None:
    config = parse(
        """
        [Filter]
        task_name = one
        exec_cmd = /bin/one
        [Address]
        add_recipient = a
        [Filter]
        task_name = two
        exec_cmd = /bin/two
        [Address]
        task_name = named
        add_recipient = b
        """
    )
    assert [s.name for s in config.sections] == ["one", "address-1", "two", "named"]
    assert [s.name for s in config.filters] == ["one", "two"]
    assert [s.name for s in config.address_rules] == ["address-1", "named"]
    assert [s.line for s in config.sections] == [2, 5, 7, 10]
    assert config.section("two") is config.sections[2]
    assert config.section("nope") is None


def test_global_section_anywhere() -> None:
    config = parse(
        """
        log_level = 2
        [Filter]
        task_name = t
        exec_cmd = /bin/t
        [Global]
        regex = yes
        """
    )
    assert config.settings.log_level == 2
    assert config.settings.regex


# --- global settings: every key ----------------------------------------------------------------


GLOBAL_CASES = [
    ("socket = inet:8890@127.0.0.1", "socket", "inet:8890@127.0.0.1"),
    ('socket = "unix:/run/m.sock"', "socket", "unix:/run/m.sock"),
    ("control_socket = unix:/run/c.sock", "control_socket", "unix:/run/c.sock"),
    ("io_timeout = 30", "io_timeout", 30.0),
    ("io_timeout = 2.5", "io_timeout", 2.5),
    ("user = mailnull", "user", "mailnull"),
    ("log_level = 3", "log_level", 3),
    ("daemon_mode = 1", "daemon_mode", 1),
    ("error_threshold = 5", "error_threshold", 5),
    ("allow_add_recipient = yes", "allow_add_recipient", True),
    ("allow_remove_recipient = true", "allow_remove_recipient", True),
    ("allow_add_header = on", "allow_add_header", True),
    ("allow_change_header = 1", "allow_change_header", True),
    ("allow_change_body = YES", "allow_change_body", True),
    ("lock_config = yes", "lock_config", True),
    ("close_fds = yes", "close_fds", True),
    ("stop_on_error = yes", "stop_on_error", True),
    ("watch_config = yes", "watch_config", True),
    ("allow_kill_program = yes", "allow_kill_program", True),
    ("allow_kill_module = yes", "allow_kill_module", True),
    ("regex = yes", "regex", True),
    ("log_tempfile = yes", "log_tempfile", True),
    ("last_recipient = yes", "last_recipient", True),
    ("verbose = yes", "verbose", True),
    ("spool_dir = /var/tmp/ma", "spool_dir", "/var/tmp/ma"),
    ("socket_mode = 0600", "socket_mode", 0o600),
    ("socket_mode = 640", "socket_mode", 0o640),
    ("default_action = accept", "default_action", "accept"),
    ("default_action = REJECT", "default_action", "reject"),
    ("log_target = stderr", "log_target", "stderr"),
    ("pid_file = /run/ma.pid", "pid_file", "/run/ma.pid"),
    ("kill_grace = 1.5", "kill_grace", 1.5),
    ("progress_interval = 10", "progress_interval", 10.0),
    ("shutdown_grace = 2.5", "shutdown_grace", 2.5),
    ("shutdown_grace = 0", "shutdown_grace", 0.0),
    ("max_header_size = 256k", "max_header_size", 256 * 1024),
    ("max_header_size = 2000000", "max_header_size", 2_000_000),
    (
        "notice_cmd = \"/usr/bin/logger -t 'milter agent'\"",
        "notice_cmd",
        ("/usr/bin/logger", "-t", "milter agent"),
    ),
    ("notice_idle = 3600", "notice_idle", 3600.0),
    ("admin_group = wheel", "admin_group", "wheel"),
    ("metrics = 127.0.0.1:9100", "metrics", "127.0.0.1:9100"),
    ("metrics = [::1]:9100", "metrics", "[::1]:9100"),
]


def test_the_cases_cover_every_setting() -> None:
    assert {field for _, field, _ in GLOBAL_CASES} == set(SETTINGS) == set(vars(Settings()))


@pytest.mark.parametrize(("line", "field", "value"), GLOBAL_CASES)
def test_every_global_key(line: str, field: str, value: object) -> None:
    settings = parse(line).settings
    assert getattr(settings, field) == value
    assert getattr(Settings(), field) != value  # the test really changes something


@pytest.mark.parametrize("word", ["no", "false", "off", "0", "No"])
def test_false_booleans(word: str) -> None:
    assert parse(f"regex = {word}").settings.regex is False


def test_seed_defaults() -> None:
    settings = parse("log_level = 0").settings
    assert settings.socket == "unix:/var/spool/milter-agent/sock"
    assert settings.control_socket == "unix:/var/spool/milter-agent/cmd"
    assert settings.user == "_milter-agent"
    assert settings.io_timeout == 0
    assert settings.error_threshold == 0
    assert settings.daemon_mode == 0 and not settings.foreground
    assert settings.spool_dir == "/var/spool/milter-agent"
    assert settings.socket_mode == 0o660
    assert settings.default_action == "tempfail"
    assert settings.kill_grace == 5 and settings.progress_interval == 5
    assert settings.shutdown_grace == 30 and settings.max_header_size == 1024 * 1024
    switches = [name for name, value in vars(settings).items() if isinstance(value, bool) and value]
    assert switches == []  # "by default all options are disabled"


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("regex = maybe", "expected yes/no"),
        ("log_level = two", "expected a whole number"),
        ("log_level = -1", "must be at least 0"),
        ("io_timeout = soon", "expected a number of seconds"),
        ("io_timeout = -1", "0 or more"),
        ("io_timeout = inf", "finite"),
        ("progress_interval = 0", "more than 0"),
        ("shutdown_grace = -1", "0 or more"),
        ("max_header_size = 0", "more than 0 bytes"),
        ("max_header_size = lots", "size in bytes"),
        ("socket = tcp:25", "unknown socket type"),
        ("socket = unix:relative", "absolute path"),
        ("socket = inet:99999@host", "port"),
        ("socket_mode = 0999", "octal"),
        ("socket_mode = 01777", "between 000 and 0777"),
        ("spool_dir = relative/dir", "absolute path"),
        ("default_action = drop", "expected one of tempfail, accept, reject"),
        ("log_target = file", "expected one of syslog, stderr, stdout"),
        ("user = 'bad user'", "user or group name"),
        ('notice_cmd = "unterminated \'quote"', "cannot split"),
        ("metrics = 9100", "host:port"),
        ("metrics = ::1:9100", "host:port"),
    ],
)
def test_bad_global_values(line: str, reason: str) -> None:
    error = only_error(f"\n{line}")
    key = line.split(maxsplit=1)[0]
    assert error.startswith(f"{PATH}:2: {key}: ")
    assert reason in error


# --- [Filter]: every key -----------------------------------------------------------------------


def test_filter_defaults() -> None:
    spec = filter_with()
    assert spec.timeout == 60
    assert spec.reject_code == "550 5.7.1"
    assert spec.tempfail_code == "451 4.7.1"
    assert spec.single_instance == 0
    assert spec.error_threshold is None
    assert spec.stdin == "none" and spec.mode == "enforce"
    assert spec.max_message_size is None and spec.error_cooldown == 0
    assert (
        spec.module_worker_max_messages,
        spec.module_worker_max_rss,
        spec.module_worker_max_fds,
    ) == (10_000, 256 * 1024 * 1024, 256)
    assert spec.verdict_for(0) == "continue"
    assert spec.program == "/bin/f"
    assert not spec.is_module


def test_every_filter_scalar_key() -> None:
    spec = filter_with(
        "task_timeout = 2.5",
        'reject_exit_codes = "1 2"',
        "tempfail_exit_codes = 75",
        "accept_exit_codes = 64-66",
        "discard_exit_codes = 99",
        'reject_message = "Virus found"',
        'tempfail_message = "Try again later"',
        'reject_code = "554 5.7.0"',
        'tempfail_code = "421"',
        "run_single_instance = 2",
        "error_threshold = 3",
        "stdin = message",
        "mode = monitor",
        "max_message_size = 10M",
        "error_cooldown = 300",
        "module_worker_max_messages = 500",
        "module_worker_max_rss = 64M",
        "module_worker_max_fds = 0",
    )
    assert spec.timeout == 2.5
    assert spec.reject_exit_codes == {1, 2}
    assert spec.tempfail_exit_codes == {75}
    assert spec.accept_exit_codes == {64, 65, 66}
    assert spec.discard_exit_codes == {99}
    assert [spec.verdict_for(code) for code in (1, 75, 65, 99, 3)] == [
        "reject",
        "tempfail",
        "accept",
        "discard",
        "continue",
    ]
    assert spec.reject_message == "Virus found"
    assert spec.tempfail_message == "Try again later"
    assert spec.reject_code == "554 5.7.0"
    assert spec.tempfail_code == "421"
    assert spec.single_instance == 2
    assert spec.error_threshold == 3
    assert spec.stdin == "message" and spec.mode == "monitor"
    assert spec.max_message_size == 10 * 1024 * 1024
    assert spec.error_cooldown == 300
    assert spec.module_worker_max_messages == 500
    assert spec.module_worker_max_rss == 64 * 1024 * 1024
    assert spec.module_worker_max_fds == 0


@pytest.mark.parametrize(
    ("text", "size"), [("500", 500), ("500k", 512000), ("2K", 2048), ("1m", 1048576)]
)
def test_message_size_suffixes(text: str, size: int) -> None:
    assert filter_with(f"max_message_size = {text}").max_message_size == size


def test_exit_code_lists_may_repeat() -> None:
    spec = filter_with("reject_exit_codes = 1", "reject_exit_codes = 2 3")
    assert spec.reject_exit_codes == {1, 2, 3}


def test_every_filter_list_key() -> None:
    spec = filter_with(
        'run_message_sender = "a@x b@x"',
        'run_message_recipient = "c@x"',
        'skip_recipient = "root"',
        'skip_message_sender = "^bounce"',
        'run_message_subject = "Hello world"',
        'run_message_subject = "^urgent"',
        'skip_message_subject = "ALERT! Virus Scanner Problem!"',
        'run_time = "*/5 8-18 * * mon-fri"',
        'run_time = "* * * * sat"',
        'skip_time = "0 12 * * *"',
    )
    assert spec.run_message_sender is not None
    assert spec.run_message_sender.items == ("a@x", "b@x")
    assert spec.run_message_recipient is not None and spec.run_message_recipient.items == ("c@x",)
    assert spec.skip_recipient is not None and spec.skip_recipient.items == ("root",)
    assert spec.skip_message_sender is not None and spec.skip_message_sender.regex
    assert spec.run_message_subject is not None
    assert spec.run_message_subject.items == ("Hello world", "^urgent")
    assert spec.skip_message_subject is not None
    assert spec.skip_message_subject.items == ("ALERT! Virus Scanner Problem!",)
    assert [e.text for e in spec.run_time] == ["*/5 8-18 * * mon-fri", "* * * * sat"]
    assert [e.text for e in spec.skip_time] == ["0 12 * * *"]


def test_module_filter() -> None:
    spec = only_filter(
        parse(
            """
            [Filter]
            task_name = m
            module_name = "/usr/local/libexec/module_sample.so"
            module_safe_use = yes
            exec_cmd = "%f"
            """
        )
    )
    assert spec.is_module and spec.module_safe_use
    assert spec.module_name == "/usr/local/libexec/module_sample.so"
    assert spec.program is None
    assert spec.argv[0].parts == (Variable("file"),)


def test_module_safe_use_no_is_harmless_on_a_program() -> None:
    assert not filter_with("module_safe_use = no").module_safe_use


def test_module_filter_without_exec_cmd() -> None:
    spec = only_filter(parse("[Filter]\ntask_name = m\nmodule_name = mod\n"))
    assert spec.argv == ()


def test_exec_cmd_is_split_like_a_shell() -> None:
    spec = filter_with()
    spec = only_filter(
        parse(
            """
            [Filter]
            task_name = t
            exec_cmd = "/bin/x 'two words' \\"q w\\" a\\\\ b %{subject} -o=%f"
            """
        )
    )
    assert [w.source() for w in spec.argv] == [
        "/bin/x",
        "two words",
        "q w",
        "a b",
        "%{subject}",
        "-o=%f",
    ]


def test_extra_macros_are_collected() -> None:
    config = parse(
        """
        [Filter]
        task_name = t
        exec_cmd = "/bin/x %{macro:j} %{macro:daemon_name}"
        [Address]
        add_header_name = X-Via
        add_header_value = "%{macro:{if_addr}}"
        """
    )
    assert config.extra_macros == frozenset({"j", "{daemon_name}", "{if_addr}"})


# --- [Address]: every key ----------------------------------------------------------------------


def test_every_address_key() -> None:
    rule = only_rule(
        parse(
            """
            [Address]
            task_name = watcher
            message_sender = "<a@x> b@x"
            message_recipient = "c@x"
            add_recipient = "user3 <d@y>"
            message_forward_recipient = "user2 user3"
            message_forward_recipient = "user4@domain4.net"
            add_header_name = "X-One"
            add_header_value = "from %s"
            add_header_name = "X-Two"
            add_header_value = "two"
            change_header_name = "Subject"
            change_header_value = "[checked] %{subject}"
            remove_header_name = "X-Spam X-Junk"
            remove_header_name = "Received-SPF"
            """
        )
    )
    assert rule.name == "watcher"
    assert rule.message_sender is not None and rule.message_sender.items == ("<a@x>", "b@x")
    assert rule.message_recipient is not None and rule.message_recipient.items == ("c@x",)
    assert rule.add_recipient == ("user3", "d@y")
    assert rule.forward_recipients == ("user2", "user3", "user4@domain4.net")
    assert [(h.name, h.value.source()) for h in rule.add_headers] == [
        ("X-One", "from %s"),
        ("X-Two", "two"),
    ]
    assert [(h.name, h.value.source()) for h in rule.change_headers] == [
        ("Subject", "[checked] %{subject}")
    ]
    assert rule.remove_headers == ("X-Spam", "X-Junk", "Received-SPF")
    assert rule.add_headers[0].render({"sender": "s@x\r\nBcc: evil"}) == "from s@x  Bcc: evil"


def test_address_rule_conditions() -> None:
    rule = only_rule(
        parse('[Address]\nmessage_sender = "s@x"\nmessage_recipient = "r@x"\nadd_recipient = w\n')
    )
    assert rule.applies("s@x", ["other@x", "r@x"])
    assert not rule.applies("s@x", ["other@x"])
    assert not rule.applies("t@x", ["r@x"])
    assert rule.matching_recipients(["r@x", "q@x", "<r@X>"]) == ("r@x", "<r@X>")
    unconditional = only_rule(parse("[Address]\nadd_recipient = w\n"))
    assert unconditional.applies("", [])
    assert unconditional.matching_recipients(["a", "b"]) == ("a", "b")


# --- errors ------------------------------------------------------------------------------------


def test_unknown_key_suggests_the_nearest() -> None:
    error = only_error("[Filter]\ntask_name = t\nexec_cmd = /bin/t\nreject_exit_code = 1\n")
    assert error == (
        f"{PATH}:4: reject_exit_code: unknown key in [Filter] (did you mean reject_exit_codes?)"
    )


def test_unknown_global_key_suggests_the_nearest() -> None:
    error = only_error("alow_add_recipient = yes")
    assert f"{PATH}:1: alow_add_recipient:" in error
    assert "did you mean allow_add_recipient?" in error


def test_unknown_key_without_a_near_one() -> None:
    error = only_error("[Address]\nadd_recipient = a\nzzzz = 1\n")
    assert error == f"{PATH}:3: zzzz: unknown key in [Address]"


def test_misplaced_keys_say_where_they_belong() -> None:
    found = errors_of(
        """
        exec_cmd = /bin/x
        [Address]
        add_recipient = a
        regex = yes
        exec_cmd = /bin/x
        """
    )
    assert found == [
        f"{PATH}:2: exec_cmd: belongs in [Filter] sections",
        f"{PATH}:5: regex: is a global setting: put it before the first section or in [Global]",
        f"{PATH}:6: exec_cmd: belongs in [Filter] sections",
    ]


def test_unknown_section() -> None:
    found = errors_of("[Filters]\ntask_name = t\nbogus = 1\n")
    assert found == [
        f"{PATH}:1: unknown section [Filters] (known: [Global], [Address], [Filter]); "
        "its keys are ignored"
    ]


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("just words", "expected 'key = value' or '[Section]'"),
        ('key = "open', "missing closing quote"),
        ('key = "a" b', "unexpected text after the closing quote"),
        ("= value", "expected 'key = value'"),
        ("key = a\x01b", "control character"),
    ],
)
def test_syntax_errors(line: str, reason: str) -> None:
    error = only_error(f"# first\n{line}\n")
    assert error.startswith(f"{PATH}:2: ")
    assert reason in error


def test_duplicate_scalar_key() -> None:
    error = only_error(
        "[Filter]\ntask_name = t\nexec_cmd = /bin/t\ntask_timeout = 1\ntask_timeout = 2\n"
    )
    assert error == f"{PATH}:5: task_timeout: given twice (first at line 4)"


def test_duplicate_global_key_across_sections() -> None:
    error = only_error("regex = yes\n[Global]\nregex = no\n")
    assert error == f"{PATH}:3: regex: given twice (first at line 1)"


def test_duplicate_task_names() -> None:
    found = errors_of(
        """
        [Filter]
        task_name = same
        exec_cmd = /bin/a
        [Address]
        task_name = same
        add_recipient = b
        """
    )
    assert found == [f"{PATH}:6: task_name: 'same' is already used by the section at line 2"]


def test_duplicate_task_names_are_found_in_broken_sections_too() -> None:
    """Every error in one pass: the duplicate is reported beside the sections' own errors."""
    found = errors_of(
        """
        [Filter]
        task_name = scan
        exec_cmd = /bin/a %q
        [Filter]
        task_name = scan
        task_timeout = soon
        [Address]
        add_recipient = x
        [Address]
        task_name = address-1
        add_recipient = "<bad"
        """
    )
    assert found[0].startswith(f"{PATH}:4: exec_cmd: unknown variable %q")
    assert found[1:] == [
        f"{PATH}:5: exec_cmd: missing: a [Filter] needs a program to run or a module_name",
        f"{PATH}:6: task_name: 'scan' is already used by the section at line 2",
        f"{PATH}:7: task_timeout: expected a number of seconds, got 'soon'",
        f"{PATH}:11: task_name: 'address-1' is already used by the section at line 8",
        f"{PATH}:12: add_recipient: '<bad' has unbalanced or misplaced angle brackets",
    ]


def test_filter_needs_a_name_and_a_program() -> None:
    found = errors_of("\n[Filter]\ntask_timeout = 1\n")
    assert found == [
        f"{PATH}:2: task_name: missing: every [Filter] needs a name",
        f"{PATH}:2: exec_cmd: missing: a [Filter] needs a program to run or a module_name",
    ]


def _filter_text(line: str) -> str:
    """A valid filter whose line 4 is ``line``; the base key it redefines becomes a comment."""
    key = line.split(maxsplit=1)[0]
    base = {"task_name": "task_name = t", "exec_cmd": "exec_cmd = /bin/t %f"}
    kept = ["# replaced by line 4" if name == key else text for name, text in base.items()]
    return "\n".join(["[Filter]", *kept, line]) + "\n"


@pytest.mark.parametrize(
    ("line", "key", "reason"),
    [
        ('exec_cmd = ""', "exec_cmd", "empty command"),
        ('exec_cmd = "%s/bin"', "exec_cmd", "program name must be plain text"),
        ('exec_cmd = "/bin/x \'open"', "exec_cmd", "cannot split the command line"),
        ('exec_cmd = "/bin/x %x"', "exec_cmd", "unknown variable %x"),
        ('exec_cmd = "/bin/x %{nope}"', "exec_cmd", "unknown variable %{nope}"),
        ('exec_cmd = "/bin/x 50%"', "exec_cmd", "lone %"),
        ('exec_cmd = "/bin/x --to=%{recipients}"', "exec_cmd", "whole word"),
        ("task_name = 'bad name'", "task_name", "letters, digits"),
        ("task_timeout = 1m", "task_timeout", "expected a number of seconds"),
        ("reject_exit_codes = 1 x", "reject_exit_codes", "whole number"),
        ("reject_exit_codes = 256", "reject_exit_codes", "between 0 and 255"),
        ("reject_exit_codes = 5-2", "reject_exit_codes", "empty range"),
        ('reject_exit_codes = ""', "reject_exit_codes", "no exit codes"),
        ('reject_message = "a\tb"', "reject_message", "control characters"),
        ('reject_message = ""', "reject_message", "empty message"),
        ('reject_code = "451 4.7.1"', "reject_code", "class 5"),
        ('reject_code = "550 4.7.1"', "reject_code", "class 5"),
        ('tempfail_code = "550"', "tempfail_code", "class 4"),
        ('tempfail_code = "45x"', "tempfail_code", "SMTP reply code"),
        ("run_single_instance = -1", "run_single_instance", "at least 0"),
        ("error_threshold = x", "error_threshold", "whole number"),
        ("stdin = file", "stdin", "none, message"),
        ("mode = dry", "mode", "enforce, monitor"),
        ("max_message_size = 10T", "max_message_size", "size in bytes"),
        ("max_message_size = 0", "max_message_size", "more than 0"),
        ("error_cooldown = -5", "error_cooldown", "0 or more"),
        ("module_worker_max_messages = -1", "module_worker_max_messages", "at least 0"),
        ("module_worker_max_rss = 1T", "module_worker_max_rss", "size in bytes"),
        ("module_worker_max_fds = many", "module_worker_max_fds", "whole number"),
        ('run_message_sender = ""', "run_message_sender", "empty list"),
        ('run_message_sender = "a(b"', "run_message_sender", "bad regular expression 'a(b'"),
        ('skip_message_subject = "[[:nope:]]"', "skip_message_subject", "bad regular expression"),
        ('run_time = "* * * *"', "run_time", "five fields"),
        ('skip_time = "99 * * * *"', "skip_time", "bad cron expression"),
        ("module_safe_use = yes", "module_safe_use", "only to module filters"),
    ],
)
def test_filter_value_errors(line: str, key: str, reason: str) -> None:
    error = only_error(_filter_text(line), "-X")
    assert error.startswith(f"{PATH}:4: {key}: "), error
    assert reason in error, error


def test_exit_code_in_two_lists() -> None:
    error = only_error(
        "[Filter]\ntask_name = t\nexec_cmd = /bin/t\n"
        "reject_exit_codes = 1 2\naccept_exit_codes = 2\n"
    )
    assert error == f"{PATH}:5: accept_exit_codes: exit code(s) 2 also in reject_exit_codes"


@pytest.mark.parametrize(
    ("line", "key", "reason"),
    [
        ('add_recipient = "<a@b"', "add_recipient", "angle brackets"),
        ('add_recipient = "a@"', "add_recipient", "not an address"),
        ('add_recipient = ""', "add_recipient", "no address given"),
        (f'add_recipient = "{"x" * 321}"', "add_recipient", "longer than 320 bytes"),
        ('message_forward_recipient = "ok <bad"', "message_forward_recipient", "angle brackets"),
        ('remove_header_name = "Bad:Name"', "remove_header_name", "not a header field name"),
        ('message_recipient = "a[b"', "message_recipient", "bad regular expression"),
    ],
)
def test_address_value_errors(line: str, key: str, reason: str) -> None:
    error = only_error(f"[Address]\nadd_header_name = X\nadd_header_value = y\n{line}\n", "-X")
    assert error.startswith(f"{PATH}:4: {key}: "), error
    assert reason in error, error


#: Unicode blanks that str.split() would take for separators; list values split at ASCII space
#: and tab only, so an item holding one of them stays whole and is refused or never matches.
UNICODE_BLANKS = ["\x85", "\xa0", "\u2028", "\u3000"]


@pytest.mark.parametrize("blank", UNICODE_BLANKS)
@pytest.mark.parametrize("key", ["add_recipient", "message_forward_recipient"])
def test_an_address_to_add_is_not_split_at_a_unicode_blank(key: str, blank: str) -> None:
    error = only_error(f'[Address]\n{key} = "ok@x a{blank}b@x"\n', "-AR")
    assert error.startswith(f"{PATH}:2: {key}: "), error
    assert f"contains a space or control character (U+{ord(blank):04X})" in error


@pytest.mark.parametrize("blank", UNICODE_BLANKS)
def test_a_condition_item_is_not_split_at_a_unicode_blank(blank: str) -> None:
    config = parse(
        f'[Address]\nmessage_sender = "a{blank}b@x c@x"\nadd_recipient = w\n'
        f'[Filter]\ntask_name = f\nexec_cmd = /bin/f\nrun_message_recipient = "a{blank}b@x"\n',
        "-A",
    )
    rule, spec = config.sections
    assert isinstance(rule, AddressRule) and isinstance(spec, FilterSpec)
    assert rule.message_sender is not None and spec.run_message_recipient is not None
    assert rule.message_sender.items == (f"a{blank}b@x", "c@x")
    assert not rule.applies("b@x", []) and rule.applies("c@x", [])
    assert spec.run_message_recipient.items == (f"a{blank}b@x",)
    assert spec.skip_reason("s@x", ["b@x"], "", datetime(2026, 1, 5)) == "run_message_recipient"


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ('remove_header_name = "X-A\x85X-B"', "not a header field name"),
        ('run_time = "0\x859 * * *"', "must have five fields"),
    ],
)
def test_other_address_lists_are_not_split_at_a_unicode_blank(line: str, reason: str) -> None:
    error = only_error(f"[Address]\nadd_header_name = X\nadd_header_value = y\n{line}\n")
    assert error.startswith(f"{PATH}:4: {line.split(maxsplit=1)[0]}: "), error
    assert reason in error, error


def test_exit_codes_are_not_split_at_a_unicode_blank() -> None:
    error = only_error(_filter_text('reject_exit_codes = "1\x852"'))
    assert error.startswith(f"{PATH}:4: reject_exit_codes: expected a whole number"), error


def test_header_pairs_must_match() -> None:
    found = errors_of(
        """
        [Address]
        add_header_value = "orphan"
        add_header_name = "X-A"
        add_header_name = "X-B"
        add_header_value = "b"
        change_header_name = "X-C"
        """
    )
    assert found == [
        f"{PATH}:3: add_header_value: has no add_header_name before it",
        f"{PATH}:4: add_header_name: has no add_header_value after it",
        f"{PATH}:7: change_header_name: has no change_header_value after it",
    ]


def test_header_value_may_not_use_file_variables() -> None:
    error = only_error('[Address]\nadd_header_name = X\nadd_header_value = "%f"\n')
    assert error == f"{PATH}:3: add_header_value: %f is not allowed here"


def test_address_section_without_action() -> None:
    error = only_error('\n[Address]\nmessage_recipient = "a@b"\n')
    assert error.startswith(f"{PATH}:2: [Address] section does nothing")


def test_empty_file_is_an_error() -> None:
    for text in ("", "\n\n", "# only a comment\n"):
        assert only_error(text) == f"{PATH}: no settings and no sections (empty or truncated file?)"


def test_all_errors_are_collected_in_one_pass_in_line_order() -> None:
    with pytest.raises(ConfigErrors) as caught:
        parse(
            """
            regex = perhaps
            [Filter]
            task_name = a
            exec_cmd = "/bin/a %q"
            run_time = "bad"
            [Bogus]
            [Address]
            add_recipient = "<x"
            [Filter]
            task_name = a
            exec_cmd = /bin/b
            """
        )
    error = caught.value
    lines = [e.line for e in error.errors]
    assert lines == [2, 5, 6, 7, 9, 11]  # 11: 'a' again, though the first 'a' is broken
    assert str(error).startswith(f"{PATH}: 6 errors:\n  {PATH}:2: regex: expected yes/no")
    assert all(str(e) in str(error) for e in error.errors)
    assert isinstance(error, ConfigError)


def test_regex_is_compiled_only_in_regex_mode() -> None:
    text = '[Filter]\ntask_name = t\nexec_cmd = /bin/t\nrun_message_sender = "a(b"\n'
    config = parse(text)  # without -X the item is an exact string: no error
    spec = only_filter(config)
    assert spec.run_message_sender is not None and spec.run_message_sender.matches("a(b")
    assert any(
        "looks like a regular expression but regex mode is off" in w for w in config.warnings
    )
    assert "bad regular expression" in only_error(text, "-X")
    assert "bad regular expression" in only_error("regex = yes\n" + text)


# --- the command line over the file --------------------------------------------------------------


def test_explicit_options_win_over_the_file() -> None:
    text = "regex = no\nlog_level = 3\nuser = filer\nsocket = unix:/file.sock\n"
    settings = parse(text, "-X", "-l", "1").settings
    assert settings.regex is True  # -X given
    assert settings.log_level == 1  # -l given
    assert settings.user == "filer"  # -u not given: the file's value
    assert settings.socket == "unix:/file.sock"


def test_options_not_given_do_not_reset_the_file() -> None:
    settings = parse("allow_add_header = yes\nerror_threshold = 4\n", "-A").settings
    assert settings.allow_add_header and settings.allow_add_recipient
    assert settings.error_threshold == 4


def test_regex_mode_from_the_command_line_decides_compilation() -> None:
    text = 'regex = no\n[Address]\nmessage_recipient = "^user1@"\nadd_recipient = w\n'
    assert not only_rule(parse(text)).applies("", ["user1@x"])
    assert only_rule(parse(text, "-X")).applies("", ["user1@x"])


# --- warnings ----------------------------------------------------------------------------------


def test_worker_limits_warn_without_module_safe_use() -> None:
    text = (
        '[Filter]\ntask_name = m\nmodule_name = "/m.py"\n'
        "module_worker_max_rss = 1M\nmodule_worker_max_fds = 10\n"
    )
    assert parse(text).warnings == (
        f"{PATH}:4: module_worker_max_rss: has no effect without module_safe_use "
        "(worker processes)",
        f"{PATH}:5: module_worker_max_fds: has no effect without module_safe_use "
        "(worker processes)",
    )
    assert parse(text + "module_safe_use = yes\n").warnings == ()


def test_warnings_for_changes_without_permission() -> None:
    config = parse(
        """
        [Address]
        add_recipient = a
        message_forward_recipient = b
        add_header_name = X
        add_header_value = y
        change_header_name = Subject
        change_header_value = z
        remove_header_name = X-Old
        [Filter]
        task_name = t
        exec_cmd = "/bin/t %f %n %h"
        """
    )
    assert config.warnings == (
        f"{PATH}:3: add_recipient: has no effect without -A",
        f"{PATH}:4: message_forward_recipient: has no effect without -A and -R "
        "(the recipients stay unchanged)",
        f"{PATH}:5: add_header_name: has no effect without -H",
        f"{PATH}:7: change_header_name: has no effect without -G",
        f"{PATH}:9: remove_header_name: has no effect without -G",
        f"{PATH}:12: exec_cmd: %n (new body file) has no effect without -B",
        f"{PATH}:12: exec_cmd: %h (header file) has no effect without -H or -G",
    )
    assert (
        parse(
            "[Address]\nadd_recipient = a\n[Filter]\ntask_name = t\nexec_cmd = /bin/t %n %h\n",
            "-1B",
        ).warnings
        == ()
    )


@pytest.mark.parametrize(("switch", "missing"), [("-A", "-R"), ("-R", "-A")])
def test_a_forward_with_one_switch_warns_about_the_other(switch: str, missing: str) -> None:
    """A forward is all or nothing: with only -A or only -R it changes nothing, and says so."""
    config = parse("[Address]\nmessage_forward_recipient = b\n", switch)
    assert config.warnings == (
        f"{PATH}:2: message_forward_recipient: has no effect without {missing}: "
        "a forward needs both -A and -R (the recipients stay unchanged)",
    )
    assert parse("[Address]\nmessage_forward_recipient = b\n", "-AR").warnings == ()


def test_a_bare_domain_in_an_address_list_warns_and_at_domain_does_not() -> None:
    config = parse(
        """
        [Filter]
        task_name = t
        exec_cmd = /bin/t
        run_message_recipient = "@example.com example.org"
        skip_recipient = "john.smith@example.com @example.net"
        """
    )
    assert config.warnings == (
        f"{PATH}:5: run_message_recipient: 'example.org' has no '@', so it matches the local "
        "part example.org at any domain; write @example.org to match every address at that "
        "domain",
    )
    spec = only_filter(config)
    assert spec.run_message_recipient is not None
    assert spec.run_message_recipient.matches("u@example.com")


def test_address_rules_take_time_conditions() -> None:
    rule = only_rule(
        parse(
            """
            [Address]
            run_time = "* 8-17 * * mon-fri"
            skip_time = "0-29 12 * * *"
            skip_time = "* * 25 dec *"
            add_header_name = X-Office-Hours
            add_header_value = yes
            """,
            "-H",
        )
    )
    assert [e.text for e in rule.run_time] == ["* 8-17 * * mon-fri"]
    assert [e.text for e in rule.skip_time] == ["0-29 12 * * *", "* * 25 dec *"]
    monday = datetime(2026, 1, 5)
    assert rule.applies("a@x", ["b@x"], monday.replace(hour=9))
    assert not rule.applies("a@x", ["b@x"], monday.replace(hour=7))  # outside run_time
    assert not rule.applies("a@x", ["b@x"], monday.replace(hour=12, minute=10))  # skip_time
    assert rule.applies("a@x", ["b@x"], monday.replace(hour=12, minute=30))
    assert not rule.applies("a@x", ["b@x"], datetime(2025, 12, 25, 9))  # a Thursday, skipped
    assert not rule.applies("a@x", ["b@x"], datetime(2026, 1, 3, 9))  # Saturday


def test_a_bad_cron_expression_in_an_address_rule_names_its_key() -> None:
    error = only_error('[Address]\nrun_time = "61 * * * *"\nadd_recipient = x\n')
    assert error.startswith(f"{PATH}:2: run_time: bad cron expression '61 * * * *'")


# --- the file -----------------------------------------------------------------------------------


def test_load_config_records_the_file(tmp_path: Path) -> None:
    path = tmp_path / "m.conf"
    path.write_text("[Address]\nadd_recipient = a\n")
    config = load_config(str(path))
    info = os.stat(path)
    assert config.path == str(path)
    assert config.stamp is not None
    assert config.mtime_ns == info.st_mtime_ns
    assert (config.stamp.inode, config.stamp.size) == (info.st_ino, info.st_size)
    assert config.loaded_at > 0


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"m\.conf: cannot read: No such file"):
        load_config(str(tmp_path / "m.conf"))


def test_directory_is_not_a_config(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"cannot read|not a regular file"):
        load_config(str(tmp_path))


def test_binary_garbage_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "m.conf"
    path.write_bytes(b"regex = yes\n\xff\xfe\x00garbage\n")
    with pytest.raises(ConfigError) as caught:
        load_config(str(path))
    assert str(caught.value) == f"{path}:2: not UTF-8 text (binary or garbage?)"


def test_shared_lock_waits_for_a_writer(tmp_path: Path) -> None:
    path = tmp_path / "m.conf"
    path.write_text("[Address]\nadd_recipient = a\n")
    with open(path, "rb") as writer:
        fcntl.flock(writer.fileno(), fcntl.LOCK_EX)
        with pytest.raises(ConfigLocked, match=r"still locked by another process after 0\.2s"):
            load_config(str(path), parse_command_line(["-a"]), lock_timeout=0.2)
        assert load_config(str(path)).sections  # without -a no lock is taken
        fcntl.flock(writer.fileno(), fcntl.LOCK_UN)
        fcntl.flock(writer.fileno(), fcntl.LOCK_SH)  # another reader does not block us
        assert load_config(str(path), parse_command_line(["-a"])).sections


@given(st.text().filter(lambda text: "\n" not in text))
def test_quote_value_round_trips_any_text(value: str) -> None:
    assert parse_value(quote_value(value)) == value


def test_quote_value_keeps_regex_backslashes_readable() -> None:
    assert quote_value(r"test@home\.(ru|jp|us)") == r'"test@home\.(ru|jp|us)"'
    assert quote_value('say "hi"') == r'"say \"hi\""'
    assert quote_value("end\\") == '"end\\\\"'
