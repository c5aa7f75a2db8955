"""staleness_factor: the weight of an update by how many versions behind it is."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from strategy_helpers import FAST

from federated.strategies import staleness_factor


def test_staleness_factor() -> None:
    assert staleness_factor(0) == 1.0
    assert staleness_factor(3) == pytest.approx(0.5)
    assert staleness_factor(7, exponent=1.0) == pytest.approx(1 / 8)
    assert staleness_factor(5, exponent=0.0) == 1.0
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="staleness"):
            staleness_factor(bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="exponent"):
        staleness_factor(1, exponent=-0.5)


@FAST
@given(staleness=st.integers(0, 10_000), exponent=st.floats(0, 4))
def test_staleness_factor_is_in_unit_interval_and_non_increasing(
    staleness: int, exponent: float
) -> None:
    factor = staleness_factor(staleness, exponent=exponent)
    assert 0 < factor <= 1
    assert staleness_factor(staleness + 1, exponent=exponent) <= factor
