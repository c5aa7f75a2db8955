"""A contributor's page, ``/p/NAME/c/CLIENT_ID``: what a BOINC volunteer looks up.

Their name, team, rank and credit as on the leaderboard; credit over time; recent average
credit; the energy their computer reported (labelled so, never credited); updates accepted and refused, with the code of each refusal and when (never its
payload, task or anything private); first and last seen; banned if banned.
"""

from __future__ import annotations

from backend.pages.credit_chart import render_credit_chart
from backend.pages.document import document, h, time_element
from backend.pages.formatting import (
    ENERGY_NOTE,
    energy_measured_share,
    format_count,
    format_credit,
    format_energy,
)
from backend.pages.links import project_href, team_href
from backend.pages.views import CREDIT_UNIT, ContributorPageView

CODE_WORDS = {
    "wrong_base": "too stale: the model had moved on",
    "lease_expired": "sent after its lease ended",
    "non_finite": "it held NaN or infinite numbers",
    "norm_too_large": "a change far larger than the project allows",
    "norm_outlier": "far larger than the other updates of its round",
    "bad_payload": "not a valid update",
    "bad_signature": "its signature did not match",
    "digest_mismatch": "its bytes did not match their digest",
    "manifest_mismatch": "it did not match its task",
    "payload_too_large": "larger than the project takes",
    "empty_update": "it changed nothing",
    "echoes_base": "it sent the model back unchanged",
    "duplicate_payload": "another update already sent it",
    "too_many_examples": "it claimed more examples than its task had",
    "replication_mismatch": "a spot check trained it again and got another result",
    "harms_model": "it made the model worse",
    "version_gate": "its version failed the held-out check",
    "banned": "the contributor was banned",
    "revoked": "the organiser revoked its credit",
}
"""A few words on the refusal codes a volunteer meets most (docs/protocol.md has them all)."""


def team_link(project: str, team: str | None) -> str:
    if not team:
        return '<span class="muted">no team</span>'
    href = team_href(project, team)
    return f'<a href="{h(href)}">{h(team)}</a>' if href else h(team)


def energy_cell(joules: float, measured_joules: float) -> str:
    """A table cell: the energy reported and how much of it was measured."""
    how = energy_measured_share(joules, measured_joules)
    title = f' title="{h(f"{how}, {ENERGY_NOTE}")}"' if how else ""
    return f'<td class="num energy"{title}>{h(format_energy(joules))}</td>'


def energy_value(joules: float, measured_joules: float) -> str:
    """The contributor page's energy figure, with how it was known and by whom."""
    how = energy_measured_share(joules, measured_joules)
    if not how:
        return '<span class="muted">none reported</span>'
    return f"{h(format_energy(joules))} <small>{h(how)}, {h(ENERGY_NOTE)}</small>"


def stat_item(label: str, value: str, element_id: str = "") -> str:
    attr = f' id="{element_id}"' if element_id else ""
    return f'<div class="stat"><dt>{h(label)}</dt><dd{attr}>{value}</dd></div>'


def _refusals(view: ContributorPageView) -> str:
    if not view.refusal_codes and not view.updates_rejected:
        return (
            '<section id="refusals"><h2>Refusals</h2>'
            '<p class="note">None: every update sent was accepted.</p></section>'
        )
    counts = "".join(
        f"<tr><td><code>{h(code)}</code></td><td>{h(CODE_WORDS.get(code, ''))}</td>"
        f'<td class="num">{format_count(n)}</td></tr>'
        for code, n in view.refusal_codes
    ) or ('<tr><td class="empty" colspan="3">No refusal with a recorded reason.</td></tr>')
    newest = "".join(
        f"<tr><td>{time_element(r.at, view.now)}</td><td><code>{h(r.code)}</code></td></tr>"
        for r in view.refusals
    )
    listed = (
        '<h3>Newest refusals</h3><div class="table-scroll" role="region" '
        'aria-label="Newest refusals" tabindex="0"><table id="refusals-table"><thead><tr>'
        '<th scope="col">When</th><th scope="col">Code</th></tr></thead>'
        f"<tbody>{newest}</tbody></table></div>"
        if newest
        else ""
    )
    return (
        '<section id="refusals"><h2>Refusals</h2>'
        '<p class="note">Each refused upload counts once; the reasons below are those of '
        "uploads refused for good and of updates kept out of an aggregate (an upload cut "
        "short and sent again has none).</p>"
        '<div class="table-scroll" role="region" aria-label="Refusals by reason" tabindex="0">'
        '<table id="refusal-codes-table"><thead><tr><th scope="col">Code</th>'
        '<th scope="col">Meaning</th><th class="num" scope="col">Count</th></tr></thead>'
        f"<tbody>{counts}</tbody></table></div>{listed}</section>"
    )


def render_contributor_page(view: ContributorPageView) -> str:
    banned = (
        ' <span class="badge badge-banned" title="banned by the organiser">banned</span>'
        if view.banned
        else ""
    )
    banned_note = (
        '<p class="note" id="banned-note">Banned by the organiser: this contributor takes no '
        "more work. The project page lists the organiser&rsquo;s actions and why.</p>"
        if view.banned
        else ""
    )
    rank = format_count(view.rank) if view.rank is not None else "&ndash;"
    body = (
        '<section class="project-head">'
        f'<p class="eyebrow">Contributor · <a href="{h(project_href(view.project))}">'
        f"{h(view.project)}</a></p>"
        f'<h1><span id="contributor-name">{h(view.name)}</span> '
        f'<span class="muted id">#{h(view.client_id[:6])}</span>{banned}</h1>'
        f'<p class="lede" id="contributor-team">Team: {team_link(view.project, view.team)}</p>'
        '<ul class="facts">'
        f"<li><b>First seen</b>{time_element(view.first_seen, view.now)}</li>"
        f"<li><b>Last seen</b>{time_element(view.last_seen, view.now)}</li>"
        f'<li><b>Id</b><code id="client-id">{h(view.client_id)}</code></li>'
        f"</ul>{banned_note}</section>\n"
        '<section><dl class="stats" id="stats">'
        + stat_item("Rank", rank, "rank")
        + stat_item(
            "Credit",
            f"{format_credit(view.credit)} <small>{CREDIT_UNIT}</small>",
            "credit",
        )
        + stat_item(
            "Recent average",
            f"{format_credit(view.recent_credit)} <small>{CREDIT_UNIT}</small>",
            "recent-credit",
        )
        + stat_item(
            "Energy given",
            energy_value(view.energy_joules, view.energy_measured_joules),
            "energy",
        )
        + stat_item("Updates accepted", format_count(view.updates_accepted), "updates-accepted")
        + stat_item("Updates refused", format_count(view.updates_rejected), "updates-rejected")
        + "</dl></section>\n"
        '<section id="progress"><h2>Credit over time</h2><div class="charts">'
        + render_credit_chart(view.credit_days, view.first_seen, view.now, who="their work")
        + "</div></section>\n"
        + _refusals(view)
    )
    return document(
        f"{view.name} · {view.project} · Barnraise",
        body,
        description=f"A contributor to {view.project} on Barnraise",
    )
