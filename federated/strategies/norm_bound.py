"""NormBound: clip every update's delta to an L2 norm bound, then aggregate with another
strategy (Sun et al. 2019, "Can You Really Backdoor Federated Learning?")."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar

import torch

from federated.strategies import _checks
from federated.strategies.aggregate import clip_updates
from federated.strategies.base import Strategy
from federated.tensors import ClientUpdate, StateDict


class NormBound(Strategy):
    """Wraps ``inner``: each delta longer than ``max_norm`` (global L2 over all tensors) is
    scaled down to it, a shorter one passes unchanged, and ``inner`` aggregates the result.

    Clipping is lazy, one update at a time, so the wrapper streams exactly when ``inner``
    does (``streaming`` is ``inner.streaming``). State and ``describe()`` are the inner
    strategy's, with ``norm_bound`` added to the description, so
    ``build_strategy(d["name"], rest of d)`` rebuilds the same wrapped strategy.
    """

    name: ClassVar[str] = "norm-bound"

    def __init__(self, inner: Strategy, *, max_norm: float) -> None:
        if not isinstance(inner, Strategy):
            raise ValueError(f"NormBound wraps a Strategy, got {type(inner).__name__}")
        self.inner = inner
        self.max_norm = _checks.number("norm_bound", max_norm, low=0.0, low_open=True)
        # An instance attribute shadows the ClassVar default: whether the wrapper streams
        # is a fact about the strategy it wraps.
        vars(self)["streaming"] = inner.streaming

    def aggregate(self, base: StateDict, updates: Iterable[ClientUpdate]) -> StateDict:
        return self.inner.aggregate(base, clip_updates(updates, self.max_norm))

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return self.inner.state_tensors()

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        self.inner.load_state_tensors(tensors)

    def client_hparams(self) -> dict[str, Any]:
        return self.inner.client_hparams()

    def check_round_size(self, updates: int) -> None:
        self.inner.check_round_size(updates)

    def describe(self) -> dict[str, Any]:
        return {**self.inner.describe(), "norm_bound": self.max_norm}
