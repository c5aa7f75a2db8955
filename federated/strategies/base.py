"""The strategy contract: turn a base model and a stream of client updates into the next model."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from typing import Any, ClassVar

import torch

from federated.tensors import ClientUpdate, StateDict


class Strategy(ABC):
    """Server-side aggregation.

    ``aggregate`` consumes ``updates`` once. Streaming strategies (``streaming = True``)
    hold O(model) memory however many updates arrive; robust ones (median, Krum) must
    see all updates at once and say so with ``streaming = False``.

    Strategies with server state (FedAdam moments, ...) expose it through
    ``state_tensors``/``load_state_tensors`` (plain tensors, saved as safetensors by the
    caller) so a coordinator can restart between rounds and continue identically.
    """

    name: ClassVar[str]
    streaming: ClassVar[bool] = True

    @abstractmethod
    def aggregate(self, base: StateDict, updates: Iterable[ClientUpdate]) -> StateDict:
        """Return the next global model. Raises ValueError if ``updates`` is empty."""

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        if tensors:
            raise ValueError(f"strategy {self.name!r} has no state, got {sorted(tensors)[:3]}")

    def describe(self) -> dict[str, Any]:
        """JSON-able parameters, shown on project pages and stored with the project."""
        return {"name": self.name}

    def client_hparams(self) -> dict[str, Any]:
        """Task hyperparameters the contributors must train with (FedProx's μ)."""
        return {}

    def check_round_size(self, updates: int) -> None:
        """ValueError if an aggregation of ``updates`` updates could never succeed, so a
        project that cannot work is refused when it is created, not stuck afterwards."""
        return None  # most strategies aggregate any non-empty round
