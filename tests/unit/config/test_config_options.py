"""The command line: every letter and long form, getopt-style combined letters, -1, explicitness."""

from __future__ import annotations

from pathlib import Path

import pytest

from milter_agent import __version__
from milter_agent.config.keys import SETTINGS
from milter_agent.config.model import Settings
from milter_agent.config.options import CommandLine, build_parser, parse_command_line
from milter_agent.errors import ConfigError

SWITCHES = {
    "A": "allow_add_recipient",
    "R": "allow_remove_recipient",
    "H": "allow_add_header",
    "G": "allow_change_header",
    "B": "allow_change_body",
    "a": "lock_config",
    "C": "close_fds",
    "E": "stop_on_error",
    "F": "watch_config",
    "T": "allow_kill_program",
    "M": "allow_kill_module",
    "X": "regex",
    "I": "log_tempfile",
    "Q": "last_recipient",
    "v": "verbose",
}

LONG_SWITCHES = {
    "--allow-add-recipient": "allow_add_recipient",
    "--allow-remove-recipient": "allow_remove_recipient",
    "--allow-add-header": "allow_add_header",
    "--allow-change-header": "allow_change_header",
    "--allow-change-body": "allow_change_body",
    "--lock-config": "lock_config",
    "--close-fds": "close_fds",
    "--stop-on-error": "stop_on_error",
    "--watch-config": "watch_config",
    "--allow-kill-program": "allow_kill_program",
    "--allow-kill-module": "allow_kill_module",
    "--regex": "regex",
    "--log-tempfile": "log_tempfile",
    "--last-recipient": "last_recipient",
    "--verbose": "verbose",
}

VALUED = [
    ("-p", "--socket", "inet:8890@127.0.0.1", "socket", "inet:8890@127.0.0.1"),
    ("-i", "--control-socket", "unix:/tmp/c", "control_socket", "unix:/tmp/c"),
    ("-t", "--io-timeout", "30", "io_timeout", 30.0),
    ("-u", "--user", "mailnull", "user", "mailnull"),
    ("-l", "--log-level", "2", "log_level", 2),
    ("-d", "--debug-mode", "1", "daemon_mode", 1),
    ("-m", "--error-threshold", "5", "error_threshold", 5),
    (None, "--spool-dir", "/var/tmp/x", "spool_dir", "/var/tmp/x"),
    (None, "--socket-mode", "0600", "socket_mode", 0o600),
    (None, "--log-target", "stderr", "log_target", "stderr"),
    (None, "--pid-file", "/run/m.pid", "pid_file", "/run/m.pid"),
    (None, "--metrics", "127.0.0.1:9464", "metrics", "127.0.0.1:9464"),
]


def test_nothing_given_means_defaults_and_nothing_explicit() -> None:
    line = parse_command_line([])
    assert line == CommandLine()
    assert line.config_path == "/etc/mail/milter-agent.conf"
    assert line.settings == Settings()
    assert line.explicit == frozenset()
    assert not line.check


@pytest.mark.parametrize(("letter", "field"), SWITCHES.items())
def test_every_switch_letter(letter: str, field: str) -> None:
    line = parse_command_line([f"-{letter}"])
    assert getattr(line.settings, field) is True
    assert line.explicit == {field}


@pytest.mark.parametrize(("flag", "field"), LONG_SWITCHES.items())
def test_every_long_switch(flag: str, field: str) -> None:
    line = parse_command_line([flag])
    assert getattr(line.settings, field) is True
    assert line.explicit == {field}


@pytest.mark.parametrize(("short", "long", "text", "field", "value"), VALUED)
def test_every_valued_option(
    short: str | None, long: str, text: str, field: str, value: object
) -> None:
    forms = [[long, text], [f"{long}={text}"]]
    if short:
        forms += [[short, text], [f"{short}{text}"]]
    for argv in forms:
        line = parse_command_line(argv)
        assert getattr(line.settings, field) == value, argv
        assert line.explicit == {field}, argv


def test_every_command_line_setting_is_tested() -> None:
    tested = set(SWITCHES.values()) | {field for *_, field, _ in VALUED}
    with_flags = {name for name, key in SETTINGS.items() if key.letter or key.long}
    assert tested == with_flags


def test_config_and_check() -> None:
    for argv in (["-c", "/x.conf"], ["--config", "/x.conf"], ["-c/x.conf"], ["--config=/x.conf"]):
        assert parse_command_line(argv).config_path == "/x.conf"
    assert parse_command_line(["-n"]).check
    assert parse_command_line(["--check"]).check
    assert parse_command_line(["-n"]).explicit == frozenset()


def test_foreground_is_debug_mode_one() -> None:
    line = parse_command_line(["--foreground"])
    assert line.settings.daemon_mode == 1 and line.settings.foreground
    assert line.explicit == {"daemon_mode"}


def test_the_seed_command_line() -> None:
    argv = [
        "-c",
        "/etc/mail/milter/milter-agent.conf",
        "-u",
        "mailnull",
        "-HIBFGARXavTM",
        "-m",
        "5",
        "-l",
        "1",
    ]
    line = parse_command_line(argv)
    settings = line.settings
    assert line.config_path == "/etc/mail/milter/milter-agent.conf"
    assert settings.user == "mailnull"
    assert settings.error_threshold == 5
    assert settings.log_level == 1
    on = {f for f in SWITCHES.values() if getattr(settings, f)}
    assert on == {
        "allow_add_header",  # H
        "log_tempfile",  # I
        "allow_change_body",  # B
        "watch_config",  # F
        "allow_change_header",  # G
        "allow_add_recipient",  # A
        "allow_remove_recipient",  # R
        "regex",  # X
        "lock_config",  # a
        "verbose",  # v
        "allow_kill_program",  # T
        "allow_kill_module",  # M
    }
    assert line.explicit == on | {"user", "error_threshold", "log_level"}


def test_combined_letters_may_end_with_a_valued_option() -> None:
    line = parse_command_line(["-XAm5", "-Hufoo"])
    assert line.settings.regex and line.settings.allow_add_recipient
    assert line.settings.error_threshold == 5
    assert line.settings.allow_add_header and line.settings.user == "foo"


def test_dash_one_is_all_of_ARHGITMX() -> None:
    for argv in (["-1"], ["--all"]):
        line = parse_command_line(argv)
        expected = {SWITCHES[letter] for letter in "ARHGITMX"}
        assert line.explicit == expected
        assert all(getattr(line.settings, field) for field in expected)
        assert not line.settings.allow_change_body  # -B is not part of -1
        assert not line.settings.last_recipient


def test_dash_one_combines_with_other_letters() -> None:
    line = parse_command_line(["-1BQ"])
    assert line.settings.allow_change_body and line.settings.last_recipient
    assert line.settings.regex and line.settings.allow_kill_module


def test_apply_overrides_only_explicit_options() -> None:
    from_file = Settings(user="filer", regex=False, log_level=4, error_threshold=9)
    line = parse_command_line(["-X", "-l", "0"])
    applied = line.apply(from_file)
    assert applied.regex is True
    assert applied.log_level == 0  # explicitly given, even though it is the default
    assert applied.user == "filer"
    assert applied.error_threshold == 9
    assert line.given("regex") and not line.given("user")


@pytest.mark.parametrize(
    ("argv", "reason"),
    [
        (["-Z"], "unrecognized arguments: -Z"),
        (["--bogus"], "unrecognized arguments: --bogus"),
        (["stray"], "unrecognized arguments: stray"),
        (["-m"], "expected one argument"),
        (["-m", "five"], "expected a whole number"),
        (["-m", "-1"], "expected one argument"),  # -1 is an option, as with getopt+"1"
        (["-t", "-5"], "expected one argument"),
        (["-l", "x"], "expected a whole number"),
        (["-p", "tcp:25"], "unknown socket type"),
        (["--socket-mode", "999"], "octal"),
        (["--log-target", "file"], "expected one of syslog, stderr, stdout"),
        (["--pid-file", "rel.pid"], "absolute path"),
        (["--conf", "/x"], "unrecognized arguments"),  # no abbreviations
    ],
)
def test_bad_usage_raises_config_error(argv: list[str], reason: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_command_line(argv)
    assert reason in str(caught.value)
    assert "see --help" in str(caught.value)


def test_help_and_version(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["-h"], ["--help"]):
        with pytest.raises(SystemExit) as caught:
            parse_command_line(argv)
        assert caught.value.code == 0
        out = capsys.readouterr().out
        assert "-HIBFGARXavTM" not in out and "--allow-add-recipient" in out
        assert "%{recipient}" in out  # argparse's %-formatting did not eat it
        assert "'milter-agent test --help'" in out  # the subcommand is not an option: said here
    for argv in (["-V"], ["--version"]):
        with pytest.raises(SystemExit):
            parse_command_line(argv)
        assert __version__ in capsys.readouterr().out


def test_help_lists_every_letter() -> None:
    text = build_parser().format_help()
    for letter in "hVvcpitul dmARHGBaCEFTMXI1Qn".replace(" ", ""):
        assert f"-{letter}" in text, letter


def test_a_relative_config_path_is_made_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """-d 0 changes to / after start: a reload must still find a file given as -c x.conf."""
    monkeypatch.chdir(tmp_path)
    assert parse_command_line(["-c", "x.conf"]).config_path == str(tmp_path / "x.conf")
    assert parse_command_line(["-c", "./etc/../y.conf"]).config_path == str(tmp_path / "y.conf")


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        ([], "/var/spool/milter-agent/milter-agent.pid"),
        (["--spool-dir", "/srv/ma/"], "/srv/ma/milter-agent.pid"),
        (["--pid-file", "/run/ma.pid"], "/run/ma.pid"),
        (["-d", "1"], None),  # in the foreground only when asked for
        (["-d", "1", "--pid-file", "/run/ma.pid"], "/run/ma.pid"),
    ],
)
def test_the_pid_file_defaults_to_the_spool_directory_with_d_0(
    argv: list[str], expected: str | None
) -> None:
    assert parse_command_line(argv).settings.pid_path == expected
