"""FedProx: FedAvg's maths on the server (mu is the clients' business)."""

from __future__ import annotations

import torch
from hypothesis import given
from hypothesis import strategies as st
from strategy_helpers import FAST, SHAPES, random_state, seeds, update

from federated.strategies import FedProx


@FAST
@given(seed=seeds, count=st.integers(1, 12))
def test_fedavg_matches_a_float64_reference(seed: int, count: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    base = random_state(gen)
    deltas = [random_state(gen, scale=10.0) for _ in range(count)]
    examples = torch.randint(1, 1000, (count,), generator=gen).tolist()
    result = FedProx(mu=0.1, server_lr=0.7).aggregate(
        base, [update(d, n) for d, n in zip(deltas, examples, strict=True)]
    )
    total = sum(examples)
    for name in SHAPES:
        expected = (
            base[name].double()
            + 0.7 * sum(d[name].double() * n for d, n in zip(deltas, examples, strict=True)) / total
        )
        torch.testing.assert_close(result[name].double(), expected, rtol=1e-5, atol=1e-5)
        assert result[name].dtype == torch.float32
