"""Shared tensor types: a model state and a client's contribution to a round."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

StateDict = dict[str, torch.Tensor]
"""Parameter name -> float32 CPU tensor. Models and deltas both use this shape."""

TensorSpec = Mapping[str, tuple[tuple[int, ...], torch.dtype]]
"""Parameter name -> (shape, dtype) that a payload must match exactly."""


def spec_of(state: Mapping[str, torch.Tensor]) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """The (shape, dtype) of every tensor in ``state``."""
    return {name: (tuple(t.shape), t.dtype) for name, t in state.items()}


def zeros_like_state(state: Mapping[str, torch.Tensor]) -> StateDict:
    return {name: torch.zeros_like(t) for name, t in state.items()}


def l2_norm(state: Mapping[str, torch.Tensor]) -> float:
    """Global L2 norm over every tensor, computed in float64 so large models do not overflow."""
    total = 0.0
    for t in state.values():
        total += float(torch.sum(t.double() * t.double()))
    return total**0.5


@dataclass(frozen=True)
class ClientUpdate:
    """One accepted delta (client minus base) and how much it should count.

    ``num_examples`` is what the client reported; ``max_examples`` is what its task
    assigned, so ``weight`` is capped and a client cannot inflate its say.
    ``staleness_factor`` (0, 1] scales the weight for asynchronous (FedBuff) rounds.
    ``within_clip`` is what the contributor reported under user-level DP: its update was
    within the clip bound before clipping (None: not reported); adaptive clipping counts it
    (``federated.strategies.dp_fedavg``), after checking it against the decoded norm.
    """

    delta: StateDict
    num_examples: int
    max_examples: int | None = None
    staleness_factor: float = 1.0
    client_id: str = ""
    within_clip: bool | None = None

    @property
    def weight(self) -> float:
        examples = self.num_examples
        if self.max_examples is not None:
            examples = min(examples, self.max_examples)
        return float(max(examples, 0)) * self.staleness_factor
