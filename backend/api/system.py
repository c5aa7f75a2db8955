"""Health, metrics and the OpenAPI document."""

from __future__ import annotations

from typing import TYPE_CHECKING

from backend.http import Request, Response
from backend.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from backend.metrics import render as render_metrics
from federated import protocol

if TYPE_CHECKING:
    from backend.wsgi import App


def healthz(app: App, req: Request) -> Response:
    """200 ``ok``; 503 ``degraded`` naming the projects whose aggregation is overdue (the
    server answers, but a model is not moving forward), or while the disk is full."""
    overdue = app.coordinator.overdue_projects()  # reads the store: a dead store is a 500
    full = app.coordinator.storage.degraded()
    degraded = bool(overdue) or full
    health = protocol.Health(
        status="degraded" if degraded else "ok", aggregation_overdue=overdue, storage_full=full
    )
    return Response.json(protocol.to_wire(health), status=503 if degraded else 200)


def metrics(app: App, req: Request) -> Response:
    """The metrics this app's coordinator records into (every worker's, in multiprocess mode)."""
    app.coordinator.overdue_projects()  # sets barnraise_aggregation_overdue from the store
    return Response(200, render_metrics(app.coordinator.metrics), [], METRICS_CONTENT_TYPE)


def openapi(app: App, req: Request) -> Response:
    """The document generated from the route table (the app builds it once)."""
    return Response(200, app.openapi_json(), [], "application/json")
