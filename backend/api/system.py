"""Health, metrics and the OpenAPI document."""

from __future__ import annotations

from typing import TYPE_CHECKING

from backend.http import Request, Response
from backend.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from backend.metrics import render as render_metrics

if TYPE_CHECKING:
    from backend.wsgi import App


def healthz(app: App, req: Request) -> Response:
    with app.coordinator.store.read() as tx:
        tx.projects()
    return Response.json({"status": "ok"})


def metrics(app: App, req: Request) -> Response:
    """The metrics this app's coordinator records into (every worker's, in multiprocess mode)."""
    return Response(200, render_metrics(app.coordinator.metrics), [], METRICS_CONTENT_TYPE)


def openapi(app: App, req: Request) -> Response:
    """The document generated from the route table (the app builds it once)."""
    return Response(200, app.openapi_json(), [], "application/json")
