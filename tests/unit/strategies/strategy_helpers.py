"""What the strategy tests share: a tiny two-tensor model, update builders, hypothesis
settings, and the checks the robust strategies share. Imported by name, like the other
test helper modules."""

from __future__ import annotations

import torch
from hypothesis import settings
from hypothesis import strategies as st

from federated.tensors import ClientUpdate, StateDict

SHAPES = {"layer.weight": (3, 4), "layer.bias": (4,)}
FAST = settings(max_examples=40, deadline=None)


def random_state(gen: torch.Generator, scale: float = 1.0) -> StateDict:
    return {name: torch.randn(shape, generator=gen) * scale for name, shape in SHAPES.items()}


def constant_state(value: float) -> StateDict:
    return {name: torch.full(shape, float(value)) for name, shape in SHAPES.items()}


def update(delta: StateDict, examples: int = 10, **kwargs: object) -> ClientUpdate:
    return ClientUpdate(delta=delta, num_examples=examples, **kwargs)  # type: ignore[arg-type]


def flat(state: StateDict) -> torch.Tensor:
    return torch.cat([state[name].reshape(-1) for name in SHAPES])


def mean_state(states: list[StateDict]) -> StateDict:
    return {name: torch.stack([s[name] for s in states]).mean(dim=0) for name in SHAPES}


def minus(a: StateDict, b: StateDict) -> StateDict:
    return {name: a[name] - b[name] for name in a}


seeds = st.integers(min_value=0, max_value=2**31 - 1)


def honest_and_outliers(
    seed: int, honest_count: int, outlier_count: int, magnitude: float
) -> tuple[list[StateDict], list[StateDict]]:
    gen = torch.Generator().manual_seed(seed)
    honest = [random_state(gen) for _ in range(honest_count)]
    outliers = []
    for _ in range(outlier_count):
        signs = {n: torch.randint(0, 2, s, generator=gen) * 2.0 - 1 for n, s in SHAPES.items()}
        outliers.append({n: signs[n] * magnitude for n in SHAPES})
    return honest, outliers


def assert_within_honest_range(result: StateDict, base: StateDict, honest: list[StateDict]) -> None:
    stacked = torch.stack([flat(d) for d in honest])
    moved = flat(minus(result, base))
    low, high = stacked.min(dim=0).values, stacked.max(dim=0).values
    assert bool(torch.all(moved >= low - 1e-4)), "pulled below every honest value"
    assert bool(torch.all(moved <= high + 1e-4)), "pulled above every honest value"
