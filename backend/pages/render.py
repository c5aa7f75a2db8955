"""HTML rendering: pure functions from the view dataclasses to a complete HTML document.

Every piece of user text goes through ``_h`` (``html.escape`` with quotes), including in
attributes. The stylesheet is inlined in a ``<style>`` element whose sha256 is allowed by
the page's Content-Security-Policy; no script may run on these pages at all (the policy's
``default-src 'none'`` covers scripts), so an escaping slip still could not execute code.
"""

from __future__ import annotations

from collections.abc import Sequence
from http import HTTPStatus

from backend.pages.actions import render_actions
from backend.pages.chart import render_line_chart
from backend.pages.contributor_page import energy_cell, team_link
from backend.pages.document import document as _document
from backend.pages.document import h as _h
from backend.pages.document import status_badge as _status_badge
from backend.pages.document import time_element as _time
from backend.pages.formatting import (
    ENERGY_NOTE,
    format_count,
    format_credit,
    format_credit_with_unit,
    format_loss,
    format_percent,
)
from backend.pages.links import contributor_href, export_href
from backend.pages.privacy import render_privacy
from backend.pages.samples import render_samples
from backend.pages.views import (
    CREDIT_UNIT,
    ContributorRow,
    ProjectPageView,
    ProjectSummaryView,
    TeamRow,
    VersionPoint,
)

CONTRIBUTOR_ROWS_SHOWN = 100
VERSION_ROWS_SHOWN = 12
"""The versions table shows the newest this many; the chart shows all."""


def _project_card(project: ProjectSummaryView, now: float | None) -> str:
    href = "/p/" + _h(project.name)
    description = (
        f'<p class="desc">{_h(project.description)}</p>'
        if project.description
        else f'<p class="desc">Recipe {_h(project.recipe)}</p>'
    )
    updated = (
        f'<p class="note">Latest model published {_time(project.updated_at, now)}</p>'
        if now is not None and project.updated_at is not None
        else ""
    )
    return (
        '<li class="card project-card">'
        f'<h2><a href="{href}">{_h(project.name)}</a> '
        f"{_status_badge(project.status, project.state)}</h2>"
        f"{description}"
        "<dl>"
        f"<div><dt>Model version</dt><dd>{format_count(project.current_version)}</dd></div>"
        f"<div><dt>Accuracy</dt><dd>{format_percent(project.accuracy)}</dd></div>"
        f"<div><dt>Contributors</dt><dd>{format_count(project.contributors)}</dd></div>"
        f"<div><dt>Compute given</dt><dd>{format_credit_with_unit(project.total_credit)}</dd></div>"
        "</dl>"
        f"{updated}"
        "</li>"
    )


def render_index(projects: Sequence[ProjectSummaryView], *, now: float | None = None) -> str:
    """The ``/`` page: every project as a card linking to ``/p/NAME``.

    With ``now`` (unix seconds) each card also says when its latest model was published.
    """
    if projects:
        listing = (
            '<ul class="project-list">' + "".join(_project_card(p, now) for p in projects) + "</ul>"
        )
    else:
        listing = (
            '<div class="card empty-state"><h2>No projects yet</h2>'
            '<p class="muted">The organiser of this server creates one with</p>'
            "<code>barnraise-backend project create NAME --recipe RECIPE --strategy fedavg</code>"
            "</div>"
        )
    body = (
        '<section><p class="eyebrow">This server</p><h1>Projects</h1>'
        '<p class="lede">Pick a project to see who is training it, how the model is doing, '
        "and how to join with your own computer.</p></section>\n"
        f"<section>{listing}</section>"
    )
    return _document("Projects · Barnraise", body, description="Projects on this Barnraise server")


# ---------------------------------------------------------------------------------------
# Project page: /p/NAME


def _finished_card(view: ProjectPageView) -> str:
    """A finished project's thanks, why it finished, and its final model to take away."""
    why = next((a.reason for a in view.actions if a.action == "finish"), "")
    model = ""
    if view.model_digest:
        api = f"/api/v1/projects/{view.name}"
        model = (
            f'<p><a href="{_h(api)}/models/{_h(view.model_digest)}" '
            f'download="{_h(view.name)}-v{view.current_version}.safetensors">'
            f"Download the final model</a> (version {view.current_version}, safetensors, "
            f'float32; its signed manifest: <a href="{_h(api)}/models/current">JSON</a>).</p>'
        )
    return (
        '<aside class="card join finished" id="join"><h2>Finished — thank you</h2>'
        "<p>This project reached its goal and needs no more work: thank you to everyone "
        "whose computer trained it. The leaderboard and model history stay here.</p>"
        + (f'<p class="muted">Finished: {_h(why)}.</p>' if why else "")
        + model
        + "</aside>"
    )


def _join_card(view: ProjectPageView) -> str:
    if view.status == "finished":
        return _finished_card(view)
    if view.status == "closed":
        return (
            '<aside class="card join" id="join"><h2>Join this project</h2>'
            '<p class="muted">This project is closed and no longer takes contributions. '
            "Its leaderboard and model history stay here.</p></aside>"
        )
    invite = (
        "<li>This project needs an <b>invite link</b> from its organiser: paste that link "
        "instead of the address above.</li>"
        if view.invite_required
        else ""
    )
    data = (
        "Your computer trains on a built-in public data set; nothing of yours is used."
        if view.data_mode == "builtin"
        else "You choose a data folder or CSV file on your computer. It never leaves your "
        "computer: only model updates are sent."
    )
    paused = (
        '<p class="note">The project is paused: you can join now, and your computer starts '
        "working when the organiser resumes it.</p>"
        if view.status == "paused"
        else ""
    )
    fingerprint = view.key_fingerprint or "(not published)"
    return (
        '<aside class="card join" id="join"><h2>Join this project</h2><ol>'
        "<li>Install the Barnraise app and choose <b>Join project&hellip;</b> from its menu.</li>"
        "<li>Paste this page&rsquo;s address:"
        f'<code class="copy-field" id="join-url">{_h(view.page_url)}</code></li>'
        f"{invite}"
        "<li>Check that the app shows this server key fingerprint before you accept:"
        f'<code class="copy-field fingerprint" id="key-fingerprint">{_h(fingerprint)}</code></li>'
        "</ol>"
        f'<p class="note">{data} You set when and how hard your computer works; '
        "pause any time.</p>"
        f"{paused}"
        "</aside>"
    )


def _stats(view: ProjectPageView) -> str:
    latest = view.versions[-1] if view.versions else None
    accuracy = latest.accuracy if latest else None
    # Totals over everyone when given; the rows may be only a top N.
    total_credit = (
        view.total_credit
        if view.total_credit is not None
        else sum(c.credit for c in view.contributors)
    )
    accepted = (
        view.updates_accepted_total
        if view.updates_accepted_total is not None
        else sum(c.updates_accepted for c in view.contributors)
    )
    contributors = (
        view.contributors_total if view.contributors_total is not None else len(view.contributors)
    )
    return (
        '<dl class="stats" id="stats">'
        f'<div class="stat"><dt>Model version</dt><dd>{format_count(view.current_version)}</dd></div>'
        f'<div class="stat"><dt>Accuracy</dt><dd>{format_percent(accuracy)}</dd></div>'
        f'<div class="stat"><dt>Contributors</dt><dd>{format_count(contributors)}</dd></div>'
        f'<div class="stat"><dt>Compute given</dt><dd>{format_credit(total_credit)}'
        f" <small>{CREDIT_UNIT}</small></dd></div>"
        f'<div class="stat"><dt>Updates accepted</dt><dd>{format_count(accepted)}</dd></div>'
        + (
            f'<div class="stat"><dt>Bytes trained</dt><dd id="tokens-trained">'
            f"{format_count(view.tokens_trained)}</dd></div>"
            if view.tokens_trained is not None
            else ""
        )
        + "</dl>"
    )


def _charts(versions: Sequence[VersionPoint]) -> str:
    x_range = (versions[0].version, versions[-1].version) if versions else None
    accuracy = render_line_chart(
        [(v.version, v.accuracy) for v in versions],
        title="Held-out accuracy by model version",
        x_label="Model version",
        y_label="Accuracy",
        y_format=lambda y: f"{y * 100:.0f}%",
        point_format=lambda y: f"{y * 100:.1f}%",
        y_range=(0.0, 1.0),
        x_range=x_range,
        series_class="series-a",
        empty_text="No model versions yet",
    )
    loss = render_line_chart(
        [(v.version, v.loss) for v in versions],
        title="Held-out loss by model version",
        x_label="Model version",
        y_label="Loss",
        y_format=lambda y: f"{y:g}",
        point_format=format_loss,
        x_range=x_range,
        series_class="series-b",
        empty_text="No model versions yet",
    )
    return (
        '<section id="progress"><h2>Model progress</h2><div class="charts">'
        f'<figure class="card" id="chart-accuracy"><figcaption>Accuracy</figcaption>{accuracy}</figure>'
        f'<figure class="card" id="chart-loss"><figcaption>Loss</figcaption>{loss}</figure>'
        "</div></section>"
    )


def _contributor_row(rank: int, row: ContributorRow, now: float, project: str) -> str:
    team = team_link(project, row.team) if row.team else '<span class="muted">&ndash;</span>'
    name = _h(row.name)
    if row.client_id:
        name = f'<a href="{_h(contributor_href(project, row.client_id))}">{name}</a>'
    rejected_class = "num bad" if row.updates_rejected else "num"
    top = ' class="top"' if rank <= 3 else ""
    short_id = f' <span class="muted id">#{_h(row.short_id)}</span>' if row.short_id else ""
    if row.banned:
        short_id += (
            ' <span class="badge badge-banned" title="banned by the organiser">banned</span>'
        )
    return (
        f"<tr{top}>"
        f'<td class="rank num">{rank}</td>'
        f'<td class="name">{name}{short_id}</td>'
        f'<td class="team">{team}</td>'
        f'<td class="num" title="{row.credit:,.3f} {CREDIT_UNIT}">{format_credit(row.credit)}</td>'
        f'<td class="num">{format_credit(row.recent_credit)}</td>'
        f"{energy_cell(row.energy_joules, row.energy_measured_joules)}"
        f'<td class="num">{format_count(row.updates_accepted)}</td>'
        f'<td class="{rejected_class}">{format_count(row.updates_rejected)}</td>'
        f"<td>{_time(row.last_seen, now)}</td>"
        "</tr>"
    )


def _scroll_table(label: str, table_id: str, head: str, rows: str) -> str:
    # tabindex lets keyboard users scroll the region; role+label name it for screen readers.
    return (
        f'<div class="table-scroll" role="region" aria-label="{_h(label)}" tabindex="0">'
        f'<table id="{table_id}"><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table></div>'
    )


def _contributors(view: ProjectPageView) -> str:
    shown = view.contributors[:CONTRIBUTOR_ROWS_SHOWN]
    head = (
        '<th class="num" scope="col">#</th><th scope="col">Contributor</th>'
        '<th scope="col">Team</th>'
        f'<th class="num" scope="col">Credit ({CREDIT_UNIT})</th>'
        '<th class="num" scope="col">Recent</th>'
        f'<th class="num" scope="col" title="{_h(ENERGY_NOTE)}">Energy*</th>'
        '<th class="num" scope="col">Accepted</th><th class="num" scope="col">Rejected</th>'
        '<th scope="col">Last seen</th>'
    )
    if shown:
        rows = "".join(
            _contributor_row(i, r, view.now, view.name) for i, r in enumerate(shown, start=1)
        )
    elif view.status in ("closed", "finished"):
        rows = '<tr><td class="empty" colspan="9">Nobody contributed to this project.</td></tr>'
    else:
        rows = (
            '<tr><td class="empty" colspan="9">No contributions yet. '
            'Be the first: <a href="#join">join this project</a>.</td></tr>'
        )
    total = (
        view.contributors_total if view.contributors_total is not None else len(view.contributors)
    )
    note = (
        f'<p class="table-note">Showing the top {len(shown):,} of {total:,} contributors.</p>'
        if total > len(shown)
        else ""
    ) + f'<p class="table-note" id="energy-note">* Energy: {_h(ENERGY_NOTE)}, not credited.</p>'
    return (
        '<section id="contributors"><h2>Contributors</h2>'
        + _scroll_table("Contributors ranked by credit", "contributors-table", head, rows)
        + note
        + "</section>"
    )


def _team_row(rank: int, row: TeamRow, project: str) -> str:
    return (
        "<tr>"
        f'<td class="rank num">{rank}</td>'
        f'<td class="name">{team_link(project, row.name)}</td>'
        f'<td class="num">{format_count(row.members)}</td>'
        f'<td class="num" title="{row.credit:,.3f} {CREDIT_UNIT}">{format_credit(row.credit)}</td>'
        f'<td class="num">{format_credit(row.recent_credit)}</td>'
        f'<td class="num">{format_count(row.updates_accepted)}</td>'
        "</tr>"
    )


def _teams(view: ProjectPageView) -> str:
    head = (
        '<th class="num" scope="col">#</th><th scope="col">Team</th>'
        '<th class="num" scope="col">Members</th>'
        f'<th class="num" scope="col">Credit ({CREDIT_UNIT})</th>'
        '<th class="num" scope="col">Recent</th><th class="num" scope="col">Accepted</th>'
    )
    if view.teams:
        rows = "".join(_team_row(i, t, view.name) for i, t in enumerate(view.teams, start=1))
    else:
        rows = (
            '<tr><td class="empty" colspan="6">No teams yet. Contributors pick a team name '
            "when they join.</td></tr>"
        )
    total = view.teams_total if view.teams_total is not None else len(view.teams)
    note = (
        f'<p class="table-note">Showing the top {len(view.teams):,} of {total:,} teams.</p>'
        if total > len(view.teams)
        else ""
    )
    return (
        '<section id="teams"><h2>Teams</h2>'
        + _scroll_table("Teams ranked by credit", "teams-table", head, rows)
        + note
        + "</section>"
    )


def _versions(view: ProjectPageView) -> str:
    if not view.versions:
        return ""
    newest = list(reversed(view.versions[-VERSION_ROWS_SHOWN:]))
    head = (
        '<th class="num" scope="col">Version</th><th scope="col">Published</th>'
        '<th class="num" scope="col">Accuracy</th><th class="num" scope="col">Loss</th>'
        '<th class="num" scope="col">Updates</th><th class="num" scope="col">Contributors</th>'
    )
    rows = "".join(
        "<tr>"
        f'<td class="num">{v.version}</td>'
        f"<td>{_time(v.created_at, view.now)}</td>"
        f'<td class="num">{format_percent(v.accuracy)}</td>'
        f'<td class="num">{format_loss(v.loss)}</td>'
        f'<td class="num">{format_count(v.updates)}</td>'
        f'<td class="num">{format_count(v.contributors)}</td>'
        "</tr>"
        for v in newest
    )
    return (
        '<section id="versions"><h2>Recent model versions</h2>'
        + _scroll_table("Recent model versions", "versions-table", head, rows)
        + "</section>"
    )


def _data(project: str) -> str:
    """Links for stats sites and scripts: the daily exports and the JSON API."""
    api = f"/api/v1/projects/{project}"
    links = (
        (export_href(project, "users"), "users.json.gz", "every contributor, daily"),
        (export_href(project, "teams"), "teams.json.gz", "every team, daily"),
        (f"{api}/leaderboard", "leaderboard", "JSON, live"),
        (f"{api}/stats", "stats", "JSON: model versions and counts"),
        ("/api/v1/openapi.json", "API description", "OpenAPI"),
    )
    items = "".join(
        f'<li><a href="{_h(href)}">{_h(label)}</a> <span class="muted">{_h(what)}</span></li>'
        for href, label, what in links
    )
    return (
        '<section id="data"><h2>Data</h2><p class="note">For stats sites: the exports are '
        "gzip JSON files made once a day (schema in the protocol document, "
        f"&ldquo;Exports&rdquo;).</p><ul>{items}</ul></section>"
    )


_PRIVACY_FACT = {"dp-sgd": "record-level DP", "dp-fedavg": "user-level DP"}


def render_project_page(view: ProjectPageView) -> str:
    """The ``/p/NAME`` page: summary, join instructions, charts, contributors, teams."""
    facts = [
        ("Recipe", f"{view.recipe} v{view.recipe_version}" if view.recipe else ""),
        ("Strategy", view.strategy),
        ("Rounds", "asynchronous" if view.mode == "async" else "synchronous"),
        ("Data", "built-in" if view.data_mode == "builtin" else "yours, stays local"),
        ("Codec", view.codec),
        ("Privacy", _PRIVACY_FACT.get(view.privacy.mechanism, "") if view.privacy else ""),
    ]
    facts_html = "".join(
        f"<li><b>{_h(label)}</b>{_h(value)}</li>" for label, value in facts if value
    )
    description = f'<p class="lede">{_h(view.description)}</p>' if view.description else ""
    body = (
        '<div class="hero"><section>'
        '<p class="eyebrow">Project</p>'
        f'<h1><span id="project-name">{_h(view.name)}</span> {_status_badge(view.status)}</h1>'
        f"{description}"
        f'<ul class="facts">{facts_html}</ul>'
        f'<p class="note"><a href="/p/{_h(view.name)}/model">Model card</a>: download '
        f"version {view.current_version}, its metrics and licence.</p>"
        "</section>"
        f"{_join_card(view)}</div>\n"
        f"<section>{_stats(view)}</section>\n"
        f"{render_privacy(view.privacy)}\n"
        f"{render_samples(view.samples, view.current_version)}\n"
        f"{_charts(view.versions)}\n"
        f"{_contributors(view)}\n"
        f"{_teams(view)}\n"
        f"{_versions(view)}\n"
        f"{render_actions(view.actions, view.now)}\n"
        f"{_data(view.name)}"
    )
    summary = view.description or f"Barnraise project {view.name}"
    return _document(f"{view.name} · Barnraise", body, description=summary[:300])


# ---------------------------------------------------------------------------------------
# Errors


def render_error_page(status: int, message: str) -> str:
    """A page for HTML routes that fail (404 unknown project, 500...). ``message`` is escaped."""
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Error"
    body = (
        '<section class="error-page">'
        f'<p class="code">{int(status)}</p>'
        f"<h1>{_h(phrase)}</h1>"
        f'<p class="lede" id="error-message">{_h(message)}</p>'
        '<p><a href="/">See all projects on this server</a></p>'
        "</section>"
    )
    return _document(f"{int(status)} {phrase} · Barnraise", body)
