"""Provenance: any version's signed manifest, inclusion proofs, and the organiser's audit.

Every published version's manifest names its parent and the Merkle root of its updates
(``backend.services.models.model_manifest``, ``federated.provenance``); this service
serves what a volunteer or an auditor needs to check that chain from outside (the signed
manifest of any version, the proof that an update is under a version's root) and checks it
from inside (``audit``: the chain, and every model, strategy state and update blob it
names against the blob store, and each update's signed upload manifest).

An update payload that retention deleted (``backend.services.retention``) cannot be
re-hashed: the audit counts it as pruned and checks what still binds its digest, the
version's signed updates root over the stored leaves and the contributor's signature over
the upload manifest naming that digest. A payload missing without being pruned is a
problem, as before.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field

from backend.errors import BadRequest, NotFound
from backend.services.context import ServiceContext
from backend.services.models import version_manifest
from backend.store import ProjectRecord, UpdateRecord, VersionRecord
from federated import protocol
from federated.errors import SignatureError
from federated.provenance import (
    Leaf,
    ProvenanceError,
    SignedManifest,
    check_chain,
    inclusion_proof,
    merkle_root,
)
from federated.signing import fingerprint, verify_bytes


def check_update_key(update: str | None) -> str:
    """An ``update=`` value: an update id or a payload digest; else 400."""
    if not update:
        raise BadRequest("say which update: ?update=<update id or payload digest>")
    if not (protocol.is_server_id(update) or protocol.is_digest(update)):
        raise BadRequest(
            f"{update[:80]!r} is neither an update id nor a sha256 payload digest", code="bad_id"
        )
    return update


@dataclass
class Audit:
    """What ``ProvenanceService.audit`` found, newest version first."""

    project: str
    versions: list[int] = field(default_factory=list)
    updates: int = 0
    pruned: int = 0  # of ``updates``: payloads deleted by retention (bytes not re-hashed)
    key_fingerprint: str = ""
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems and bool(self.versions)


class ProvenanceService:
    def __init__(self, ctx: ServiceContext) -> None:
        self._ctx = ctx

    def _version(self, project: ProjectRecord, version: int) -> VersionRecord:
        record = None
        if version <= project.current_version:
            with self._ctx.store.read() as tx:
                record = tx.version(project.id, version)
        if record is None:
            raise NotFound(
                f"project {project.name!r} has no version {version} (its current version is "
                f"{project.current_version})"
            )
        return record

    def signed_version(self, project: ProjectRecord, version: int) -> protocol.SignedModel:
        """Version ``version``'s manifest and the signature made when it was published."""
        record = self._version(project, version)
        return protocol.SignedModel(
            manifest=version_manifest(project.name, record), signature=record.signature
        )

    def proof(
        self, project: ProjectRecord, update: str, version: int | None = None
    ) -> protocol.InclusionProof:
        """The proof that ``update`` (an id or payload digest) is under ``version``'s
        ``updates_root``; by default under the version it was aggregated into."""
        check_update_key(update)
        with self._ctx.store.read() as tx:
            matches = tx.leaves_matching(project.id, update)
        found = sorted({v for v, _id, _digest in matches})
        if version is None:
            if not found:
                raise NotFound(
                    f"update {update} is in no published version of {project.name!r} (yet): "
                    "an update is listed once the version it was aggregated into is published"
                )
            if len(found) > 1:
                raise BadRequest(
                    f"payload {update} was aggregated into versions {found}: ask by update id"
                )
            version = found[0]
        record = self._version(project, version)
        if version not in found:
            where = f"it is in version {found[0]}" if found else "it is in no published version"
            raise NotFound(
                f"update {update} is not in version {version} of {project.name!r}; {where}"
            )
        with self._ctx.store.read() as tx:
            leaves = [Leaf(*pair) for pair in tx.version_leaves(project.id, version)]
        try:
            proof = inclusion_proof(leaves, update)
        except ProvenanceError as exc:
            raise BadRequest(str(exc)) from None
        assert record.updates_root is not None  # it has leaves: published with provenance
        return protocol.InclusionProof(
            project=project.name,
            version=version,
            update_id=proof.leaf.update_id,
            payload_digest=proof.leaf.payload_digest,
            index=proof.index,
            size=proof.size,
            path=list(proof.path),
            updates_root=record.updates_root,
        )

    def chain(self, project: ProjectRecord, top: int | None = None) -> list[SignedManifest]:
        """The signed manifests of versions ``top`` (default: current) down to 0, as the
        store holds them (a missing version is simply absent)."""
        top = project.current_version if top is None else top
        with self._ctx.store.read() as tx:
            records = [v for v in tx.versions(project.id) if v.version <= top]
        return [
            SignedManifest(protocol.to_wire(version_manifest(project.name, v)), v.signature)
            for v in sorted(records, key=lambda v: -v.version)
        ]

    def audit(self, project: ProjectRecord, top: int | None = None) -> Audit:
        """Check versions ``top`` (default: current) down to 0 against the store and the
        blobs: the signed chain holds (``federated.provenance.check_chain``), each version's
        model and strategy state hash to their digests, and each version's updates hash to
        its ``updates_root``, are as many as it says, and are stored, aggregated, with
        payloads that hash to their digests."""
        ctx = self._ctx
        top = project.current_version if top is None else top
        report = Audit(project.name, key_fingerprint=fingerprint(project.public_key))
        if not 0 <= top <= project.current_version:
            report.problems.append(
                f"there is no version {top}: the current version is {project.current_version}"
            )
            return report
        try:
            if ctx.keys.load(project.name).public_key_b64 != project.public_key:
                report.problems.append("the project's key file does not match its public key")
        except (FileNotFoundError, ValueError) as exc:
            report.problems.append(f"the project's signing key cannot be read: {exc}")
        entries = self.chain(project, top)
        chain = check_chain(entries, project.public_key, project=project.name)
        report.problems.extend(chain.problems)
        with ctx.store.read() as tx:
            records = {v.version: v for v in tx.versions(project.id) if v.version <= top}
            leaves = {v: tx.version_leaves(project.id, v) for v in records}
            stored = {u.id: u for u in tx.updates(project.id)}
            keys = {c.id: c.public_key for c in tx.clients(project.id)}
        for number in sorted(records, reverse=True):
            report.versions.append(number)
            record = records[number]
            report.problems.extend(self._blob_problems(record))
            report.updates += len(leaves[number])
            report.pruned += sum(
                1 for uid, _d in leaves[number] if uid in stored and _pruned(stored[uid])
            )
            report.problems.extend(
                _leaf_problems(record, leaves[number], stored, ctx, project.name, keys)
            )
        return report

    def _blob_problems(self, record: VersionRecord) -> list[str]:
        out = []
        named = [("model", record.digest)]
        if record.strategy_state_digest:
            named.append(("strategy state", record.strategy_state_digest))
        for what, digest in named:
            problem = _blob_problem(self._ctx, digest)
            if problem:
                out.append(f"version {record.version}: its {what} {digest[:16]}… {problem}")
        return out


def _blob_problem(ctx: ServiceContext, digest: str) -> str | None:
    try:
        return None if ctx.blobs.verify(digest) else "is stored with other bytes"
    except FileNotFoundError:
        return "is not stored"
    except ValueError:
        return "is not a digest"


def _pruned(update: UpdateRecord) -> bool:
    """Retention gave its payload up (``backend.services.retention``): the database no
    longer promises the bytes, whether or not the blob is deleted yet."""
    return update.payload_state != "kept"


def _upload_problem(update: UpdateRecord, project: str, keys: dict[str, str]) -> str | None:
    """Why ``update``'s upload manifest does not bind it, or None: signed by its
    contributor's key, for this project, task and contributor, naming its payload digest.
    What binds a pruned payload's digest besides the version's signed updates root."""
    key = keys.get(update.client_id)
    if key is None:
        return f"its contributor {update.client_id} is not stored"
    try:
        raw = base64.b64decode(update.manifest_b64.encode("ascii"), validate=True)
        verify_bytes(key, raw, update.signature)
        fields = json.loads(raw)
    except (SignatureError, ValueError, UnicodeError) as exc:
        return f"its upload manifest does not verify under its contributor's key ({exc})"
    expected = {
        "project": project,
        "task_id": update.task_id,
        "client_id": update.client_id,
        "payload_digest": update.payload_digest,
    }
    wrong = [k for k, v in expected.items() if not isinstance(fields, dict) or fields.get(k) != v]
    if wrong:
        return f"its signed upload manifest names another {', '.join(wrong)}"
    return None


def _leaf_problems(
    record: VersionRecord,
    pairs: list[tuple[str, str]],
    stored: dict[str, UpdateRecord],
    ctx: ServiceContext,
    project: str,
    keys: dict[str, str],
) -> list[str]:
    where = f"version {record.version}"
    if record.updates_root is None:
        return []  # published before provenance: check_chain already said so
    try:
        root = merkle_root(Leaf(*pair) for pair in pairs)
    except ProvenanceError as exc:
        return [f"{where}: its stored update list is malformed ({exc})"]
    out = []
    if root != record.updates_root or len(pairs) != record.updates:
        out.append(
            f"{where}: its {len(pairs)} stored updates hash to root {root[:16]}…, but it was "
            f"published with {record.updates} under root {record.updates_root[:16]}…"
        )
    for update_id, digest in pairs:
        update = stored.get(update_id)
        if update is None:
            out.append(f"{where}: update {update_id} is not stored")
            continue
        if update.payload_digest != digest:
            out.append(f"{where}: update {update_id} is stored with another payload digest")
            continue
        if update.status != "aggregated":
            out.append(f"{where}: update {update_id} is {update.status}, not aggregated")
        signed = _upload_problem(update, project, keys)
        if signed:
            out.append(f"{where}: update {update_id}: {signed}")
        if _pruned(update):
            continue  # its bytes are gone by retention: the digest is what is checked
        problem = _blob_problem(ctx, digest)
        if problem:
            out.append(f"{where}: the payload of update {update_id} {problem}")
    return out
