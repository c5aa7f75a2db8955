"""Provenance: any version's signed manifest, and the proof that an update is in one."""

from __future__ import annotations

from typing import TYPE_CHECKING

from backend.http import Request, Response
from backend.ids import check_version_number
from backend.services.provenance import check_update_key
from federated import protocol

if TYPE_CHECKING:
    from backend.wsgi import App


def version_manifest(app: App, req: Request, project: str, version: str) -> Response:
    number = check_version_number(version)
    record = app.coordinator.project(project)
    signed = app.coordinator.services.provenance.signed_version(record, number)
    return Response.json(protocol.to_wire(signed))


def version_proof(app: App, req: Request, project: str, version: str) -> Response:
    number = check_version_number(version)
    update = check_update_key(req.query_value("update"))
    record = app.coordinator.project(project)
    proof = app.coordinator.services.provenance.proof(record, update, number)
    return Response.json(protocol.to_wire(proof))


def update_proof(app: App, req: Request, project: str) -> Response:
    update = check_update_key(req.query_value("update"))
    record = app.coordinator.project(project)
    proof = app.coordinator.services.provenance.proof(record, update)
    return Response.json(protocol.to_wire(proof))
