"""Provenance anyone can check: the versions of a project as a signed hash chain.

Each published version's ``ModelManifest`` (signed with the project key) names its parent's
model digest and the sha256 of its parent's signed manifest, the digest of the strategy
state it carries, and the Merkle root of the updates aggregated into it. With the project's
public key and the manifests from version N down to 0, anyone can check that the history
is whole and unchanged (``check_chain``), and that a given update is one of version N's
(``verify_inclusion``, against a proof from ``inclusion_proof``).

The Merkle tree is RFC 6962's (section 2.1; RFC 9162 section 2.1 for the proofs): sha256,
leaves hashed as ``sha256(0x00 || data)`` and nodes as ``sha256(0x01 || left || right)``,
so a leaf can never pass for a node; the root of no leaves is ``sha256()``. A leaf's data is
``"<update id>:<payload digest>"`` (ASCII), and the leaves of a version are in the byte order
of their data, so the same set of updates always gives the same root.

Pure: no I/O, no clock. Both programs use it; it imports neither.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from federated.errors import FederatedError, SignatureError
from federated.protocol import ModelManifest, ProtocolError, convert, is_digest, is_server_id
from federated.protocol.limits import MAX_PROOF_PATH
from federated.signing import canonical_json, verify

LEAF_PREFIX = b"\x00"
NODE_PREFIX = b"\x01"
EMPTY_ROOT = hashlib.sha256(b"").hexdigest()
"""The root of a version with no updates (version 0)."""


class ProvenanceError(FederatedError, ValueError):
    """A chain, a proof or a leaf list that does not check out; the message says what."""


@dataclass(frozen=True)
class Leaf:
    """One update of a version: its id and the sha256 of its payload."""

    update_id: str
    payload_digest: str

    def __post_init__(self) -> None:
        if not is_server_id(self.update_id):
            raise ProvenanceError(f"{self.update_id[:80]!r} is not an update id")
        if not is_digest(self.payload_digest):
            raise ProvenanceError(f"{self.payload_digest[:80]!r} is not a sha256 hex digest")

    def data(self) -> bytes:
        return f"{self.update_id}:{self.payload_digest}".encode("ascii")

    def hash(self) -> bytes:
        return hashlib.sha256(LEAF_PREFIX + self.data()).digest()


def ordered_leaves(leaves: Iterable[Leaf]) -> list[Leaf]:
    """The leaves in their tree order (by their data's bytes); a repeated update id is an
    error, since every update is aggregated once."""
    out = sorted(leaves, key=Leaf.data)
    ids = [leaf.update_id for leaf in out]
    if len(set(ids)) != len(ids):
        raise ProvenanceError("an update is listed twice")
    return out


def _node(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(NODE_PREFIX + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two smaller than ``n`` (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


def _root(hashes: Sequence[bytes]) -> bytes:
    n = len(hashes)
    if n == 1:
        return hashes[0]
    k = _split(n)
    return _node(_root(hashes[:k]), _root(hashes[k:]))


def merkle_root(leaves: Iterable[Leaf]) -> str:
    """The hex root over ``leaves`` (put in tree order here; the input order is irrelevant)."""
    hashes = [leaf.hash() for leaf in ordered_leaves(leaves)]
    if not hashes:
        return EMPTY_ROOT
    return _root(hashes).hex()


def _path(m: int, hashes: Sequence[bytes]) -> list[bytes]:
    n = len(hashes)
    if n == 1:
        return []
    k = _split(n)
    if m < k:
        return [*_path(m, hashes[:k]), _root(hashes[k:])]
    return [*_path(m - k, hashes[k:]), _root(hashes[:k])]


@dataclass(frozen=True)
class Proof:
    """Where a leaf sits (``index`` of ``size``) and its sibling hashes from the bottom up."""

    leaf: Leaf
    index: int
    size: int
    path: tuple[str, ...]


def inclusion_proof(leaves: Iterable[Leaf], update: str) -> Proof:
    """The proof that the update with id or payload digest ``update`` is among ``leaves``."""
    tree = ordered_leaves(leaves)
    found = [i for i, leaf in enumerate(tree) if update in (leaf.update_id, leaf.payload_digest)]
    if not found:
        raise ProvenanceError(f"update {update[:80]!r} is not among these {len(tree)} updates")
    if len(found) > 1:
        raise ProvenanceError(
            f"{len(found)} updates have payload {update[:80]}; ask by update id instead"
        )
    index = found[0]
    path = _path(index, [leaf.hash() for leaf in tree])
    return Proof(tree[index], index, len(tree), tuple(h.hex() for h in path))


def verify_inclusion(leaf: Leaf, index: int, size: int, path: Sequence[str], root: str) -> None:
    """Return if ``path`` proves ``leaf`` is leaf ``index`` of the ``size``-leaf tree whose
    root is ``root`` (RFC 9162, section 2.1.3.2); else ``ProvenanceError``."""
    if not 0 <= index < size:
        raise ProvenanceError(f"leaf index {index} is outside a tree of {size} leaves")
    if len(path) > MAX_PROOF_PATH or not all(is_digest(p) for p in path):
        raise ProvenanceError("the proof's path is not a list of sha256 hex digests")
    if not is_digest(root):
        raise ProvenanceError(f"{root[:80]!r} is not a sha256 hex root")
    fn, sn = index, size - 1
    r = leaf.hash()
    for sibling in path:
        if sn == 0:
            raise ProvenanceError("the proof's path is longer than the tree is deep")
        p = bytes.fromhex(sibling)
        if fn & 1 or fn == sn:
            r = _node(p, r)
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            r = _node(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProvenanceError("the proof's path is shorter than the tree is deep")
    if r.hex() != root:
        raise ProvenanceError(
            f"update {leaf.update_id} (payload {leaf.payload_digest[:12]}…) is not under "
            f"root {root[:12]}…: the proof does not lead to it"
        )


# --- the chain of versions ---------------------------------------------------------------


@dataclass(frozen=True)
class SignedManifest:
    """One version as published: the manifest's wire form (what was signed) and the
    signature. Keep the wire form as received: the signature covers exactly it."""

    manifest: Mapping[str, Any]
    signature: str

    @classmethod
    def from_wire(cls, obj: Any) -> SignedManifest:
        """``{"manifest": {...}, "signature": "..."}`` (a ``SignedModel`` answer)."""
        if (
            not isinstance(obj, Mapping)
            or not isinstance(obj.get("manifest"), Mapping)
            or not isinstance(obj.get("signature"), str)
        ):
            raise ProvenanceError("not a signed manifest: expected {manifest, signature}")
        return cls(dict(obj["manifest"]), str(obj["signature"]))

    def digest(self) -> str:
        """sha256 of the manifest's canonical JSON: what the next version names as
        ``parent_manifest_digest``."""
        return manifest_digest(self.manifest)


def manifest_digest(manifest: Mapping[str, Any]) -> str:
    return hashlib.sha256(canonical_json(dict(manifest))).hexdigest()


@dataclass(frozen=True)
class ChainReport:
    """What ``check_chain`` found: the manifests that parsed (newest first) and every
    problem, in words; the chain holds when there are none."""

    manifests: tuple[ModelManifest, ...]
    problems: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.problems and bool(self.manifests)


def _parsed(
    entry: SignedManifest, public_key_b64: str, problems: list[str]
) -> ModelManifest | None:
    where = f"version {entry.manifest.get('version')!r}"
    try:
        verify(public_key_b64, entry.manifest, entry.signature)
    except SignatureError as exc:
        problems.append(f"{where}: the signature does not verify ({exc})")
        return None
    try:
        return convert(dict(entry.manifest), ModelManifest, what=f"the manifest of {where}")
    except ProtocolError as exc:
        problems.append(f"{where}: {exc}")
        return None


def _raw_version(entry: SignedManifest) -> int | None:
    version = entry.manifest.get("version")
    return version if isinstance(version, int) and not isinstance(version, bool) else None


def _safe_digest(entry: SignedManifest) -> str | None:
    try:
        return entry.digest()
    except (TypeError, ValueError):
        return None


def _link(child: ModelManifest, parent: SignedManifest) -> list[str]:
    """What is wrong with ``child``'s (verified) links to ``parent``, the entry below it
    (compared as stored, verified or not: a changed parent shows in its child's links too)."""
    where = f"version {child.version}"
    if child.updates_root is None:
        return [
            f"{where} was published before provenance (its manifest names no parent and no "
            "updates): the chain cannot be checked past it"
        ]
    problems: list[str] = []
    version = _raw_version(parent)
    parent_model = parent.manifest.get("digest")
    if child.parent_digest != parent_model:
        problems.append(
            f"{where} names parent model {str(child.parent_digest)[:16]}…, but version "
            f"{version} is {str(parent_model)[:16]}…"
        )
    parent_manifest = _safe_digest(parent)
    if child.parent_manifest_digest != parent_manifest:
        problems.append(
            f"{where} names parent manifest {str(child.parent_manifest_digest)[:16]}…, but "
            f"version {version}'s manifest hashes to {str(parent_manifest)[:16]}…"
        )
    return problems


def _genesis(first: ModelManifest) -> list[str]:
    if first.updates_root is None:
        return ["version 0 was published before provenance (its manifest names no updates)"]
    problems: list[str] = []
    if first.parent_digest is not None or first.parent_manifest_digest is not None:
        problems.append("version 0 names a parent: the first version has none")
    if first.updates != 0 or first.updates_root != EMPTY_ROOT:
        problems.append("version 0 claims updates: the first version has none")
    return problems


def check_chain(
    entries: Sequence[SignedManifest], public_key_b64: str, *, project: str | None = None
) -> ChainReport:
    """Check versions N, N-1, …, 0 (in that order): every signature verifies under
    ``public_key_b64``, every manifest is well formed and of one project, the versions are
    consecutive and end at 0, and each version names its parent's model digest and signed
    manifest digest. Reports every problem found rather than stopping at the first."""
    problems: list[str] = []
    if not entries:
        return ChainReport((), ("no versions to check",))
    parsed = [_parsed(e, public_key_b64, problems) for e in entries]
    manifests = tuple(m for m in parsed if m is not None)
    names = {m.project for m in manifests}
    if project is not None and names - {project}:
        problems.append(f"manifests of another project: {', '.join(sorted(names - {project}))}")
    elif len(names) > 1:
        problems.append(f"manifests of several projects: {', '.join(sorted(names))}")
    versions = [_raw_version(e) for e in entries]
    for i, (child_v, parent_v) in enumerate(itertools.pairwise(versions)):
        if child_v is None or parent_v is None:
            continue  # a manifest without a version number: already reported
        if child_v != parent_v + 1:
            problems.append(
                f"version {child_v} is followed by version {parent_v}: "
                + (
                    f"version(s) {parent_v + 1}–{child_v - 1} are missing"
                    if child_v > parent_v + 1
                    else "versions must run from N down to 0, each once"
                )
            )
            continue
        child = parsed[i]
        if child is not None:  # a child whose signature fails vouches for nothing
            problems.extend(_link(child, entries[i + 1]))
    last = versions[-1]
    if last is not None and last != 0:
        problems.append(f"the chain stops at version {last}: version(s) 0–{last - 1} are missing")
    elif parsed[-1] is not None:
        problems.extend(_genesis(parsed[-1]))
    return ChainReport(manifests, tuple(problems))


def verify_chain(
    entries: Sequence[SignedManifest], public_key_b64: str, *, project: str | None = None
) -> tuple[ModelManifest, ...]:
    """``check_chain``, raising ``ProvenanceError`` listing every problem; the manifests,
    newest first, when the chain holds."""
    report = check_chain(entries, public_key_b64, project=project)
    if not report.ok:
        raise ProvenanceError("; ".join(report.problems))
    return report.manifests


__all__ = [
    "EMPTY_ROOT",
    "ChainReport",
    "Leaf",
    "Proof",
    "ProvenanceError",
    "SignedManifest",
    "check_chain",
    "inclusion_proof",
    "manifest_digest",
    "merkle_root",
    "ordered_leaves",
    "verify_chain",
    "verify_inclusion",
]
