"""Provenance and the versions published before it: an old version keeps the manifest and
signature it had, a new version chains onto it, and the chain check says where it stops."""

from __future__ import annotations

import sqlite3
from typing import Any

import requests

from backend.coordinator import DB_FILE, Coordinator
from backend.services.models import version_manifest
from federated import protocol
from federated.provenance import SignedManifest, check_chain, manifest_digest
from federated.signing import verify

API = "http://backend.test/api/v1/projects/digits"


def test_a_version_from_before_provenance_keeps_its_manifest_and_signature(
    coordinator: Coordinator, http: requests.Session, make_project: Any, join: Any
) -> None:
    project = make_project("digits")
    key = coordinator.keys.load("digits")
    old = protocol.ModelManifest(
        project="digits",
        version=0,
        digest=coordinator.services.models.signed_model(project).manifest.digest,
        created_at=int(project.created_at),
    )
    # Make version 0 what an older coordinator stored: no provenance, signed as 4 fields.
    with sqlite3.connect(coordinator.data_dir / DB_FILE) as db:
        db.execute(
            "UPDATE versions SET updates_root = NULL, signature = ? WHERE version = 0",
            (key.sign_bytes(protocol.encode_canonical(old)),),
        )
    served = http.get(f"{API}/models/current").json()
    assert served["manifest"] == protocol.to_wire(old) and set(served["manifest"]) == {
        "project",
        "version",
        "digest",
        "created_at",
    }
    verify(project.public_key, served["manifest"], served["signature"])
    a, b = join("digits", "Ada"), join("digits", "Bob")
    for c in (a, b):
        task = c.lease(0)
        assert task is not None
        c.train_and_upload(task)
    assert coordinator.worker.run_once()
    v1 = http.get(f"{API}/versions/1/manifest").json()
    verify(project.public_key, v1["manifest"], v1["signature"])
    assert v1["manifest"]["parent_manifest_digest"] == manifest_digest(served["manifest"])
    entries = [SignedManifest.from_wire(v1), SignedManifest.from_wire(served)]
    report = check_chain(entries, project.public_key, project="digits")
    assert report.problems == (
        "version 0 was published before provenance (its manifest names no updates)",
    )
    # The rebuilt manifest of a new version is the one signed.
    with coordinator.store.read() as tx:
        record = tx.version(project.id, 1)
        leaves = tx.version_leaves(project.id, 1)
    assert record is not None and len(leaves) == 2 == record.updates
    assert protocol.to_wire(version_manifest("digits", record)) == v1["manifest"]
