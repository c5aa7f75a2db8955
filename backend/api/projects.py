"""Projects, challenge and join."""

from __future__ import annotations

from typing import TYPE_CHECKING

from backend.http import Request, Response
from federated import protocol

if TYPE_CHECKING:
    from backend.wsgi import App


def list_projects(app: App, req: Request) -> Response:
    return Response.json(protocol.to_wire(app.coordinator.services.projects.project_list()))


def show_project(app: App, req: Request, project: str) -> Response:
    record = app.coordinator.project(project)
    return Response.json(protocol.to_wire(app.coordinator.services.projects.project_view(record)))


def new_challenge(app: App, req: Request, project: str) -> Response:
    app.coordinator.project(project)
    req.json_object(required=False)
    challenge = app.coordinator.services.membership.new_challenge(project)
    return Response.json(protocol.to_wire(challenge))


def join_project(app: App, req: Request, project: str) -> Response:
    app.coordinator.project(project)
    body = req.message(protocol.JoinRequest)
    joined = app.coordinator.services.membership.join(project, body)
    return Response.json(protocol.to_wire(joined), status=201)
