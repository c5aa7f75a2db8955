"""Where the public pages live, as hrefs: user text is URL-encoded here (every character
but unreserved ones), then HTML-escaped by the caller like any attribute value."""

from __future__ import annotations

from urllib.parse import quote


def project_href(project: str) -> str:
    return f"/p/{quote(project, safe='')}"


def contributor_href(project: str, client_id: str) -> str:
    return f"{project_href(project)}/c/{quote(client_id, safe='')}"


def team_href(project: str, team: str) -> str | None:
    """A team's page, its name percent-encoded as UTF-8; None for a name with a '/': the
    servers in front decode %2F into a path separator, so no link could reach it."""
    if "/" in team:
        return None
    return f"{project_href(project)}/t/{quote(team, safe='')}"


def export_href(project: str, kind: str) -> str:
    return f"/api/v1/projects/{quote(project, safe='')}/export/{kind}.json.gz"
