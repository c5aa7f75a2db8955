"""Error feedback: what lossy encoding dropped, carried into the next update."""

from __future__ import annotations

import torch

from federated.codec.model import decode_model, encode_model
from federated.validation import format_shape, validate_values

__all__ = ["ErrorFeedback"]


class ErrorFeedback:
    """What lossy encoding dropped, per tensor name, to be sent with the next update.

    A client keeps one per project for as long as it contributes (persist it with
    ``to_bytes``/``from_bytes``): ``encode_update(..., feedback=fb)`` encodes
    ``delta + residual`` and keeps ``(delta + residual) - decoded`` as the new residual,
    so over many rounds nothing is lost, only delayed. Works with every codec
    (the residual of ``f32`` is zero, so it is not kept).
    """

    def __init__(self) -> None:
        self._residual: dict[str, torch.Tensor] = {}

    @property
    def residuals(self) -> dict[str, torch.Tensor]:
        """A copy of the current residuals (tensors are shared; do not modify them)."""
        return dict(self._residual)

    def norm(self) -> float:
        """Global L2 norm of the residual: how much is still owed to the server."""
        return validate_values(self._residual, what="residual")

    def reset(self) -> None:
        """Forget every residual (for example when the project's model changes shape)."""
        self._residual.clear()

    def _corrected(self, name: str, delta: torch.Tensor) -> torch.Tensor:
        residual = self._residual.get(name)
        if residual is None:
            return delta
        if residual.shape != delta.shape:
            raise ValueError(
                f"error feedback holds tensor {name!r} with shape {format_shape(residual.shape)} "
                f"but the update's is {format_shape(delta.shape)}; call reset() after the "
                "model changes"
            )
        return delta + residual

    def _commit(self, residuals: dict[str, torch.Tensor | None]) -> None:
        for name, residual in residuals.items():
            if residual is None:
                self._residual.pop(name, None)
            else:
                self._residual[name] = residual

    def to_bytes(self) -> bytes:
        """The residuals as deterministic safetensors bytes (see ``encode_model``)."""
        return encode_model(self._residual)

    @classmethod
    def from_bytes(cls, data: bytes) -> ErrorFeedback:
        """Restore what ``to_bytes`` wrote; raises ``UpdateRejected`` on a corrupt file."""
        feedback = cls()
        feedback._residual = dict(decode_model(data))
        return feedback
