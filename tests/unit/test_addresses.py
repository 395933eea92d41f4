"""Addresses the daemon gives to the MTA (add_recipient, forwarding, module results), and how
list values are split into items."""

from __future__ import annotations

import pytest

from milter_agent.conditions import PatternError, check_address, list_items


@pytest.mark.parametrize(
    ("address", "stored"),
    [
        ("user3", "user3"),
        ("<user3@example.com>", "user3@example.com"),
        ("a.b+c@d.e", "a.b+c@d.e"),
        ("a@[192.0.2.1]", "a@[192.0.2.1]"),
        ("a@[IPv6:2001:db8::1]", "a@[IPv6:2001:db8::1]"),
        ('"a,b(c)"@example.com', '"a,b(c)"@example.com'),
        ('"a\\"b"@example.com', '"a\\"b"@example.com'),
        ("jöran@exämple.de", "jöran@exämple.de"),  # SMTPUTF8
        ("o'brien@example.ie", "o'brien@example.ie"),
    ],
)
def test_valid_addresses(address: str, stored: str) -> None:
    assert check_address(address) == stored


@pytest.mark.parametrize(
    ("address", "why"),
    [
        ("a@[1.2.3.4", "address literal"),
        ("a@1.2.3.4]", "']' in the domain"),
        ('"john', "unbalanced quotes"),
        ('"john"doe"@x', "unbalanced quotes"),
        ('"a\\"@x', "unbalanced quotes"),
        ("a(b@x", "'(' in the local part must be quoted"),
        ("a(b)@x", "'(' in the local part"),
        ("x,y@x", "',' in the local part"),
        ("a@b@c", "'@' in the local part"),
        ("a@x;y", "';' in the domain"),
        ("a@x..y", "empty label"),
        ("a@.x", "empty label"),
        ("a\x85b@x", "U+0085"),  # NEL
        ("a\x9bb@x", "U+009B"),  # CSI
        ("a\xa0b@x", "U+00A0"),  # NBSP
        ("a\u2028b@x", "U+2028"),
        ("a\u200bb@x", "U+200B"),  # zero-width space
        ("a\u202eb@x", "U+202E"),  # right-to-left override
        ("a\udcffb@x", "U+DCFF"),  # a byte that was not UTF-8
        ("a b@x", "U+0020"),
    ],
)
def test_invalid_addresses_say_why(address: str, why: str) -> None:
    with pytest.raises(PatternError, match=r"not an address|space or control") as caught:
        check_address(address)
    assert why in str(caught.value)


def test_list_items_split_at_ascii_blanks_only() -> None:
    assert list_items(" a@x \t b@y  c ") == ["a@x", "b@y", "c"]
    assert list_items("a\x85b@x c\xa0d@x") == ["a\x85b@x", "c\xa0d@x"]
    assert list_items(" \t ") == []


def test_an_item_with_a_unicode_space_is_refused_whole() -> None:
    (item,) = list_items("a\x85b@x")
    with pytest.raises(PatternError, match="U\\+0085"):
        check_address(item)
