"""Golden test: every example of the 2008 seed document parses, unchanged, and means what it says.

The examples are copied verbatim from the seed (shared/seed/000_92a3979c89bdb8f0.txt) into
support/seed.py, which the end-to-end tests share.
"""

from __future__ import annotations

from datetime import datetime

import pytest
from config_helpers import only_filter, only_rule, parse

from milter_agent.config.model import Config
from milter_agent.config.options import parse_command_line
from milter_agent.config.parser import parse_config_text
from milter_agent.config.render import render_config
from milter_agent.variables import expand_all
from support.seed import ADDRESS_EXAMPLES, FILTER_EXAMPLES

SEED_COMMAND_LINE = "-c /etc/mail/milter/milter-agent.conf -u mailnull -HIBFGARXavTM -m 5 -l 1"
SEED_ARGV = SEED_COMMAND_LINE.split()
NOW = datetime(2008, 1, 4, 19, 17)

REGEX_EXAMPLES = [
    'run_message_recipient = "test@home.jp"',
    'run_message_recipient = "test@home.jp test@home.us"',
    'run_message_recipient = "test@home\\.(ru|jp|us)"',
]

FILES = {
    "file": "/var/spool/milter-agent/msg.A1",
    "reply_file": "/var/spool/milter-agent/msg.A1.reply",
    "body_file": "/var/spool/milter-agent/msg.A1.body",
    "header_file": "/var/spool/milter-agent/msg.A1.hdr",
    "sender": "s@x",
}

WHOLE_SEED = "\n".join([*ADDRESS_EXAMPLES.values(), *FILTER_EXAMPLES.values()])


def seed(text: str) -> Config:
    return parse_config_text(
        text, "/etc/mail/milter/milter-agent.conf", parse_command_line(SEED_ARGV)
    )


@pytest.mark.parametrize("text", [*ADDRESS_EXAMPLES.values(), *FILTER_EXAMPLES.values()])
def test_each_example_parses_without_warnings_under_the_seed_command_line(text: str) -> None:
    config = seed(text)
    assert len(config.sections) == 1
    assert config.warnings == ()


def test_all_examples_in_one_file_keep_their_order() -> None:
    config = seed(WHOLE_SEED)
    assert [s.name for s in config.sections] == [
        "address-1",
        "address-2",
        "address-3",
        "address-4",
        "mail_archive_task",
        "test_html_mail_task",
        "virus_cure_kav",
        "virus_check_clamav",
        "virus_check",
        "module_sample_task",
        "test_rhta_mail_module_task",
    ]
    assert config.settings.user == "mailnull"
    assert config.settings.error_threshold == 5


# --- address examples ------------------------------------------------------------------------


def test_add_watcher_to_pair() -> None:
    rule = only_rule(seed(ADDRESS_EXAMPLES["add watcher to pair"]))
    assert rule.applies("<user1@domain1.com>", ["<user2@domain2.com>"])
    assert rule.applies("user1@DOMAIN1.com", ["other@x", "user2@domain2.com"])
    assert not rule.applies("user9@domain1.com", ["user2@domain2.com"])
    assert not rule.applies("user1@domain1.com", ["user9@domain2.com"])
    assert rule.add_recipient == ("user3",)
    assert rule.forward_recipients == ()


def test_redirection() -> None:
    rule = only_rule(seed(ADDRESS_EXAMPLES["redirection"]))
    recipients = ["<user1@a.example>", "user10@b.example", "xuser1@c.example", "User1@d.example"]
    assert rule.matching_recipients(recipients) == ("<user1@a.example>", "User1@d.example")
    assert rule.forward_recipients == ("user2", "user3", "user4@domain4.net")
    assert rule.message_sender is None and rule.applies("anyone@x", ["user1@z"])


def test_duplication() -> None:
    rule = only_rule(seed(ADDRESS_EXAMPLES["duplication of mail traffic"]))
    assert rule.applies("a@b", ["first@x", "user56@domain99.com"])
    assert not rule.applies("a@b", ["user56@domain99.co"])
    assert rule.add_recipient == ("watching_user",)


def test_forward_with_service_mark() -> None:
    rule = only_rule(seed(ADDRESS_EXAMPLES["forwarding with service mark"]))
    assert rule.matching_recipients(["user1@domain1.com", "x@y"]) == ("user1@domain1.com",)
    assert rule.forward_recipients == ("user2@domain2.org",)
    (header,) = rule.add_headers
    assert header.name == "X-Forward-Mail-From"
    assert header.render({}) == "user1@domain1.com"


# --- filter examples -------------------------------------------------------------------------


def argv_of(name: str) -> list[str]:
    return expand_all(only_filter(seed(FILTER_EXAMPLES[name])).argv, FILES)


def test_mail_archive() -> None:
    spec = only_filter(seed(FILTER_EXAMPLES["mail_archive"]))
    assert argv_of("mail_archive") == [
        "/usr/local/sbin/mail_archive.sh",
        "/var/spool/milter-agent/msg.A1",
        "/usr/local/tmp/mail_archive",
    ]
    assert spec.timeout == 60  # "by default the timeout is equal one minute"
    assert spec.applies_to("a@b", ["c@d"], "any", NOW)
    assert spec.verdict_for(1) == "continue"


def test_accept_only_text_messages() -> None:
    spec = only_filter(seed(FILTER_EXAMPLES["text_only"]))
    assert spec.timeout == 0
    assert spec.verdict_for(1) == "reject"
    assert spec.verdict_for(0) == "continue"
    assert spec.reject_message == "HTML mail or attachments not accepted."
    assert spec.reject_code == "550 5.7.1"
    assert spec.applies_to("user1", ["user2"], "", NOW)
    assert spec.applies_to("<user1@local.example>", ["user2@local.example"], "", NOW)
    assert not spec.applies_to("user3@local.example", ["user2@local.example"], "", NOW)
    assert not spec.applies_to("user1@local.example", ["user3@local.example"], "", NOW)
    assert argv_of("text_only") == [
        "/usr/local/sbin/test_html_mail.sh",
        "/var/spool/milter-agent/msg.A1",
    ]


def test_cure_infected_mail() -> None:
    spec = only_filter(seed(FILTER_EXAMPLES["cure"]))
    assert spec.single_instance == 1
    assert spec.required_files == {"body_file"}
    assert argv_of("cure")[1:] == [FILES["file"], FILES["body_file"]]


def test_clamav() -> None:
    spec = only_filter(seed(FILTER_EXAMPLES["clamav"]))
    assert spec.single_instance == 1
    assert spec.required_files == {"reply_file", "header_file"}
    assert argv_of("clamav") == [
        "/usr/local/sbin/clamavscanner.sh",
        FILES["file"],
        "/usr/local/share/clamav",
        "/usr/local/tmp/clamav_archive",
        FILES["reply_file"],
        FILES["header_file"],
    ]


def test_various_antiviruses_with_commented_lines() -> None:
    spec = only_filter(seed(FILTER_EXAMPLES["various"]))
    assert spec.reject_exit_codes == frozenset()  # commented out
    assert spec.skip_recipient is None and spec.skip_message_subject is None
    assert spec.single_instance == 1
    assert spec.required_files == {"reply_file", "body_file", "header_file"}
    assert argv_of("various")[1:3] == ["/usr/local/tmp/avir_archive", FILES["file"]]


def test_various_antiviruses_with_the_lines_uncommented() -> None:
    text = FILTER_EXAMPLES["various"].replace("#", "")
    spec = only_filter(seed(text))
    assert spec.verdict_for(1) == "reject"
    assert spec.applies_to("a@b", ["root", "user@x"], "hello", NOW)
    assert not spec.applies_to("a@b", ["root"], "hello", NOW)
    assert not spec.applies_to("a@b", ["user@x"], "ALERT! Virus Scanner Problem!", NOW)


@pytest.mark.parametrize(
    ("name", "module"),
    [
        ("module_sample", "/usr/local/libexec/module_sample.so"),
        ("module_rhta", "/usr/local/libexec/module_test_rhta_mail.so"),
    ],
)
def test_modules(name: str, module: str) -> None:
    spec = only_filter(seed(FILTER_EXAMPLES[name]))
    assert spec.is_module and spec.module_name == module
    assert not spec.module_safe_use
    assert argv_of(name) == [FILES["file"]]  # the line without the module's name


# --- regular expression examples -------------------------------------------------------------


def _recipient_filter(line: str, *argv: str) -> Config:
    return parse(f"[Filter]\ntask_name = t\nexec_cmd = /bin/t\n{line}\n", *argv)


def _runs_for(config: Config, recipient: str) -> bool:
    return only_filter(config).applies_to("s@x", [recipient], "", NOW)


@pytest.mark.parametrize("argv", [[], ["-X"]])
def test_simple_exact_match(argv: list[str]) -> None:
    config = _recipient_filter(REGEX_EXAMPLES[0], *argv)
    assert _runs_for(config, "test@home.jp")
    assert not _runs_for(config, "test@home.us")
    assert not _runs_for(config, "test@homexjp")


@pytest.mark.parametrize("argv", [[], ["-X"]])
def test_list_of_exact_matches(argv: list[str]) -> None:
    config = _recipient_filter(REGEX_EXAMPLES[1], *argv)
    assert _runs_for(config, "test@home.jp")
    assert _runs_for(config, "<test@home.us>")
    assert not _runs_for(config, "test@home.ru")


def test_regex_pattern_match_with_dash_x() -> None:
    config = _recipient_filter(REGEX_EXAMPLES[2], *SEED_ARGV)
    for address in ("test@home.ru", "test@home.jp", "test@home.us"):
        assert _runs_for(config, address)
    assert not _runs_for(config, "test@home.de")
    assert not _runs_for(config, "test@homeXru")


def test_regex_pattern_is_exact_only_without_dash_x() -> None:
    config = _recipient_filter(REGEX_EXAMPLES[2])
    assert not _runs_for(config, "test@home.ru")
    assert _runs_for(config, "test@home\\.(ru|jp|us)")
    assert config.warnings  # and the administrator is told


def test_the_whole_seed_renders_and_parses_back() -> None:
    config = seed(WHOLE_SEED)
    assert parse_config_text(render_config(config), "rendered") == config
