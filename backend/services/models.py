"""Model versions: the signed current model, and the tensor helpers around model state.

``save_tensors``/``load_tensors`` keep a strategy's state (momentum and the like) as a
safetensors blob; ``evaluate_state`` scores a model state on the recipe's test data.
Project creation (version 0) and aggregation (every later version) use them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from backend.services.context import ServiceContext
from backend.store import ProjectRecord
from federated import protocol
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
            manifest=model_manifest(
                project.name, version.version, version.digest, version.created_at
            ),
            signature=version.signature,
        )

    def model_known(self, project: ProjectRecord, digest: str) -> bool:
        with self._ctx.store.read() as tx:
            return any(v.digest == digest for v in tx.versions(project.id))


def model_manifest(
    project: str, version: int, digest: str, created_at: float
) -> protocol.ModelManifest:
    """The manifest a version is published (and signed) as; whole seconds."""
    return protocol.ModelManifest(
        project=project, version=version, digest=digest, created_at=int(created_at)
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
