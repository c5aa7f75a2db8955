"""The contributor and team pages and the index's state words, as pure renderers: escaping
of hostile names and teams, links URL-encoded, credit by day, valid markup."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from urllib.parse import quote

from backend.pages import ProjectSummaryView, render_index
from backend.pages.contributor_page import render_contributor_page
from backend.pages.credit_chart import SECONDS_PER_DAY, cumulative_by_day
from backend.pages.links import team_href
from backend.pages.team_page import render_team_page
from backend.pages.views import ContributorPageView, ContributorRow, RefusalRow, TeamPageView
from tests.e2e.page_samples import NOW, XSS_NAME, XSS_TEAM, XSS_TITLE
from tests.unit.backend_web.test_pages import _Collector

DAY0 = int(NOW // SECONDS_PER_DAY) - 3


def contributor(**kw: object) -> ContributorPageView:
    base: dict[str, object] = {
        "project": "digits",
        "now": NOW,
        "client_id": "cL7n2p9qR4s6t8u0v1w2",
        "name": XSS_NAME,
        "team": XSS_TEAM,
        "rank": 3,
        "credit": 1234.5,
        "recent_credit": 98.7,
        "updates_accepted": 12,
        "updates_rejected": 2,
        "first_seen": DAY0 * SECONDS_PER_DAY + 100.0,
        "last_seen": NOW - 60,
        "credit_days": ((DAY0, 1000.0), (DAY0 + 2, 234.5)),
        "refusal_codes": (("bad_signature", 1), (XSS_TITLE, 1)),
        "refusals": (RefusalRow(NOW - 30, "bad_signature"), RefusalRow(NOW - 90, XSS_TITLE)),
    }
    base.update(kw)
    return ContributorPageView(**base)  # type: ignore[arg-type]


def well_formed(html: str) -> _Collector:
    parsed = _Collector()
    parsed.feed(html)
    parsed.close()
    assert parsed.errors == []
    return parsed


def test_a_contributor_page_escapes_everything_and_links_its_team() -> None:
    html = render_contributor_page(contributor())
    parsed = well_formed(html)
    for hostile in (XSS_NAME, XSS_TEAM, XSS_TITLE):
        assert hostile not in html
    assert [t for t, _ in parsed.tags if t in ("script", "img", "iframe")] == []
    hrefs = [a.get("href") for t, a in parsed.tags if t == "a"]
    assert f"/p/digits/t/{quote(XSS_TEAM, safe='')}" in hrefs
    assert "/p/digits" in hrefs
    assert XSS_NAME in "".join(parsed.text) and XSS_TEAM in "".join(parsed.text)
    assert "its signature did not match" in html
    (svg,) = [s for s in html.split("<svg")[1:]]
    ET.fromstring("<svg" + svg.split("</svg>")[0] + "</svg>")  # the chart is valid XML


def test_a_contributor_without_team_refusals_or_credit() -> None:
    html = render_contributor_page(
        contributor(
            team=None,
            updates_rejected=0,
            refusal_codes=(),
            refusals=(),
            credit_days=(),
            banned=True,
            rank=None,
        )
    )
    well_formed(html)
    assert "no team" in html and "every update sent was accepted" in html
    assert "badge-banned" in html and 'id="banned-note"' in html


def test_credit_by_day_is_a_running_total_flat_on_idle_days() -> None:
    first_seen = DAY0 * SECONDS_PER_DAY + 100.0
    points = cumulative_by_day(((DAY0, 1.0), (DAY0 + 2, 2.5)), first_seen, NOW)
    assert points == [(0.0, 1.0), (1.0, 1.0), (2.0, 3.5), (3.0, 3.5)]
    # Credit dated before the first day (a clock set back) counts on the first day.
    assert cumulative_by_day(((DAY0 - 5, 2.0),), first_seen, first_seen) == [(0.0, 2.0)]


def test_team_links_are_percent_encoded_and_slashes_have_none() -> None:
    assert team_href("digits", "Compilers & Co") == "/p/digits/t/Compilers%20%26%20Co"
    assert team_href("digits", "Δ team") == "/p/digits/t/%CE%94%20team"
    assert team_href("digits", "AC/DC") is None
    html = render_contributor_page(contributor(team="AC/DC"))
    assert "AC/DC" in html and "/t/AC" not in html


def test_a_team_page_escapes_and_links_its_members() -> None:
    members = tuple(
        ContributorRow(
            name=name,
            team=XSS_TEAM,
            credit=10.0 - i,
            recent_credit=1.0,
            updates_accepted=3,
            updates_rejected=i,
            last_seen=NOW - 5,
            short_id=f"id{i}xx",
            client_id=f"client{i}AAAAAAAAAAAA",
            banned=i == 1,
        )
        for i, name in enumerate((XSS_NAME, XSS_TITLE))
    )
    html = render_team_page(
        TeamPageView(
            project="digits",
            now=NOW,
            name=XSS_TEAM,
            rank=1,
            credit=19.0,
            recent_credit=2.0,
            updates_accepted=6,
            updates_rejected=1,
            first_seen=NOW - 3 * SECONDS_PER_DAY,
            members=members,
            credit_days=((DAY0, 19.0),),
        )
    )
    parsed = well_formed(html)
    for hostile in (XSS_NAME, XSS_TEAM, XSS_TITLE):
        assert hostile not in html
    hrefs = [a.get("href") for t, a in parsed.tags if t == "a"]
    assert "/p/digits/c/client0AAAAAAAAAAAA" in hrefs and "/p/digits/c/client1AAAAAAAAAAAA" in hrefs
    assert "badge-banned" in html


def test_the_index_shows_each_state_in_words() -> None:
    html = render_index(
        [
            ProjectSummaryView("waiting", state="waiting for 2 volunteers · invite only"),
            ProjectSummaryView("plain"),
        ],
        now=NOW,
    )
    assert '<span class="badge badge-open">waiting for 2 volunteers · invite only</span>' in html
    assert '<span class="badge badge-open">open</span>' in html  # no words given: the status
