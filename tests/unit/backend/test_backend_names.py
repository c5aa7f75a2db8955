"""Names cannot impersonate (issue 11). Measured on the first wave: exact copies of another
contributor's name, look-alikes (Cyrillic А for Latin A), bidi overrides, zero-width-only
and control characters were all accepted and shown. Here a name is NFKC-normalised and
stripped of control, format (bidi, zero-width) and private-use characters before it is
stored; two contributors of a project cannot hold names equal after case folding and a
confusables skeleton; the page shows a short contributor id beside each name."""

from __future__ import annotations

from typing import Any

import pytest
import requests

from backend.coordinator import Coordinator
from backend.demo_clients import ClientError
from backend.testing import IN_PROCESS_URL
from federated.signing import SigningKey


def names(coordinator: Coordinator) -> list[str]:
    board = coordinator.leaderboard(coordinator.project("digits"))
    return sorted(r["name"] for r in board["contributors"])


@pytest.mark.parametrize(
    ("sent", "stored"),
    [
        ("Ada\u202e", "Ada"),  # a right-to-left override
        ("A\u200bda", "Ada"),  # a zero-width space
        ("Ad\x07a", "Ada"),  # a control character
        ("Ａｄａ", "Ada"),  # fullwidth letters (NFKC)
        ("  Ada   Lovelace ", "Ada Lovelace"),
    ],
)
def test_names_are_cleaned_before_they_are_stored(
    coordinator: Coordinator, make_project: Any, join: Any, sent: str, stored: str
) -> None:
    make_project("digits")
    join("digits", sent)
    assert names(coordinator) == [stored]


@pytest.mark.parametrize("sent", ["\u200b\u200b", "\u202e", "\x00\x01"])
def test_a_name_of_nothing_visible_is_refused(
    coordinator: Coordinator, make_project: Any, http: requests.Session, sent: str
) -> None:
    make_project("digits")
    key = SigningKey.generate()
    api = f"{IN_PROCESS_URL}/api/v1/projects/digits"
    challenge = http.post(f"{api}/challenge").json()["challenge"]
    statement = {
        "challenge": challenge,
        "project": "digits",
        "public_key": key.public_key_b64,
        "purpose": "join",
    }
    r = http.post(
        f"{api}/join",
        json={
            "display_name": sent,
            "public_key": key.public_key_b64,
            "challenge": challenge,
            "signature": key.sign(statement),
        },
    )
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["code"] == "bad_request" and "$.display_name" in error["message"]
    assert names(coordinator) == []


@pytest.mark.parametrize("copy", ["Ada", "ada", "ADA", "\u0410da", "Аdа"])
def test_a_copy_or_look_alike_of_a_taken_name_is_refused(
    coordinator: Coordinator, make_project: Any, join: Any, copy: str
) -> None:
    make_project("digits")
    join("digits", "Ada")
    with pytest.raises(ClientError, match="409.*name_taken"):
        join("digits", copy)
    assert names(coordinator) == ["Ada"]


def test_the_same_key_may_keep_its_name_and_others_may_take_other_names(
    coordinator: Coordinator, make_project: Any, join: Any
) -> None:
    make_project("digits")
    ada = join("digits", "Ada")
    ada.join()  # a re-join with the same key keeps its own name
    join("digits", "Grace")
    assert names(coordinator) == ["Ada", "Grace"]


def test_the_page_shows_a_short_id_beside_each_name(
    coordinator: Coordinator, make_project: Any, join: Any, http: requests.Session
) -> None:
    make_project("digits")
    ada = join("digits", "Ada")
    page = http.get(f"{IN_PROCESS_URL}/p/digits").text
    assert ada.client_id[:6] in page


def test_a_look_alike_team_is_the_team_it_looks_like(
    coordinator: Coordinator, make_project: Any, join: Any
) -> None:
    make_project("digits")
    join("digits", "Ada", team="Analytical Engines")
    join("digits", "Mallory", team="\u0410nalytical engines")  # Cyrillic А, lower case
    join("digits", "Bob", team="Difference Engines")
    board = coordinator.leaderboard(coordinator.project("digits"))
    teams = {r["name"]: r["team"] for r in board["contributors"]}
    assert teams["Mallory"] == "Analytical Engines"  # one team on the board, not two
    assert sorted(t["name"] for t in board["teams"]) == ["Analytical Engines", "Difference Engines"]


def test_a_join_checks_names_against_the_index_not_every_member(
    coordinator: Coordinator, make_project: Any, join: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Measured by bench/backend_load.py --idle: with every member loaded and re-keyed per
    join, joins fell from 97/s to 10/s at 3,000 members. A join now reads no member list."""
    from backend.store.sqlite_reads import SQLiteReads

    make_project("digits")
    join("digits", "Ada", team="Analytical Engines")

    def every_member(*_args: Any) -> None:
        raise AssertionError("a join loaded every member of the project")

    monkeypatch.setattr(SQLiteReads, "clients", every_member)
    join("digits", "Grace", team="\u0410nalytical engines")
    with pytest.raises(ClientError, match="409.*name_taken"):
        join("digits", "\u0410da")


def test_members_from_before_stored_name_keys_are_still_protected(
    coordinator: Coordinator, make_project: Any, join: Any
) -> None:
    make_project("digits")
    join("digits", "Ada", team="Analytical Engines")
    with coordinator.store.write() as tx:  # as a database from before migration 8 has them
        tx._run("UPDATE clients SET name_key = NULL, team_key = NULL")  # type: ignore[attr-defined]
    with pytest.raises(ClientError, match="409.*name_taken"):
        join("digits", "ADA")
    join("digits", "Mallory", team="analytical ENGINES")
    board = coordinator.leaderboard(coordinator.project("digits"))
    assert {r["name"]: r["team"] for r in board["contributors"]}["Mallory"] == "Analytical Engines"
