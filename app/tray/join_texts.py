"""The words of the join dialog: the consent statement, the already-joined note, the
project page's descriptions and the suggested leaderboard name. No Qt here."""

from __future__ import annotations

import secrets
from pathlib import Path

from app.contributor.privacy import disclosure
from app.tray.engine_port import DATA_LOCAL, ExistingIdentity, ProjectPreview

__all__ = [
    "already_joined_text",
    "consent_text",
    "data_mode_text",
    "escape_html",
    "strategy_text",
    "suggest_display_name",
]


def escape_html(text: str) -> str:
    """``&``, ``<`` and ``>`` escaped, for names shown in rich-text labels."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def suggest_display_name() -> str:
    """A leaderboard name that says nothing about the volunteer (the CLI suggests the same)."""
    return f"volunteer-{secrets.token_hex(2)}"


def already_joined_text(project: str, identity: ExistingIdentity) -> str:
    """What the dialog says when this computer already joined ``project`` (plain text)."""
    who = (
        f"as {identity.display_name} / client {identity.client_id}"
        if identity.display_name
        else f"as client {identity.client_id}"
    )
    return (
        f"You already joined {project} here {who}. Joining again keeps that identity and its "
        "credit; only the name and team are updated. To start afresh as a new contributor "
        "instead, leave the project first (Leave project… in the main window)."
    )


def consent_text(
    preview: ProjectPreview,
    display_name: str,
    team: str | None,
    data_path: Path | None,
    identity: ExistingIdentity | None = None,
    *,
    key_file: Path | None = None,
) -> str:
    """The consent statement (HTML): what is sent, where, and what never leaves.
    ``display_name`` and ``team`` are exactly what the join will send; ``key_file``: the
    private file the key is kept in, where this computer has no keychain."""
    host = escape_html(preview.target.host or preview.target.server_url)
    who = escape_html(display_name) + (f" (team {escape_html(team)})" if team else "")
    if identity is not None and identity.display_name and identity.display_name != display_name:
        who += f", in place of {escape_html(identity.display_name)}"
    if identity is not None:
        key = (
            "<li>the public key this computer already uses in this project (client "
            f"{escape_html(identity.client_id)}): you keep that identity and its credit;</li>"
        )
    else:
        kept = f"the private file {escape_html(str(key_file))}" if key_file else "your keychain"
        key = f"<li>a public key created now for this project (its private half stays in {kept});</li>"
    if preview.data_mode == DATA_LOCAL:
        data = (
            f"the data in <b>{escape_html(str(data_path))}</b>: it is read only by the training process "
            "on this computer and never uploaded"
        )
    else:
        data = "any personal file: this project trains on a public data shard it downloads"
    return (
        f"<p>By joining <b>{escape_html(preview.name)}</b>, this computer sends to <b>{host}</b>:</p>"
        "<ul>"
        f"<li>the name <b>{who}</b>, shown on the project's public leaderboard;</li>"
        f"{key}"
        "<li>for each task: the model update computed here (changes to the model's weights), "
        "the number of examples used, "
        + (
            "and the compute time (no loss computed on your data).</li>"
            if preview.privacy
            else "training metrics (loss, accuracy) and the compute time.</li>"
        )
        + "</ul>"
        + "".join(f"<p>{escape_html(line)}</p>" for line in disclosure(preview.privacy))
        + f"<p>It never sends {data}, your private key, or anything else on this computer.</p>"
        "<p>Barnraise computes only within your limits and schedule (Preferences), and you can "
        "pause, snooze or leave at any time.</p>"
    )


def data_mode_text(preview: ProjectPreview) -> str:
    """What the project trains on, for the project page (plain text)."""
    if preview.data_mode == DATA_LOCAL:
        columns = preview.data_columns or {}
        features = ", ".join(str(c) for c in columns.get("features") or []) or "—"
        return (
            f"Your own data (stays on this computer): label column “{columns.get('label', '?')}”, "
            f"features {features}"
        )
    return "A public data shard the project hands out (nothing of yours)"


def strategy_text(preview: ProjectPreview) -> str:
    """The aggregation strategy and the current model version, for the project page."""
    version = (
        f", model version {preview.current_version}" if preview.current_version is not None else ""
    )
    return f"{preview.strategy or '—'}{version}"
