"""Leaderboard, stats and a contributor's own standing, as JSON."""

from __future__ import annotations

from typing import TYPE_CHECKING

from backend.http import Request, Response
from backend.ids import check_server_id
from federated import protocol

if TYPE_CHECKING:
    from backend.wsgi import App


def leaderboard(app: App, req: Request, project: str) -> Response:
    record = app.coordinator.project(project)
    return Response.json(protocol.to_wire(app.coordinator.services.standings.leaderboard(record)))


def project_stats(app: App, req: Request, project: str) -> Response:
    record = app.coordinator.project(project)
    return Response.json(protocol.to_wire(app.coordinator.services.standings.stats(record)))


def me(app: App, req: Request, project: str) -> Response:
    record = app.coordinator.project(project)
    client = app.authenticate(req, record)
    return Response.json(protocol.to_wire(app.coordinator.services.standings.me(record, client)))


def update_status(app: App, req: Request, project: str, update_id: str) -> Response:
    check_server_id(update_id, "update id")
    record = app.coordinator.project(project)
    client = app.authenticate(req, record)
    status = app.coordinator.services.standings.update_status(record, client, update_id)
    return Response.json(protocol.to_wire(status))
