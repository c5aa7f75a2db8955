"""The FedOpt family (FedAdam, FedYogi, FedAdagrad): the paper's maths, server state.

One file for the three: they share FedOpt's code and every test here runs all three."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from safetensors.torch import load, save
from strategy_helpers import (
    FAST,
    SHAPES,
    constant_state,
    flat,
    mean_state,
    minus,
    random_state,
    seeds,
    update,
)

from federated.strategies import FedAdagrad, FedAdam, FedAvg, FedOpt, FedYogi, build_strategy


def reference_fedopt(
    kind: str, rounds: list[np.ndarray], eta: float, b1: float, b2: float, tau: float
) -> np.ndarray:
    """Reddi et al. 2021, Algorithm 2, in float64 numpy, starting from x = 0."""
    x = np.zeros_like(rounds[0])
    m = np.zeros_like(x)
    v = np.full_like(x, tau**2)
    for d in rounds:
        m = b1 * m + (1 - b1) * d
        if kind == "fedadam":
            v = b2 * v + (1 - b2) * d * d
        elif kind == "fedyogi":
            v = v - (1 - b2) * d * d * np.sign(v - d * d)
        else:
            v = v + d * d
        x = x + eta * m / (np.sqrt(v) + tau)
    return x


@pytest.mark.parametrize("cls", [FedAdam, FedYogi, FedAdagrad])
def test_fedopt_matches_the_paper_over_three_rounds(cls: type[FedOpt]) -> None:
    gen = torch.Generator().manual_seed(11)
    params = {"eta": 0.05, "beta1": 0.8, "tau": 1e-2}
    if cls is not FedAdagrad:
        params["beta2"] = 0.95
    strategy = cls(**params)
    model = constant_state(0.0)
    means = []
    for _ in range(3):
        deltas = [random_state(gen) for _ in range(3)]
        means.append(flat(mean_state(deltas)).numpy().astype(np.float64))
        model = strategy.aggregate(model, [update(d) for d in deltas])
    expected = reference_fedopt(cls.name, means, 0.05, 0.8, params.get("beta2", 0.0), 1e-2)
    np.testing.assert_allclose(flat(model).numpy(), expected, rtol=1e-4, atol=1e-6)


@FAST
@given(seed=seeds, count=st.integers(1, 5))
def test_fedadam_moves_in_the_direction_of_the_mean_delta(seed: int, count: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    base = random_state(gen)
    deltas = [random_state(gen) for _ in range(count)]
    mean = mean_state(deltas)
    for strategy in (FedAdam(), FedYogi(), FedAdagrad()):
        moved = flat(minus(strategy.aggregate(base, [update(d) for d in deltas]), base))
        direction = flat(mean)
        significant = direction.abs() > 1e-3
        assert torch.equal(torch.sign(moved[significant]), torch.sign(direction[significant]))
        assert float(torch.dot(moved, direction)) > 0


@pytest.mark.parametrize("name", ["fedadam", "fedyogi", "fedadagrad"])
def test_fedopt_state_round_trip_continues_identically(name: str) -> None:
    gen = torch.Generator().manual_seed(5)
    base = random_state(gen)
    round1 = [random_state(gen) for _ in range(3)]
    round2 = [random_state(gen) for _ in range(3)]

    continuous = build_strategy(name)
    after1 = continuous.aggregate(base, [update(d) for d in round1])
    after2 = continuous.aggregate(after1, [update(d) for d in round2])

    first = build_strategy(name)
    restarted_after1 = first.aggregate(base, [update(d) for d in round1])
    saved = save(first.state_tensors())  # what the coordinator writes to disk
    restarted = build_strategy(name)
    restarted.load_state_tensors(load(saved))
    restarted_after2 = restarted.aggregate(restarted_after1, [update(d) for d in round2])

    for n in SHAPES:
        assert torch.equal(after2[n], restarted_after2[n])
    assert torch.equal(restarted.state_tensors()["step"], torch.tensor(2))


def test_fedopt_state_is_unchanged_by_a_failed_round() -> None:
    strategy = FedAdam()
    base = constant_state(0.0)
    strategy.aggregate(base, [update(constant_state(1.0))])
    before = {k: t.clone() for k, t in strategy.state_tensors().items()}
    bad = {"layer.weight": torch.ones(3, 4), "layer.bias": torch.ones(9)}
    with pytest.raises(ValueError):
        strategy.aggregate(base, [update(constant_state(1.0)), update(bad)])
    after = strategy.state_tensors()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_fedopt_rejects_foreign_state() -> None:
    strategy = FedAdam()
    with pytest.raises(ValueError, match="unknown tensors"):
        strategy.load_state_tensors({"step": torch.tensor(1), "weights": torch.zeros(2)})
    with pytest.raises(ValueError, match="missing 'step'"):
        strategy.load_state_tensors({"m/a": torch.zeros(2), "v/a": torch.zeros(2)})
    strategy.load_state_tensors(
        {"m/a": torch.zeros(2), "v/a": torch.zeros(2), "step": torch.tensor(1)}
    )
    with pytest.raises(ValueError, match="state does not match the model"):
        strategy.aggregate(constant_state(0.0), [update(constant_state(1.0))])
    with pytest.raises(ValueError, match="has no state"):
        FedAvg().load_state_tensors({"step": torch.tensor(1)})
