"""A team's page, ``/p/NAME/t/TEAM``: its members (each linking to their page), the team's
credit over time, recent average and updates accepted and refused."""

from __future__ import annotations

from backend.pages.contributor_page import stat_item
from backend.pages.credit_chart import render_credit_chart
from backend.pages.document import document, h, time_element
from backend.pages.formatting import format_count, format_credit
from backend.pages.links import contributor_href, project_href
from backend.pages.views import CREDIT_UNIT, ContributorRow, TeamPageView


def _member_row(rank: int, row: ContributorRow, view: TeamPageView) -> str:
    name = h(row.name)
    if row.client_id:
        name = f'<a href="{h(contributor_href(view.project, row.client_id))}">{name}</a>'
    if row.banned:
        name += ' <span class="badge badge-banned" title="banned by the organiser">banned</span>'
    return (
        "<tr>"
        f'<td class="rank num">{rank}</td>'
        f'<td class="name">{name} <span class="muted id">#{h(row.short_id)}</span></td>'
        f'<td class="num" title="{row.credit:,.3f} {CREDIT_UNIT}">{format_credit(row.credit)}</td>'
        f'<td class="num">{format_credit(row.recent_credit)}</td>'
        f'<td class="num">{format_count(row.updates_accepted)}</td>'
        f'<td class="num">{format_count(row.updates_rejected)}</td>'
        f"<td>{time_element(row.last_seen, view.now)}</td>"
        "</tr>"
    )


def render_team_page(view: TeamPageView) -> str:
    rank = format_count(view.rank) if view.rank is not None else "&ndash;"
    head = (
        '<th class="num" scope="col">#</th><th scope="col">Member</th>'
        f'<th class="num" scope="col">Credit ({CREDIT_UNIT})</th>'
        '<th class="num" scope="col">Recent</th><th class="num" scope="col">Accepted</th>'
        '<th class="num" scope="col">Refused</th><th scope="col">Last seen</th>'
    )
    rows = "".join(_member_row(i, m, view) for i, m in enumerate(view.members, start=1))
    body = (
        '<section class="project-head">'
        f'<p class="eyebrow">Team · <a href="{h(project_href(view.project))}">'
        f"{h(view.project)}</a></p>"
        f'<h1 id="team-name">{h(view.name)}</h1>'
        f'<p class="lede">{format_count(len(view.members))} '
        f"member{'s' if len(view.members) != 1 else ''}, training together since "
        f"{time_element(view.first_seen, view.now)}.</p></section>\n"
        '<section><dl class="stats" id="stats">'
        + stat_item("Rank", rank, "rank")
        + stat_item(
            "Credit", f"{format_credit(view.credit)} <small>{CREDIT_UNIT}</small>", "credit"
        )
        + stat_item(
            "Recent average",
            f"{format_credit(view.recent_credit)} <small>{CREDIT_UNIT}</small>",
            "recent-credit",
        )
        + stat_item("Updates accepted", format_count(view.updates_accepted), "updates-accepted")
        + stat_item("Updates refused", format_count(view.updates_rejected), "updates-rejected")
        + "</dl></section>\n"
        '<section id="progress"><h2>Credit over time</h2><div class="charts">'
        + render_credit_chart(view.credit_days, view.first_seen, view.now, who="the team")
        + "</div></section>\n"
        '<section id="members"><h2>Members</h2>'
        '<div class="table-scroll" role="region" aria-label="Members ranked by credit" '
        f'tabindex="0"><table id="members-table"><thead><tr>{head}</tr></thead>'
        f"<tbody>{rows}</tbody></table></div></section>"
    )
    return document(
        f"{view.name} · team · {view.project} · Barnraise",
        body,
        description=f"A team of contributors to {view.project} on Barnraise",
    )
