"""The routes of the public stats (issue 16): contributor and team pages, daily exports.

Spliced into ``backend.api.routes.ROUTE_TABLE`` (the pages before ``/p/{project}``, the
exports beside the leaderboard); none of their paths overlaps another route's.
"""

from __future__ import annotations

from backend.api import exports, profile_pages
from backend.api.route_types import API, Answer, Param, Route
from federated import protocol as p

_PAGE = {200: Answer("HTML page.", media="html")}

PROFILE_PAGE_ROUTES: tuple[Route, ...] = (
    Route(
        "page_contributor",
        "GET",
        "/p/{project}/c/{client_id}",
        profile_pages.contributor_page,
        "HTML: one contributor's credit over time, updates accepted and refused, and team.",
        "pages",
        _PAGE,
        errors=(400, 404),
        html_errors=True,
        trailing_slash=True,
    ),
    Route(
        "page_team",
        "GET",
        "/p/{project}/t/{team}",
        profile_pages.team_page,
        "HTML: one team's members, credit over time and updates (the name URL-encoded).",
        "pages",
        _PAGE,
        errors=(400, 404),
        html_errors=True,
        trailing_slash=True,
    ),
)

EXPORT_ROUTES: tuple[Route, ...] = tuple(
    Route(
        f"export_{kind}",
        "GET",
        f"{API}/projects/{{project}}/export/{kind}.json.gz",
        handler,
        f"The daily export of every {what} (gzip JSON, BOINC style), for stats sites.",
        "stats",
        {
            200: Answer(
                f"The gzip file of a {message.__name__}, generated at most once a day.",
                message,
                media="gzip",
                headers=("ETag", "Last-Modified", "Cache-Control"),
            ),
            304: Answer(
                "Not modified (If-None-Match matched the ETag).", media=None, headers=("ETag",)
            ),
        },
        (400, 404, 429),
        params=(
            Param(
                "If-None-Match",
                "header",
                "An ETag seen before.",
                {"type": "string", "maxLength": 200},
            ),
        ),
    )
    for kind, what, handler, message in (
        ("users", "contributor", exports.users_export, p.UsersExport),
        ("teams", "team", exports.teams_export, p.TeamsExport),
    )
)
