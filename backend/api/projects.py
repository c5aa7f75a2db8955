"""Projects, challenge and join."""

from __future__ import annotations

from typing import TYPE_CHECKING

from backend.http import Request, Response
from federated import protocol

if TYPE_CHECKING:
    from backend.wsgi import App


def list_projects(app: App, req: Request) -> Response:
    coordinator = app.coordinator
    projects = [coordinator.project_view(p) for p in coordinator.projects()]
    summaries = [
        {
            k: p[k]
            for k in (
                "name",
                "description",
                "recipe",
                "mode",
                "status",
                "current_version",
                "invite_required",
                "page_url",
                "data_mode",
            )
        }
        for p in projects
    ]
    return Response.json({"projects": summaries})


def show_project(app: App, req: Request, project: str) -> Response:
    record = app.coordinator.project(project)
    return Response.json(app.coordinator.project_view(record))


def new_challenge(app: App, req: Request, project: str) -> Response:
    app.coordinator.project(project)
    req.json_object(required=False)
    return Response.json(app.coordinator.new_challenge(project))


def join_project(app: App, req: Request, project: str) -> Response:
    app.coordinator.project(project)
    body = req.message(protocol.JoinRequest)
    return Response.json(app.coordinator.join(project, body), status=201)
