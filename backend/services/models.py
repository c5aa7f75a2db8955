"""Model versions: the signed current model, and the tensor helpers around model state.

``save_tensors``/``load_tensors`` keep a strategy's state (momentum and the like) as a
safetensors blob; ``evaluate_state`` scores a model state on the recipe's test data.
Project creation (version 0) and aggregation (every later version) use them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from backend.services.context import ServiceContext
from backend.store import ProjectRecord, UpdateRecord, VersionRecord
from federated import protocol
from federated.provenance import Leaf, manifest_digest, merkle_root, ordered_leaves
from federated.recipes import Dataset, Recipe
from federated.signing import SigningKey


class ModelService:
    """What a contributor downloads: the signed manifest of the current version."""

    def __init__(self, ctx: ServiceContext) -> None:
        self._ctx = ctx

    def signed_model(self, project: ProjectRecord) -> protocol.SignedModel:
        """The current version's manifest and the signature made when it was published."""
        with self._ctx.store.read() as tx:
            version = tx.version(project.id, project.current_version)
        assert version is not None
        return protocol.SignedModel(
            manifest=version_manifest(project.name, version), signature=version.signature
        )

    def model_known(self, project: ProjectRecord, digest: str) -> bool:
        with self._ctx.store.read() as tx:
            return any(v.digest == digest for v in tx.versions(project.id))


def model_manifest(
    project: str,
    version: int,
    digest: str,
    created_at: float,
    *,
    parent: VersionRecord | None = None,
    updates: Sequence[UpdateRecord] = (),
    strategy_state_digest: str | None = None,
) -> protocol.ModelManifest:
    """The manifest a new version is published (and signed) as; whole seconds.

    ``parent`` is the version it was aggregated from (None only for version 0) and
    ``updates`` the updates aggregated into it: the manifest names the parent's model and
    signed manifest, and the Merkle root of those updates (``federated.provenance``)."""
    leaves = update_leaves(updates)
    return protocol.ModelManifest(
        project=project,
        version=version,
        digest=digest,
        created_at=int(created_at),
        parent_digest=None if parent is None else parent.digest,
        parent_manifest_digest=(
            None
            if parent is None
            else manifest_digest(protocol.to_wire(version_manifest(project, parent)))
        ),
        strategy_state_digest=strategy_state_digest,
        updates_root=merkle_root(Leaf(*pair) for pair in leaves),
        updates=len(leaves),
    )


def update_leaves(updates: Sequence[UpdateRecord]) -> tuple[tuple[str, str], ...]:
    """(update id, payload digest) of ``updates`` in Merkle tree order: what a version
    record keeps so that proofs can be served (``VersionRecord.leaves``)."""
    tree = ordered_leaves(Leaf(u.id, u.payload_digest) for u in updates)
    return tuple((leaf.update_id, leaf.payload_digest) for leaf in tree)


def version_manifest(project: str, version: VersionRecord) -> protocol.ModelManifest:
    """The manifest ``version`` was signed as, rebuilt from its record: exactly what
    ``model_manifest`` made when it was published. A version published before provenance
    (no ``updates_root``) had only project, version, digest and created_at."""
    legacy = version.updates_root is None
    return protocol.ModelManifest(
        project=project,
        version=version.version,
        digest=version.digest,
        created_at=int(version.created_at),
        parent_digest=version.parent_digest,
        parent_manifest_digest=version.parent_manifest_digest,
        strategy_state_digest=None if legacy else version.strategy_state_digest,
        updates_root=version.updates_root,
        updates=0 if legacy else version.updates,
    )


def sign_model(key: SigningKey, manifest: protocol.ModelManifest) -> str:
    """The project key's signature over exactly the manifest's wire form."""
    return key.sign_bytes(protocol.encode_canonical(manifest))


def save_tensors(tensors: Mapping[str, torch.Tensor]) -> bytes:
    from safetensors.torch import save

    return save({k: v.detach().contiguous().cpu() for k, v in tensors.items()})


def load_tensors(data: bytes) -> dict[str, torch.Tensor]:
    from safetensors.torch import load

    return dict(load(data))


def evaluate_state(
    recipe: Recipe, hparams: Mapping[str, Any], state: Mapping[str, torch.Tensor], data: Dataset
) -> dict[str, float]:
    from federated.training import load_state_into

    model = recipe.build_model(hparams)
    load_state_into(model, state)
    return {k: float(v) for k, v in recipe.evaluate(model, data).items()}
