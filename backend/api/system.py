"""Health, metrics and the OpenAPI document."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from backend.http import Request, Response
from backend.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from backend.metrics import REGISTRY

if TYPE_CHECKING:
    from backend.wsgi import App

_OPENAPI_CACHE: dict[str, bytes] = {}


def healthz(app: App, req: Request) -> Response:
    with app.coordinator.store.read() as tx:
        tx.projects()
    return Response.json({"status": "ok"})


def metrics(app: App, req: Request) -> Response:
    return Response.text(REGISTRY.render(), METRICS_CONTENT_TYPE)


def openapi(app: App, req: Request) -> Response:
    body = _OPENAPI_CACHE.get("doc")
    if body is None:
        from backend.openapi import build_openapi

        body = json.dumps(build_openapi(), ensure_ascii=False).encode("utf-8")
        _OPENAPI_CACHE["doc"] = body
    return Response(200, body, [], "application/json")
