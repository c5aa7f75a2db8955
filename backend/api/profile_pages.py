"""The contributor and team pages: check the path, fill the views, render.

A team name arrives percent-decoded into the path as WSGI's latin-1 text (a '/' it held
is a path separator by then, so such a team has no page). It is read back as UTF-8 and
must be what a stored team name can be (``clean_text`` leaves it as it is, at most
``MAX_TEAM_CHARS``): anything else cannot name a team, and is 404 like a missing one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from backend.api.pages import contributor_row, html_response
from backend.errors import NotFound
from backend.http import Request, Response
from backend.ids import check_server_id
from backend.pages.contributor_page import render_contributor_page
from backend.pages.team_page import render_team_page
from backend.pages.views import ContributorPageView, RefusalRow, TeamPageView
from federated.protocol import MAX_TEAM_CHARS
from federated.protocol.names import clean_text

if TYPE_CHECKING:
    from backend.wsgi import App


def contributor_page(app: App, req: Request, project: str, client_id: str) -> Response:
    coordinator = app.coordinator
    record = coordinator.project(project)
    check_server_id(client_id, "contributor id")
    profile = coordinator.services.profiles.contributor(record, client_id)
    row = profile.row
    view = ContributorPageView(
        project=record.name,
        now=coordinator.clock(),
        client_id=row.client_id,
        name=row.display_name,
        team=row.team,
        rank=row.rank,
        credit=row.credit,
        recent_credit=row.recent_credit,
        updates_accepted=row.updates_accepted,
        updates_rejected=row.updates_rejected,
        first_seen=profile.first_seen,
        last_seen=row.last_seen,
        banned=row.banned,
        credit_days=tuple(profile.credit_by_day),
        refusal_codes=tuple(sorted(profile.refusal_codes.items(), key=lambda kv: (-kv[1], kv[0]))),
        refusals=tuple(RefusalRow(at=at, code=code) for at, code in profile.refusals),
        energy_joules=row.energy_joules,
        energy_measured_joules=row.energy_measured_joules,
    )
    return html_response(render_contributor_page(view))


def team_name_from_path(segment: str) -> str:
    """The team a path segment names; NotFound when no team could be named so."""
    try:
        name = segment.encode("latin-1").decode("utf-8")
    except UnicodeError:
        raise NotFound("no team has that name: the address is not UTF-8 text") from None
    if not name or len(name) > MAX_TEAM_CHARS or clean_text(name) != name:
        raise NotFound(
            f"no team is named {name[:80]!r}: the project's page links to each of its teams"
        )
    return name


def team_page(app: App, req: Request, project: str, team: str) -> Response:
    coordinator = app.coordinator
    record = coordinator.project(project)
    name = team_name_from_path(team)
    profile = coordinator.services.profiles.team(record, name)
    members = tuple(contributor_row(m) for m in profile.members)
    view = TeamPageView(
        project=record.name,
        now=coordinator.clock(),
        name=profile.team.team,
        rank=profile.team.rank,
        credit=profile.team.credit,
        recent_credit=profile.team.recent_credit,
        updates_accepted=profile.team.updates_accepted,
        updates_rejected=profile.updates_rejected,
        first_seen=profile.first_seen,
        members=members,
        credit_days=tuple(profile.credit_by_day),
    )
    return html_response(render_team_page(view))
