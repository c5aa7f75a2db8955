"""The project page's "Organiser actions" section: every ban, unban, revoke and rollback,
newest first, with the organiser's reason, so that volunteers see how the project is run.

Reasons and details are organiser text: escaped here like every other user text
(``html.escape`` with quotes).
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

from backend.pages.formatting import format_relative, human_utc, iso_utc
from backend.pages.views import ActionRow

ACTION_ROWS_SHOWN = 20

_LABELS = {
    "ban": "Banned contributor",
    "unban": "Lifted a ban on",
    "revoke": "Revoked the credit of update",
    "rollback": "Rolled the model back to version",
}


def _h(text: object) -> str:
    return escape(str(text), quote=True)


def _row(row: ActionRow, now: float) -> str:
    label = _LABELS.get(row.action, row.action)
    target = row.target if row.action == "rollback" else f"#{row.target}"
    detail = f'<p class="note">{_h(row.detail)}</p>' if row.detail else ""
    return (
        f'<li class="action action-{_h(row.action)}">'
        f'<time datetime="{iso_utc(row.at)}" title="{human_utc(row.at)}">'
        f"{_h(format_relative(row.at, now))}</time> "
        f"<b>{_h(label)}</b> <code>{_h(target)}</code>"
        f'<p class="reason">{_h(row.reason)}</p>'
        f"{detail}</li>"
    )


def render_actions(actions: Sequence[ActionRow], now: float) -> str:
    """The section, or nothing when the organiser has taken no action."""
    if not actions:
        return ""
    rows = "".join(_row(a, now) for a in actions[:ACTION_ROWS_SHOWN])
    return (
        '<section id="actions"><h2>Organiser actions</h2>'
        '<p class="table-note">Bans, revoked credit and rollbacks, newest first, with the '
        "organiser&rsquo;s reasons. A banned contributor gets no more work; a rollback "
        "publishes an earlier model as a new, signed version.</p>"
        f'<ul class="card action-list">{rows}</ul></section>'
    )
