"""Argument templates: every variable, %%, errors, and values that must stay one argument."""

from __future__ import annotations

import pytest

from milter_agent.variables import (
    ArgTemplate,
    Variable,
    VariableError,
    expand,
    expand_all,
    literal,
    macros,
    normalize_macro_name,
    parse_template,
    required_files,
)

VALUES: dict[str, str | list[str]] = {
    "file": "/spool/msg.1",
    "sender": "alice@example.org",
    "reply_file": "/spool/msg.1.reply",
    "body_file": "/spool/msg.1.body",
    "header_file": "/spool/msg.1.headers",
    "recipient": "bob@example.net",
    "recipients": ["bob@example.net", "carol@example.net"],
    "client_addr": "192.0.2.7",
    "client_name": "mx.example.org",
    "helo": "mx.example.org",
    "queue_id": "4AbCdE",
    "subject": "Hello; rm -rf / $(reboot)",
    "auth_authen": "alice",
    "macro:j": "mail.example.com",
    "macro:{daemon_name}": "smtpd",
}


def one(word: str) -> list[str]:
    return expand(parse_template(word), VALUES)


@pytest.mark.parametrize(
    ("word", "expected"),
    [
        ("%f", "/spool/msg.1"),
        ("%s", "alice@example.org"),
        ("%r", "/spool/msg.1.reply"),
        ("%n", "/spool/msg.1.body"),
        ("%h", "/spool/msg.1.headers"),
        ("%{file}", "/spool/msg.1"),
        ("%{sender}", "alice@example.org"),
        ("%{reply_file}", "/spool/msg.1.reply"),
        ("%{body_file}", "/spool/msg.1.body"),
        ("%{header_file}", "/spool/msg.1.headers"),
        ("%{recipient}", "bob@example.net"),
        ("%{client_addr}", "192.0.2.7"),
        ("%{client_name}", "mx.example.org"),
        ("%{helo}", "mx.example.org"),
        ("%{queue_id}", "4AbCdE"),
        ("%{subject}", "Hello; rm -rf / $(reboot)"),
        ("%{auth_authen}", "alice"),
        ("%{macro:j}", "mail.example.com"),
        ("%{macro:{daemon_name}}", "smtpd"),
        ("%{macro:daemon_name}", "smtpd"),
    ],
)
def test_every_variable_expands_to_one_argument(word: str, expected: str) -> None:
    assert one(word) == [expected]


def test_percent_percent_is_a_literal_percent() -> None:
    assert one("%%f") == ["%f"]
    assert one("100%%") == ["100%"]
    assert one("%%%f") == ["%/spool/msg.1"]
    assert parse_template("%%f").is_literal


def test_variables_mix_with_literal_text() -> None:
    assert one("--file=%f") == ["--file=/spool/msg.1"]
    assert one("%s:%{queue_id}.log") == ["alice@example.org:4AbCdE.log"]
    assert one("%foo") == ["/spool/msg.1oo"]  # %f then the text "oo", as the seed's C did


def test_recipients_gives_one_argument_per_recipient() -> None:
    assert one("%{recipients}") == ["bob@example.net", "carol@example.net"]
    assert expand(parse_template("%{recipients}"), {"recipients": []}) == []


def test_recipients_must_be_a_whole_word() -> None:
    with pytest.raises(VariableError, match="whole word"):
        parse_template("--to=%{recipients}")


def test_shell_metacharacters_stay_inside_one_argument() -> None:
    values = dict(VALUES, subject="a b; c | d && `e` $(f) > g")
    argv = expand_all([literal("/bin/scan"), parse_template("%{subject}")], values)
    assert argv == ["/bin/scan", "a b; c | d && `e` $(f) > g"]


@pytest.mark.parametrize("word", ["%x", "%F", "%{nope}", "%{Sender}", "%{macro:}", "%{macro:a-b}"])
def test_unknown_variable_is_an_error(word: str) -> None:
    with pytest.raises(VariableError):
        parse_template(word)


def test_unknown_variable_message_lists_the_known_ones() -> None:
    with pytest.raises(VariableError, match=r"unknown variable %x .*%f.*%\{sender\}"):
        parse_template("%x")


def test_lone_percent_at_the_end_is_an_error() -> None:
    with pytest.raises(VariableError, match="lone %"):
        parse_template("50%")


def test_unterminated_brace_is_an_error() -> None:
    with pytest.raises(VariableError, match="unterminated"):
        parse_template("%{file")


def test_forbidden_variables_are_refused() -> None:
    with pytest.raises(VariableError, match="not allowed"):
        parse_template("%f", forbidden=frozenset({"file"}))


@pytest.mark.parametrize(
    ("name", "canonical"),
    [("j", "j"), ("{j}", "j"), ("_", "_"), ("daemon_name", "{daemon_name}"), ("{i}", "i")],
)
def test_macro_names_are_normalised_to_the_wire_form(name: str, canonical: str) -> None:
    assert normalize_macro_name(name) == canonical


@pytest.mark.parametrize("name", ["{daemon_name", "daemon_name}", "", "a b"])
def test_bad_macro_names(name: str) -> None:
    with pytest.raises(VariableError):
        normalize_macro_name(name)


def test_missing_macro_is_empty_but_missing_variable_is_a_bug() -> None:
    assert expand(parse_template("[%{macro:{auth_type}}]"), {}) == ["[]"]
    with pytest.raises(KeyError):
        expand(parse_template("%f"), {})


def test_single_valued_variable_refuses_a_list() -> None:
    with pytest.raises(TypeError):
        expand(parse_template("%s"), {"sender": ["a", "b"]})


def test_required_files_and_macros() -> None:
    argv = [parse_template(w) for w in ["/bin/x", "%f", "%r", "%{header_file}", "%{macro:j}"]]
    assert required_files(argv) == {"reply_file", "header_file"}
    assert required_files([parse_template("%f")]) == set()
    assert macros(argv) == frozenset({"j"})


@pytest.mark.parametrize(
    "word", ["%f", "a%sb", "%%f", "100%%", "%{recipients}", "%{macro:{if_addr}}", "plain", ""]
)
def test_source_parses_back_to_the_same_template(word: str) -> None:
    template = parse_template(word)
    assert parse_template(template.source()) == template


def test_short_forms_render_short() -> None:
    assert parse_template("%{file}").source() == "%f"
    assert str(parse_template("%{queue_id}")) == "%{queue_id}"
    assert Variable("macro:j").macro == "j"
    assert ArgTemplate(("a", Variable("sender"))).variables == (Variable("sender"),)
