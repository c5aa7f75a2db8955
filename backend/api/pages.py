"""The HTML pages: fill the plain views of ``backend.pages`` from the coordinator and render."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from backend.http import Request, Response
from backend.pages import (
    PAGE_HEADERS,
    ActionRow,
    ContributorRow,
    PrivacyView,
    ProjectPageView,
    ProjectSummaryView,
    TeamRow,
    VersionPoint,
    render_index,
    render_project_page,
)
from backend.pages.model_card import render_model_card
from backend.pages.render import CONTRIBUTOR_ROWS_SHOWN
from backend.pages.views import ModelCardView
from backend.services.finishing import EXAMPLES_TRAINED
from backend.services.samples import TEXT_RECIPES, page_samples
from federated import protocol
from federated.fetch import loading_snippet

SHORT_ID_CHARS = 6
"""Shown beside each name on the page: enough to tell two look-alike names apart."""

if TYPE_CHECKING:
    from backend.wsgi import App

PAGE_ROWS = CONTRIBUTOR_ROWS_SHOWN
"""Contributors and teams shown on a page at most (the JSON leaderboard has them all)."""


def html_response(text: str) -> Response:
    headers = [(k, v) for k, v in PAGE_HEADERS if k.lower() != "content-type"]
    content_type = dict((k.lower(), v) for k, v in PAGE_HEADERS).get(
        "content-type", "text/html; charset=utf-8"
    )
    return Response(200, text.encode("utf-8"), headers, content_type)


def contributor_row(r: protocol.LeaderboardContributor) -> ContributorRow:
    """A leaderboard row as a page shows it (the project page, a team's members)."""
    return ContributorRow(
        name=r.display_name,
        short_id=r.client_id[:SHORT_ID_CHARS],
        team=r.team,
        credit=r.credit,
        recent_credit=r.recent_credit,
        updates_accepted=r.updates_accepted,
        updates_rejected=r.updates_rejected,
        last_seen=r.last_seen,
        banned=r.banned,
        client_id=r.client_id,
        energy_joules=r.energy_joules,
        energy_measured_joules=r.energy_measured_joules,
    )


def index_page(app: App, req: Request) -> Response:
    coordinator = app.coordinator
    standings = coordinator.services.standings
    summaries = []
    for project in coordinator.projects():
        stats = standings.stats(project)
        latest = stats.versions[-1] if stats.versions else None
        summaries.append(
            ProjectSummaryView(
                name=project.name,
                description=project.description,
                recipe=project.recipe,
                mode=str(project.settings.get("mode", "sync")),
                status=project.status,
                current_version=project.current_version,
                contributors=stats.contributors,
                total_credit=stats.total_credit,
                accuracy=latest.metrics.get("accuracy") if latest else None,
                updated_at=latest.created_at if latest else None,
                state=coordinator.services.profiles.state(project),
            )
        )
    return html_response(render_index(summaries, now=coordinator.clock()))


def project_page(app: App, req: Request, project: str) -> Response:
    coordinator = app.coordinator
    record = coordinator.project(project)
    view = coordinator.services.projects.project_view(record)
    board = coordinator.services.standings.leaderboard(record)
    stats = coordinator.services.standings.stats(record)
    contributors = tuple(contributor_row(r) for r in board.contributors[:PAGE_ROWS])
    teams = tuple(
        TeamRow(
            name=t.team,
            members=t.members,
            credit=t.credit,
            recent_credit=t.recent_credit,
            updates_accepted=t.updates_accepted,
        )
        for t in board.teams[:PAGE_ROWS]
    )
    versions = tuple(
        VersionPoint(
            version=v.version,
            created_at=v.created_at,
            accuracy=v.metrics.get("accuracy"),
            loss=v.metrics.get("loss"),
            updates=v.updates,
            contributors=v.contributors,
        )
        for v in stats.versions
    )
    page = ProjectPageView(
        name=record.name,
        page_url=f"{app.public_url}/p/{record.name}",  # configured, never from Host
        now=coordinator.clock(),
        description=record.description,
        recipe=record.recipe,
        recipe_version=record.recipe_version,
        strategy=str(record.strategy.get("name", "")),
        mode=view.mode,
        status=record.status,
        data_mode=view.data_mode,
        codec=view.codec,
        current_version=record.current_version,
        key_fingerprint=view.key_fingerprint,
        invite_required=view.invite_required,
        contributors=contributors,
        teams=teams,
        versions=versions,
        contributors_total=len(board.contributors),
        teams_total=len(board.teams),
        total_credit=stats.total_credit,
        updates_accepted_total=stats.updates_accepted,
        actions=tuple(
            ActionRow(at=a.at, action=a.action, target=a.target, reason=a.reason, detail=a.detail)
            for a in stats.actions
        ),
        privacy=_privacy_view(view),
        samples=tuple((x.prompt, x.text) for x in page_samples(coordinator.context, record)),
        tokens_trained=_tokens_trained(record, stats.versions),
        model_digest=view.model_digest or "",
    )
    return html_response(render_project_page(page))


def _privacy_view(view: protocol.Project) -> PrivacyView | None:
    terms, spent = view.privacy, view.privacy_spent
    if terms is None or spent is None:
        return None
    return PrivacyView(
        mechanism=terms.mechanism,
        epsilon=terms.epsilon,
        delta=terms.delta,
        noise_multiplier=terms.noise_multiplier,
        clip_norm=spent.clip_norm if spent.clip_norm is not None else terms.clip_norm,
        clip_quantile=terms.clip_quantile,
        epsilon_spent=spent.epsilon,
        steps=spent.steps,
        exhausted=spent.exhausted,
    )


def _tokens_trained(record: Any, versions: Any) -> int | None:
    """A language model's bytes trained into it: its examples (windows) x their length."""
    seq_len = record.hparams.get("seq_len")
    if record.recipe not in TEXT_RECIPES or not isinstance(seq_len, int):
        return None
    for v in reversed(versions):
        examples = v.metrics.get(EXAMPLES_TRAINED)
        if isinstance(examples, int | float):
            return int(examples) * seq_len
    return 0


def model_card_page(app: App, req: Request, project: str) -> Response:
    coordinator = app.coordinator
    record = coordinator.project(project)
    view = coordinator.services.projects.project_view(record)
    stats = coordinator.services.standings.stats(record)
    current = next(v for v in reversed(stats.versions) if v.version == record.current_version)
    examples = current.metrics.get(EXAMPLES_TRAINED)
    page_url = f"{app.public_url}/p/{record.name}"
    file = Path(f"{record.name}-v{record.current_version}.safetensors")
    return html_response(
        render_model_card(
            ModelCardView(
                name=record.name,
                page_url=page_url,
                now=coordinator.clock(),
                status=record.status,
                version=record.current_version,
                created_at=current.created_at,
                digest=view.model_digest or "",
                key_fingerprint=view.key_fingerprint,
                recipe=record.recipe,
                recipe_version=record.recipe_version,
                description=record.description,
                data_mode=view.data_mode,
                strategy=str(record.strategy.get("name", "")),
                mode=view.mode,
                codec=view.codec,
                hparams=tuple((k, str(v)) for k, v in sorted(record.hparams.items())),
                metrics=tuple(
                    (k, float(v))
                    for k, v in sorted(current.metrics.items())
                    if isinstance(v, int | float) and k != EXAMPLES_TRAINED
                ),
                contributors=stats.contributors,
                updates_accepted=stats.updates_accepted,
                total_credit=stats.total_credit,
                examples_trained=int(examples) if isinstance(examples, int | float) else None,
                license=str(record.settings.get("model_license", "")),
                finished_reason=next((a.reason for a in stats.actions if a.action == "finish"), "")
                if record.status == "finished"
                else "",
                privacy=_privacy_view(view),
                load_snippet=loading_snippet(file, view),
            )
        )
    )
