"""Parsing what volunteers paste: page URLs, invite links, barnraise:// links."""

from __future__ import annotations

import pytest

from app.contributor.invites import InviteError, JoinTarget, parse_join_target


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("https://barn.example/p/digits", JoinTarget("https://barn.example", "digits")),
        ("  https://barn.example/p/digits/  ", JoinTarget("https://barn.example", "digits")),
        ("http://127.0.0.1:8080/p/digits", JoinTarget("http://127.0.0.1:8080", "digits")),
        (
            "https://barn.example/p/digits?invite=abc-123",
            JoinTarget("https://barn.example", "digits", "abc-123"),
        ),
        ("https://barn.example/fl/p/cells-2", JoinTarget("https://barn.example/fl", "cells-2")),
        ("https://user:pw@barn.example/p/digits", JoinTarget("https://barn.example", "digits")),
        (
            "barnraise://join?url=https%3A%2F%2Fbarn.example%2Fp%2Fdigits&invite=XyZ_9",
            JoinTarget("https://barn.example", "digits", "XyZ_9"),
        ),
        (
            "barnraise:join?url=https://barn.example/p/digits",
            JoinTarget("https://barn.example", "digits"),
        ),
        (
            "barnraise://join?url=https%3A%2F%2Fbarn.example%2Fp%2Fdigits%3Finvite%3Dinner",
            JoinTarget("https://barn.example", "digits", "inner"),
        ),
    ],
)
def test_parses(text: str, expected: JoinTarget) -> None:
    assert parse_join_target(text) == expected


def test_api_and_page_urls() -> None:
    target = parse_join_target("https://barn.example/p/digits")
    assert target.api_base == "https://barn.example/api/v1"
    assert target.page_url == "https://barn.example/p/digits"
    assert target.host == "barn.example"


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "nothing to join"),
        ("digits", "not an http(s) address"),
        ("ftp://barn.example/p/digits", "not an http(s) address"),
        ("https://barn.example/", "not a project page"),
        ("https://barn.example/p/", "not a project page"),
        ("https://barn.example/p/Digits", "not a project name"),
        ("https://barn.example/p/digits/extra", "not a project page"),
        ("https://barn.example/p/digits?invite=a%20b", "invite code"),
        ("barnraise://open?url=https://barn.example/p/digits", "only barnraise://join"),
        ("barnraise://join?invite=abc", "names no project page"),
        ("https:///p/digits", "no host"),
    ],
)
def test_refuses_with_a_clear_message(text: str, fragment: str) -> None:
    with pytest.raises(InviteError) as info:
        parse_join_target(text)
    assert fragment in str(info.value)
    assert "paste" in str(info.value)  # says what to do instead
