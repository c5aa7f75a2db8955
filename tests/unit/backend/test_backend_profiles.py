"""Stats worth sharing (issue 16), through the in-process app on both stores: contributor
and team pages, each project's state in words on the index, and the daily exports."""

from __future__ import annotations

import gzip
import json
import re
import threading
from typing import Any
from urllib.parse import quote

import pytest
import requests

from backend.coordinator import Coordinator
from backend.services.exports import EXPORT_INTERVAL_S
from backend.testing import (
    IN_PROCESS_URL,
    FakeClock,
    small_delta,
    upload_request,
    upload_small_delta,
)
from federated import protocol
from federated.codec import encode_update
from federated.signing import SigningKey
from tests.e2e.page_samples import XSS_NAME, XSS_TEAM, XSS_TITLE

pytestmark = pytest.mark.both_stores

API = f"{IN_PROCESS_URL}/api/v1/projects"
TEAM = "Analytical Engines"


def refuse_with_bad_signature(http: requests.Session, coordinator: Coordinator, who: Any) -> None:
    task = who.lease(0)
    assert task is not None
    spec = coordinator.runtime(coordinator.project(task["project"])).spec
    r = upload_request(
        http,
        IN_PROCESS_URL,
        project=task["project"],
        token=who.token,
        key=SigningKey.generate(),
        task=task,
        client_id=who.client_id,
        payload=encode_update(small_delta(spec, 1e-3, task["task_id"]), "int8").payload,
    )
    assert r.status_code == 403 and r.json()["error"]["code"] == "bad_signature"


@pytest.fixture
def world(coordinator: Coordinator, http: requests.Session, make_project: Any, join: Any) -> Any:
    """Ada and Grace of one team, each with an accepted update in version 1; Ada's next
    upload refused (bad signature); a hostile name in a hostile team, and one with none."""
    make_project("digits")
    ada = join("digits", "Ada", team=TEAM)
    grace = join("digits", "Grace", team=TEAM)
    for who in (ada, grace):
        task = who.lease(0)
        assert upload_small_delta(http, coordinator, who, task).status_code == 201
    assert coordinator.worker.run_once()
    refuse_with_bad_signature(http, coordinator, ada)
    hostile = join("digits", XSS_NAME, team=XSS_TEAM)
    loner = join("digits", XSS_TITLE)
    return type("World", (), {"ada": ada, "grace": grace, "hostile": hostile, "loner": loner})


def page(http: requests.Session, path: str) -> requests.Response:
    return http.get(f"{IN_PROCESS_URL}{path}")


def test_the_leaderboard_links_each_name_and_team(http: requests.Session, world: Any) -> None:
    text = page(http, "/p/digits").text
    for who in (world.ada, world.grace, world.hostile, world.loner):
        assert f'href="/p/digits/c/{who.client_id}"' in text
    assert f'href="/p/digits/t/{quote(TEAM, safe="")}"' in text
    assert f'href="/p/digits/t/{quote(XSS_TEAM, safe="")}"' in text
    assert XSS_NAME not in text and XSS_TEAM not in text  # escaped, never raw
    assert 'href="/api/v1/projects/digits/export/users.json.gz"' in text
    assert 'href="/api/v1/projects/digits/leaderboard"' in text


def test_a_contributor_page_shows_accepted_refused_and_nothing_private(
    coordinator: Coordinator, http: requests.Session, world: Any
) -> None:
    r = page(http, f"/p/digits/c/{world.ada.client_id}")
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/html")
    assert "script-src" not in r.headers["Content-Security-Policy"]  # default-src 'none'
    text = r.text
    assert '<span id="contributor-name">Ada</span>' in text
    assert f'href="/p/digits/t/{quote(TEAM, safe="")}"' in text
    assert re.search(r'id="updates-accepted">1<', text)
    assert re.search(r'id="updates-rejected">1<', text)
    assert re.search(r'id="rank">1<', text)
    assert "<code>bad_signature</code>" in text and 'id="refusals-table"' in text
    assert 'id="chart-credit"' in text and "<polyline" not in text  # one day: one point
    # Nothing private: no token, key, address or task id.
    with coordinator.store.read() as tx:
        tasks = [t.id for t in _tasks(tx, world.ada.client_id)]
    assert tasks
    for secret in (world.ada.token, world.ada.key.public_key_b64, "127.0.0.1", *tasks):
        assert secret not in text
    grace = page(http, f"/p/digits/c/{world.grace.client_id}").text
    assert "None: every update sent was accepted." in grace


def _tasks(tx: Any, client_id: str) -> list[Any]:
    return [t for t in (tx.task(u.task_id) for u in tx.client_updates(client_id, "granted")) if t]


def test_a_banned_contributor_is_marked(
    coordinator: Coordinator, http: requests.Session, world: Any
) -> None:
    coordinator.services.admin.ban(coordinator.project("digits"), world.grace.client_id, "spam")
    text = page(http, f"/p/digits/c/{world.grace.client_id}").text
    assert 'id="banned-note"' in text and "badge-banned" in text


def test_hostile_names_are_text_on_their_pages(http: requests.Session, world: Any) -> None:
    text = page(http, f"/p/digits/c/{world.hostile.client_id}").text
    assert XSS_NAME not in text and XSS_TEAM not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    team = page(http, f"/p/digits/t/{quote(XSS_TEAM, safe='')}")
    assert team.status_code == 200
    assert XSS_TEAM not in team.text and XSS_NAME not in team.text
    assert f'href="/p/digits/c/{world.hostile.client_id}"' in team.text
    loner = page(http, f"/p/digits/c/{world.loner.client_id}").text
    assert XSS_TITLE not in loner and "no team" in loner


def test_a_team_page_lists_its_members_and_totals(http: requests.Session, world: Any) -> None:
    r = page(http, f"/p/digits/t/{quote(TEAM, safe='')}")
    assert r.status_code == 200
    text = r.text
    assert f'<h1 id="team-name">{TEAM}</h1>' in text
    for who in (world.ada, world.grace):
        assert f'href="/p/digits/c/{who.client_id}"' in text
    assert world.hostile.client_id not in text
    assert re.search(r'id="updates-accepted">2<', text)
    assert re.search(r'id="updates-rejected">1<', text)
    assert 'id="members-table"' in text and 'id="chart-credit"' in text


@pytest.mark.parametrize(
    "path",
    [
        "/p/digits/c/AAAAAAAAAAAAAAAAAAAAAA",  # well formed, nobody
        "/p/nope/c/AAAAAAAAAAAAAAAAAAAAAA",
        "/p/digits/t/Nobody%27s%20team",
        "/p/digits/t/..%2F",
        "/p/digits/t/..%2F..%2Fetc%2Fpasswd",
        "/p/digits/t/%2E%2E",
        "/p/digits/t/" + "a" * 5000,
        "/p/digits/t/" + quote("Ä" * 65),
        "/p/digits/t/" + quote("Analytical Εngines"),  # a Greek capital epsilon
        "/p/digits/t/" + quote("Ａnalytical Engines"),  # fullwidth: NFKC would change it
        "/p/digits/t/" + quote("Analytical\u200bEngines"),  # zero width
        "/p/digits/t/" + quote(" Analytical Engines"),
        "/p/digits/t/%FF%FE",  # not UTF-8
        "/p/digits/t/%00",
        "/p/digits/t/%C0%AF",  # an overlong '/'
    ],
)
def test_unknown_or_impossible_contributors_and_teams_are_404(
    http: requests.Session, world: Any, path: str
) -> None:
    r = page(http, path)
    assert r.status_code in (400, 404), (path, r.status_code)
    if r.headers["Content-Type"].startswith("text/html"):
        assert "<script" not in r.text.lower().replace("&lt;script", "")


def test_bad_ids_and_members_of_other_projects(
    http: requests.Session, make_project: Any, join: Any, world: Any
) -> None:
    make_project("other")
    stranger = join("other", "Stranger", team=TEAM)
    assert page(http, f"/p/digits/c/{stranger.client_id}").status_code == 404
    assert page(http, f"/p/other/c/{world.ada.client_id}").status_code == 404
    assert page(http, "/p/digits/c/short").status_code == 400
    assert page(http, "/p/digits/c/" + "x" * 300).status_code == 400
    assert page(http, f"/p/other/t/{quote(TEAM, safe='')}").text.count("/p/other/c/") == 1


def test_the_index_says_each_projects_state(
    coordinator: Coordinator,
    http: requests.Session,
    make_project: Any,
    join: Any,
    clock: FakeClock,
) -> None:
    make_project("waiting", clients_per_round=3, min_updates=2)
    join("waiting", "Ada")
    make_project("invited", clients_per_round=1, min_updates=1, invite_required=True)
    make_project("async-one", mode="async", buffer_size=2)
    make_project("paused")
    coordinator.set_status("paused", "paused")
    make_project("closed")
    coordinator.set_status("closed", "closed")
    make_project("done")
    coordinator.finish("done", "good enough")

    def states() -> dict[str, str]:
        text = page(http, "/").text
        return dict(
            re.findall(r'<a href="/p/([a-z-]+)">[^<]*</a> <span class="badge[^"]*">([^<]*)<', text)
        )

    assert states() == {
        "waiting": "waiting for 2 volunteers",
        "invited": "waiting for 1 volunteer · invite only",
        "async-one": "training",
        "paused": "paused",
        "closed": "closed",
        "done": "finished",
    }
    for name in ("Grace", "Alan"):
        join("waiting", name)
    assert states()["waiting"] == "training"
    settings = coordinator.runtime(coordinator.project("waiting")).settings
    clock.advance(settings.lease_life_s + 1)  # nobody seen since: no longer live
    assert states()["waiting"] == "waiting for 3 volunteers"


def export(http: requests.Session, kind: str, **headers: str) -> requests.Response:
    return http.get(f"{API}/digits/export/{kind}.json.gz", headers=headers)


def test_the_exports_decode_and_match_the_leaderboard(
    coordinator: Coordinator, http: requests.Session, world: Any
) -> None:
    board = http.get(f"{API}/digits/leaderboard").json()
    users_r = export(http, "users")
    assert users_r.status_code == 200 and users_r.headers["Content-Type"] == "application/gzip"
    assert "Content-Encoding" not in users_r.headers
    body = json.loads(gzip.decompress(users_r.content))
    users = protocol.convert(body, protocol.UsersExport, what="UsersExport")
    assert protocol.to_wire(users) == body
    assert users.project == "digits" and users.generated_at == int(coordinator.clock())
    assert [(u.id, u.name, u.team, u.rank) for u in users.users] == [
        (c["client_id"], c["display_name"], c["team"], c["rank"]) for c in board["contributors"]
    ]
    for u, c in zip(users.users, board["contributors"], strict=True):
        assert u.total_credit == pytest.approx(c["credit"])
        assert u.recent_credit == pytest.approx(c["recent_credit"])
        assert u.updates_accepted == c["updates_accepted"] and u.last_seen == c["last_seen"]
        assert u.first_seen <= u.last_seen
    # Only what the leaderboard shows, and first seen.
    assert set(body["users"][0]) == {
        "id", "name", "team", "total_credit", "recent_credit", "updates_accepted",
        "first_seen", "last_seen", "rank", "banned",
    }  # fmt: skip
    teams_body = json.loads(gzip.decompress(export(http, "teams").content))
    teams = protocol.convert(teams_body, protocol.TeamsExport, what="TeamsExport")
    assert [(t.name, t.members, t.rank) for t in teams.teams] == [
        (t["team"], t["members"], t["rank"]) for t in board["teams"]
    ]
    engines = next(t for t in teams.teams if t.name == TEAM)
    assert set(engines.member_ids) == {world.ada.client_id, world.grace.client_id}
    assert engines.updates_accepted == 2


def test_exports_are_made_once_a_day_and_answer_304(
    coordinator: Coordinator, http: requests.Session, world: Any, clock: FakeClock
) -> None:
    first = export(http, "users")
    etag, modified = first.headers["ETag"], first.headers["Last-Modified"]
    assert re.fullmatch(r'"[0-9a-f]{64}"', etag)
    assert first.headers["Cache-Control"] == f"public, max-age={int(EXPORT_INTERVAL_S)}"
    not_modified = export(http, "users", **{"If-None-Match": etag})
    assert not_modified.status_code == 304 and not_modified.content == b""
    assert not_modified.headers["ETag"] == etag

    clock.advance(3600.0)
    refuse_with_bad_signature(http, coordinator, world.grace)  # the standings change...
    later = export(http, "users")
    assert later.content == first.content and later.headers["Last-Modified"] == modified
    assert later.headers["Cache-Control"] == f"public, max-age={int(EXPORT_INTERVAL_S) - 3600}"

    clock.advance(EXPORT_INTERVAL_S)  # ... and show a day later
    fresh = export(http, "users", **{"If-None-Match": etag})
    assert fresh.status_code == 200 and fresh.headers["ETag"] != etag
    assert fresh.headers["Last-Modified"] != modified
    body = json.loads(gzip.decompress(fresh.content))
    assert body["generated_at"] == int(coordinator.clock())
    head = http.head(f"{API}/digits/export/users.json.gz")
    assert head.status_code == 200 and head.content == b""


def test_two_generations_at_once_leave_one_whole_file(
    coordinator: Coordinator, http: requests.Session, world: Any
) -> None:
    exports, project = coordinator.services.exports, coordinator.project("digits")
    errors: list[BaseException] = []

    def generate() -> None:
        try:
            for _ in range(5):
                exports.generate(project, "teams")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=generate) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    path = exports.path(project, "teams")
    assert [p.name for p in path.parent.iterdir()] == ["teams.json.gz"]  # no temp left
    assert json.loads(gzip.decompress(path.read_bytes()))["teams"]
    r = export(http, "teams")
    assert r.status_code == 200 and gzip.decompress(r.content)


def test_exports_of_an_unknown_project_are_404(http: requests.Session) -> None:
    r = http.get(f"{API}/nope/export/users.json.gz")
    assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_project"
    assert http.get(f"{API}/Bad_Name/export/teams.json.gz").status_code == 400
