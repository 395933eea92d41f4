"""Lists (exact first, then POSIX ERE search), the regex dialect, addresses, and cron times."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cronsim import CronSim
from hypothesis import given
from hypothesis import strategies as st

from milter_agent import conditions
from milter_agent.conditions import (
    AddressList,
    CronExpression,
    PatternError,
    SubjectList,
    check_address,
    compile_posix_ere,
    has_regex_metachars,
    normalize_address,
    translate_posix_ere,
)

# --- exact matching ---------------------------------------------------------------------------


def test_exact_match_strips_angle_brackets_and_ignores_domain_case() -> None:
    items = AddressList(("test@home.jp",))
    assert items.matches("test@home.jp")
    assert items.matches("<test@HOME.JP>")
    assert items.matches("  <test@Home.Jp> ")
    assert not items.matches("Test@home.jp")  # the local part is exact
    assert not items.matches("xtest@home.jp")
    assert not items.matches("test@home.jpx")


def test_dot_alone_does_not_make_an_item_a_regex() -> None:
    items = AddressList(("test@home.jp",), regex=True)
    assert not has_regex_metachars("test@home.jp")
    assert not items.matches("test@homexjp")
    assert not items.matches("mytest@home.jp.evil")


def test_a_bare_local_part_matches_at_any_domain() -> None:
    items = AddressList(("user1",))
    assert items.matches("user1")
    assert items.matches("<user1@any.example>")
    assert not items.matches("user10@any.example")
    assert not items.matches("User1@any.example")


def test_an_at_domain_item_matches_every_address_at_that_domain() -> None:
    """The postmaster's "@example.com": anyone there, the domain case-insensitive."""
    items = AddressList(("@example.com", "user@example.org"))
    assert items.matches("u@example.com")
    assert items.matches("<Some.One@EXAMPLE.com>")
    assert not items.matches("u@sub.example.com")  # subdomains are other domains
    assert not items.matches("u@example.com.evil.org")
    assert not items.matches("example.com")
    assert not items.matches("")  # the null sender
    assert not items.matches("other@example.org")  # an item with a local part stays exact
    assert items.matches("user@Example.ORG")


def test_an_at_domain_item_in_regex_mode() -> None:
    """-X: the item has no metacharacter, so it is still the domain; a regex item that starts
    with "@" is searched, as the seed does."""
    items = AddressList(("@example.com", r"@example\.(net|org)$"), regex=True)
    assert items.matches("u@example.com")
    assert not items.matches("u@examplexcom")
    assert items.matches("u@EXAMPLE.NET")
    assert items.matches("u@example.org")
    assert not items.matches("u@example.org.evil")


def test_the_brief_example_and_a_lone_at() -> None:
    items = AddressList(("@example.com", "example.org"))
    assert items.matches("u@example.com")
    assert not items.matches("u@example.org")  # a bare item is a local part (see warnings)
    assert items.matches("example.org@anywhere.example")
    assert items.domain_like_items == ("example.org",)
    with pytest.raises(PatternError, match="'@' alone is not an address"):
        AddressList(("a@b.example", "@"))


def test_list_of_exact_items() -> None:
    items = AddressList(("test@home.jp", "test@home.us"))
    assert items.matches("test@home.us")
    assert not items.matches("test@home.ru")
    assert items.matches_any(["x@y.z", "test@home.jp"])
    assert not items.matches_any([])


def test_without_regex_mode_regex_items_are_exact_only() -> None:
    items = AddressList(("^user1@",))
    assert not items.matches("user1@example.com")
    assert items.matches("^user1@")
    assert items.regex_like_items == ("^user1@",)


def test_without_regex_mode_bad_regexes_are_not_compiled() -> None:
    assert AddressList(("a(b",)).matches("a(b")


def test_empty_lists_and_items_are_refused() -> None:
    with pytest.raises(PatternError, match="empty list"):
        AddressList(())
    with pytest.raises(PatternError, match="empty list item"):
        SubjectList(("",))


def test_null_sender_matches_only_by_regex() -> None:
    assert not AddressList(("user@x",), regex=True).matches("<>")
    assert AddressList(("^$",), regex=True).matches("<>")


def test_equal_lists_compare_by_items_and_mode() -> None:
    assert AddressList(("a@b",)) == AddressList(("a@b",))
    assert AddressList(("a@b",)) != AddressList(("a@b",), regex=True)
    assert hash(AddressList(("a@b",))) == hash(AddressList(("a@b",)))


# --- regex matching ---------------------------------------------------------------------------


def test_seed_regex_example() -> None:
    items = AddressList((r"test@home\.(ru|jp|us)",), regex=True)
    for address in ("test@home.ru", "test@home.jp", "<test@home.us>", "xtest@home.jp"):
        assert items.matches(address), address  # search, not full match
    assert not items.matches("test@homeXjp")
    assert not items.matches("test@home.de")


def test_regex_is_a_search_and_anchors_work() -> None:
    items = AddressList(("^user1@",), regex=True)
    assert items.matches("user1@domain.com")
    assert items.matches("<user1@domain.com>")
    assert not items.matches("xuser1@domain.com")


def test_regex_search_is_case_insensitive() -> None:
    assert AddressList(("^admin@",), regex=True).matches("ADMIN@example.com")
    assert SubjectList(("viru(s|ses)",), regex=True).matches("VIRUS FOUND")


@pytest.mark.parametrize(
    ("pattern", "text", "expected"),
    [
        ("^[[:alpha:]]+@", "abc@x", True),
        ("^[[:alpha:]]+@", "ab1@x", False),
        ("^[[:digit:]]{3}$", "123", True),
        ("^[[:digit:]]{3}$", "1234", False),
        ("[[:space:]]", "a b", True),
        ("[[:space:]]", "ab", False),
        ("^[[:alnum:]_.-]+@", "a.b-c_d@x", True),
        ("^[[:upper:]]", "a", True),  # case-insensitive search: upper matches lower too
        ("[[:punct:]]", "a!", True),
        ("[[:xdigit:]]+$", "beef", True),
        ("[^[:digit:]]", "123", False),
        ("[]a]", "]", True),  # a leading ] is a member
        ("[^]a]", "]a", False),
        ("a{2,3}", "caab", True),
        ("(foo|bar)baz", "barbaz", True),
        ("colou?r", "color", True),
        ("[[:<:]]bar", "foo bar", True),
        ("[[:<:]]bar", "foobar", False),
        ("foo[[:>:]]", "foo bar", True),
        ("foo[[:>:]]", "foobar", False),
        (r"\<bar", "foo bar", True),
        (r"bar\>", "foo barn", False),
    ],
)
def test_posix_ere_features(pattern: str, text: str, expected: bool) -> None:
    assert SubjectList((pattern,), regex=True).matches(text) is expected


def test_extensions_beyond_posix_are_accepted() -> None:
    """Documented differences: Perl-style escapes work, and a backslash in brackets escapes."""
    assert compile_posix_ere(r"^\d+$").search("123") is not None  # POSIX: \d is undefined
    assert compile_posix_ere(r"[\d]").search("d") is None  # POSIX: "\" or "d"
    assert compile_posix_ere(r"[\d]").search("5") is not None


@pytest.mark.parametrize("pattern", ["a(b", "*a", "a**", "[[:nope:]]", "x{2,1}"])
def test_bad_regexes_are_errors(pattern: str) -> None:
    with pytest.raises(PatternError, match="bad regular expression"):
        compile_posix_ere(pattern)


@pytest.mark.parametrize("pattern", ["[[.hyphen.]]", "[[=a=]]", "x[a[.-.]]"])
def test_collating_elements_and_equivalence_classes_are_refused(pattern: str) -> None:
    with pytest.raises(PatternError, match="not supported"):
        translate_posix_ere(pattern)


def test_bad_regex_in_a_list_names_every_bad_item() -> None:
    with pytest.raises(PatternError) as caught:
        AddressList(("ok@x", "a(b", "c[d"), regex=True)
    assert "'a(b'" in str(caught.value)
    assert "'c[d'" in str(caught.value)


def test_translation_leaves_ordinary_patterns_alone() -> None:
    assert translate_posix_ere(r"test@home\.(ru|jp)") == r"test@home\.(ru|jp)"
    assert translate_posix_ere("[[:alpha:]]x") == "[[:alpha:]]x"


# --- subjects ---------------------------------------------------------------------------------


def test_subject_items_are_whole_strings() -> None:
    items = SubjectList(("ALERT! Virus Scanner Problem!",))
    assert items.matches("ALERT! Virus Scanner Problem!")
    assert items.matches(" ALERT! Virus Scanner Problem! ")
    assert not items.matches("ALERT!")
    assert not items.matches("alert! virus scanner problem!")  # exact is case-sensitive


def test_subject_exact_then_regex() -> None:
    items = SubjectList(("[SPAM] (ok)", "^\\[SPAM\\]"), regex=True)
    assert items.matches("[SPAM] (ok)")
    assert items.matches("[spam] anything")
    assert not items.matches("re: [SPAM]")


# --- addresses given to the MTA ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "stored"),
    [("user3", "user3"), ("<user3@example.com>", "user3@example.com"), ("a.b+c@d.e", "a.b+c@d.e")],
)
def test_valid_addresses(address: str, stored: str) -> None:
    assert check_address(address) == stored


@pytest.mark.parametrize(
    "address",
    ["", "a b", "a\tb", "a\x00b", "<a@b", "a@b>", "a<b>@c", "<>", "@b", "a@", "a" * 321],
)
def test_invalid_addresses(address: str) -> None:
    with pytest.raises(PatternError):
        check_address(address)


def test_normalize_address() -> None:
    assert normalize_address(" <Bob@Example.COM> ") == "Bob@example.com"
    assert normalize_address("<>") == ""
    assert normalize_address("bob") == "bob"


# --- cron -------------------------------------------------------------------------------------

# 2024-03-04 is a Monday.
MONDAY_0900 = datetime(2024, 3, 4, 9, 0)


def test_cronsim_api_we_use() -> None:
    """CronExpression.matches reads CronSim's parsed fields (minutes, hours, months) and calls
    match_day, which are not promised as public: this fails first if an update changes them
    (pyproject pins cronsim below 3 for the same reason)."""
    sim = CronSim("*/15 8-9 1,15 jan,jun mon", datetime(2000, 1, 1))
    assert sim.minutes == {0, 15, 30, 45}
    assert sim.hours == {8, 9}
    assert sim.months == {1, 6}
    assert sim.match_day(datetime(2026, 1, 15).date())  # the 15th (either day field will do)
    assert sim.match_day(datetime(2026, 1, 5).date())  # a Monday
    assert not sim.match_day(datetime(2026, 1, 6).date())
    both = CronSim("0 0 * * *", datetime(2000, 1, 1))
    assert both.match_day(datetime(2026, 2, 28).date())


@pytest.mark.parametrize(
    ("expression", "when", "expected"),
    [
        ("* * * * *", MONDAY_0900, True),
        ("*/5 8-18 * * mon-fri", MONDAY_0900, True),
        ("*/5 8-18 * * mon-fri", MONDAY_0900.replace(minute=3), False),
        ("*/5 8-18 * * mon-fri", MONDAY_0900.replace(hour=19), False),
        ("*/5 8-18 * * mon-fri", MONDAY_0900 + timedelta(days=5), False),  # Saturday
        ("0 9 * * 1", MONDAY_0900, True),
        ("0 9 * * 1", MONDAY_0900.replace(second=59, microsecond=5), True),  # minute resolution
        ("0,30 9 * * *", MONDAY_0900.replace(minute=30), True),
        ("0 9 4 mar *", MONDAY_0900, True),
        ("0 9 4 APR *", MONDAY_0900, False),
        ("0 9 * * sun,sat", MONDAY_0900, False),
        ("0 9 * * 0", MONDAY_0900 - timedelta(days=1), True),  # Sunday as 0
        ("0 9 * * 7", MONDAY_0900 - timedelta(days=1), True),  # and as 7
        # both day fields restricted: either matches (Vixie cron)
        ("0 9 1 * mon", MONDAY_0900, True),
        ("0 9 4 * fri", MONDAY_0900, True),
        ("0 9 5 * fri", MONDAY_0900, False),
        ("0 9 * * mon#1", MONDAY_0900, True),
        ("0 9 * * mon#2", MONDAY_0900, False),
    ],
)
def test_cron_matches(expression: str, when: datetime, expected: bool) -> None:
    assert CronExpression(expression).matches(when) is expected


def test_cron_converts_aware_times_to_local_time() -> None:
    local = MONDAY_0900.astimezone()  # the same instant, aware, in the local zone
    as_utc = local.astimezone(UTC)
    assert CronExpression("0 9 * * mon").matches(as_utc)


@pytest.fixture
def local_zone() -> Iterator[Callable[[str], None]]:
    """Set the process's local time zone (TZ + tzset) for one test, and restore it after."""
    before = os.environ.get("TZ")

    def use(zone: str) -> None:
        if not Path("/usr/share/zoneinfo", zone).exists():
            pytest.fail(f"time zone data for {zone} is needed (Debian: tzdata)")
        os.environ["TZ"] = zone
        time.tzset()

    yield use
    if before is None:
        os.environ.pop("TZ", None)
    else:
        os.environ["TZ"] = before
    time.tzset()


@pytest.mark.parametrize(
    ("zone", "instant", "local_expression", "utc_expression"),
    [
        # 00:00 UTC on a Monday is 09:00 in Tokyo (UTC+9, no summer time)
        ("Asia/Tokyo", datetime(2026, 1, 5, 0, 0, tzinfo=UTC), "0 9 * * mon", "0 0 * * mon"),
        # 23:30 UTC on a Sunday is already Monday 08:30 in Tokyo: the day changes too
        ("Asia/Tokyo", datetime(2026, 1, 4, 23, 30, tzinfo=UTC), "30 8 * * mon", "30 23 * * sun"),
        # New York in summer time (UTC-4) and in winter (UTC-5)
        ("America/New_York", datetime(2026, 7, 6, 13, 0, tzinfo=UTC), "0 9 * * mon", "0 13 * * *"),
        ("America/New_York", datetime(2026, 1, 5, 14, 0, tzinfo=UTC), "0 9 * * mon", "0 14 * * *"),
    ],
)
def test_cron_is_evaluated_in_the_local_time_zone(
    local_zone: Callable[[str], None],
    zone: str,
    instant: datetime,
    local_expression: str,
    utc_expression: str,
) -> None:
    local_zone(zone)
    assert CronExpression(local_expression).matches(instant)
    assert not CronExpression(utc_expression).matches(instant)
    # the engine's clock (datetime.now) gives naive local time: the same wall clock reading
    naive_local = datetime.fromtimestamp(instant.timestamp())
    assert CronExpression(local_expression).matches(naive_local)
    assert not CronExpression(utc_expression).matches(naive_local)


@pytest.mark.parametrize(
    "expression",
    ["* * * *", "* * * * * *", "61 * * * *", "* 25 * * *", "* * * * funday", "5-1 * * * *", "x"],
)
def test_bad_cron_expressions(expression: str) -> None:
    with pytest.raises(PatternError):
        CronExpression(expression)


def test_cron_text_is_normalised_for_equality() -> None:
    assert CronExpression("*/5   8-18 * * mon-fri") == CronExpression("*/5 8-18 * * mon-fri")


EXPRESSIONS = ["*/5 8-18 * * mon-fri", "0 0 1 * *", "30 2 * * 0", "15 */3 1-10 1,6 *"]


@given(
    st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2040, 1, 1)),
    st.sampled_from(EXPRESSIONS),
)
def test_cron_agrees_with_cronsim_iteration(when: datetime, expression: str) -> None:
    """Our direct field test gives the same answer as cronsim's own next-time search."""
    minute = when.replace(second=0, microsecond=0)
    expected = next(CronSim(expression, minute - timedelta(seconds=1))) == minute
    assert CronExpression(expression).matches(when) is expected


def test_a_runaway_regex_times_out_instead_of_stalling(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(conditions, "REGEX_TIMEOUT", 0.05)
    items = SubjectList(("(x+x+)+y",), regex=True)
    with pytest.raises(TimeoutError):
        items.matches("x" * 5000)


_CRON_TOKENS = st.sampled_from(
    [
        "*",
        "*/5",
        "1-5",
        "0",
        "59",
        "60",
        "L",
        "5L",
        "mon#2",
        "#",
        "/",
        "-",
        "1,2",
        "mon-fri",
        "jan",
        "W",
        "LW",
        "?",
        "*/0",
        "3-1",
        "7",
        "8",
        "32",
        "0-7",
        "1/2",
        "a",
        ",",
        ",1",
    ]
)
_CRON_FIELDS = st.lists(_CRON_TOKENS, min_size=1, max_size=3).map("".join)


@given(st.lists(_CRON_FIELDS, min_size=5, max_size=5).map(" ".join))
def test_any_cron_text_is_accepted_or_a_pattern_error(expression: str) -> None:
    """Whatever an administrator writes, the parser gets a PatternError, never a crash."""
    try:
        parsed = CronExpression(expression)
    except PatternError:
        return
    assert parsed.matches(datetime(2024, 2, 29, 12, 0)) in {True, False}
