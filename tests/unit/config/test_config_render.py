"""--check output: the effective configuration in the file's syntax, parsing back to the same."""

from __future__ import annotations

import io
from pathlib import Path

from config_helpers import parse
from hypothesis import given
from hypothesis import strategies as st

from milter_agent.config.model import Config, FilterSpec, Settings
from milter_agent.config.options import parse_command_line
from milter_agent.config.parser import parse_config_text
from milter_agent.config.render import check_config, render_config, render_settings
from milter_agent.variables import literal

RICH = r"""
socket = "inet:8890@127.0.0.1"
control_socket = unix:/run/ma/cmd
io_timeout = 2.5
user = mailnull
log_level = 2
daemon_mode = 1
error_threshold = 3
allow_add_recipient = yes
allow_remove_recipient = yes
allow_add_header = yes
allow_change_header = yes
allow_change_body = yes
lock_config = yes
close_fds = yes
stop_on_error = yes
watch_config = yes
allow_kill_program = yes
allow_kill_module = yes
log_tempfile = yes
last_recipient = yes
verbose = yes
spool_dir = /var/tmp/ma
socket_mode = 0640
default_action = accept
log_target = stderr
pid_file = /run/ma.pid
kill_grace = 0.5
progress_interval = 7
shutdown_grace = 0.5
max_header_size = 262144
notice_cmd = "/usr/bin/logger -t 'milter agent' --id=%x"
notice_idle = 3600
admin_group = wheel
metrics = "[::1]:9100"

[Filter]
task_name = scan
exec_cmd = "/bin/s -n='a b' \"q\\\"uote\" 100%% %f %{subject} %{recipients} x%{macro:j}y ''"
task_timeout = 12.5
reject_exit_codes = "1 2 10-12"
tempfail_exit_codes = 75
accept_exit_codes = 64
discard_exit_codes = 99
reject_message = "Virus \"found\" \\ here"
tempfail_message = "Later, 100% sure"
reject_code = "554 5.7.0"
tempfail_code = "421 4.3.2"
run_message_sender = "a@x <b@x> ^c[0-9]+@"
run_message_recipient = "user2"
skip_recipient = "root postmaster"
skip_message_sender = "^$"
run_message_subject = "Hello world"
run_message_subject = "^\[urgent\] # not a comment"
skip_message_subject = "ALERT! Virus Scanner Problem!"
run_time = "*/5 8-18 * * mon-fri"
run_time = "0 9 * * mon#1"
skip_time = "0 12 * * *"
run_single_instance = 2
error_threshold = 0
stdin = message
mode = monitor
max_message_size = 10M
error_cooldown = 30

[Address]
message_sender = "user1@domain1.com"
add_recipient = "user3 <w@x>"
add_header_name = "X-Mark"
add_header_value = "from %s at %{macro:{daemon_name}}, 100%% \"sure\""

[Filter]
task_name = mod
module_name = "/usr/lib/mod.py"
module_safe_use = yes
module_worker_max_messages = 0
module_worker_max_rss = 512M
module_worker_max_fds = 1000

[Address]
task_name = mark
message_recipient = "test@home\.(ru|jp|us)"
message_forward_recipient = "a b"
change_header_name = Subject
change_header_value = "[x] %{subject}"
remove_header_name = "X-Spam Received-SPF"
run_time = "* 8-17 * * mon-fri"
skip_time = "0-29 12 * * *"
skip_time = "* * 25 dec *"
"""


def test_rich_config_round_trips() -> None:
    config = parse(RICH, "-X")
    text = render_config(config)
    again = parse_config_text(text, "rendered")
    assert again == config
    assert again.settings == config.settings
    assert again.sections == config.sections
    assert render_config(again) == text.replace("/etc/mail/test.conf", "rendered")


def test_round_trip_keeps_command_line_settings() -> None:
    config = parse("[Address]\nadd_recipient = a\n", "-1", "-u", "nobody", "-p", "inet:1@h")
    assert parse_config_text(render_config(config), "rendered") == config


def test_render_shows_only_what_differs_from_the_defaults() -> None:
    config = parse('[Filter]\ntask_name = t\nexec_cmd = "/bin/t %f"\n')
    assert render_config(config) == (
        "# effective configuration read from /etc/mail/test.conf\n"
        "\n"
        "[Filter]\n"
        'task_name = "t"\n'
        'exec_cmd = "/bin/t %f"\n'
    )


def test_render_quotes_every_value() -> None:
    text = render_config(parse(RICH, "-X"))
    for line in text.splitlines():
        if " = " in line:
            assert line.split(" = ", 1)[1].startswith('"'), line
    assert 'reject_message = "Virus \\"found\\" \\ here"' in text
    assert 'mode = "monitor"' in text


def test_render_all_settings() -> None:
    lines = render_settings(Settings(), all_settings=True)
    assert 'socket = "unix:/var/spool/milter-agent/sock"' in lines
    assert 'regex = "no"' in lines
    assert 'socket_mode = "0660"' in lines
    assert "# pid_file is unset" in lines


def test_automatic_address_names_are_not_written() -> None:
    text = render_config(
        parse(
            "[Address]\nadd_recipient = a\n[Address]\ntask_name = address-1x\nadd_recipient = b\n"
        )
    )
    assert 'task_name = "address-1"' not in text
    assert 'task_name = "address-1x"' in text


def test_check_config_valid(tmp_path: Path) -> None:
    path = tmp_path / "m.conf"
    path.write_text('[Address]\nadd_recipient = "user3"\n')
    out, err = io.StringIO(), io.StringIO()
    code = check_config(parse_command_line(["-n", "-c", str(path), "-A"]), out, err)
    assert code == 0
    assert out.getvalue() == (
        f"# effective configuration read from {path}\n"
        'allow_add_recipient = "yes"\n'
        "\n"
        "[Address]\n"
        'add_recipient = "user3"\n'
    )
    assert err.getvalue() == ""


def test_check_config_prints_warnings(tmp_path: Path) -> None:
    path = tmp_path / "m.conf"
    path.write_text('[Address]\nadd_recipient = "user3"\n')
    out, err = io.StringIO(), io.StringIO()
    assert check_config(parse_command_line(["-c", str(path)]), out, err) == 0
    assert err.getvalue() == f"warning: {path}:2: add_recipient: has no effect without -A\n"


def test_check_config_invalid(tmp_path: Path) -> None:
    path = tmp_path / "m.conf"
    path.write_text("[Filter]\ntask_name = t\nexec_cmd = /bin/t %q\nbogus = 1\n")
    out, err = io.StringIO(), io.StringIO()
    assert check_config(parse_command_line(["-c", str(path)]), out, err) == 1
    assert out.getvalue() == ""
    assert f"{path}:3: exec_cmd: unknown variable %q" in err.getvalue()
    assert f"{path}:4: bogus: unknown key in [Filter]" in err.getvalue()


def test_check_config_missing_file(tmp_path: Path) -> None:
    out, err = io.StringIO(), io.StringIO()
    assert check_config(parse_command_line(["-c", str(tmp_path / "none")]), out, err) == 1
    assert "cannot read" in err.getvalue()


# Printable text plus blanks: what a config line may hold (other control characters are refused).
WORDS = st.lists(
    st.text(st.characters(blacklist_categories=("Cc", "Cs"), whitelist_characters=" \t")),
    min_size=1,
    max_size=6,
)


@given(WORDS)
def test_any_literal_argv_round_trips(words: list[str]) -> None:
    """Whatever words a filter's command line holds, rendering and parsing keeps them."""
    words[0] = "/bin/x" + words[0].strip()  # the program: non-empty, as the parser requires
    spec = FilterSpec(name="t", argv=tuple(literal(word) for word in words))
    config = Config(sections=(spec,))
    assert parse_config_text(render_config(config), "rendered").sections == (spec,)
