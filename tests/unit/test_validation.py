"""The shared checks behind every decoded update and model."""

from __future__ import annotations

import math

import pytest
import torch

from federated.errors import UpdateRejected
from federated.tensors import l2_norm, spec_of
from federated.validation import tensor_sq_norm, validate_state

STATE = {"fc1.weight": torch.randn(64, 32), "fc1.bias": torch.randn(64)}
SPEC = spec_of(STATE)


def code_of(state: dict[str, torch.Tensor], **kwargs: object) -> UpdateRejected:
    with pytest.raises(UpdateRejected) as info:
        validate_state(state, SPEC, **kwargs)  # type: ignore[arg-type]
    return info.value


def test_accepts_a_matching_state_and_returns_its_norm() -> None:
    assert validate_state(STATE, SPEC) == pytest.approx(l2_norm(STATE), rel=1e-6)


def test_unknown_tensor() -> None:
    error = code_of({**STATE, "extra": torch.zeros(1)})
    assert (error.code, error.tensor) == ("unknown_tensor", "extra")


def test_missing_tensor() -> None:
    error = code_of({"fc1.weight": STATE["fc1.weight"]}, what="model")
    assert (error.code, error.tensor) == ("missing_tensor", "fc1.bias")
    assert str(error).startswith("model lacks tensor 'fc1.bias'")


def test_shape_mismatch() -> None:
    error = code_of({**STATE, "fc1.weight": torch.zeros(10, 3)})
    assert str(error) == "tensor 'fc1.weight': shape (10, 3) does not match the model's (64, 32)"


def test_dtype_mismatch() -> None:
    error = code_of({**STATE, "fc1.bias": STATE["fc1.bias"].double()})
    assert (error.code, error.tensor) == ("dtype_mismatch", "fc1.bias")


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite(bad: float) -> None:
    bias = STATE["fc1.bias"].clone()
    bias[7] = bad
    error = code_of({**STATE, "fc1.bias": bias})
    assert (error.code, error.tensor) == ("non_finite", "fc1.bias")


def test_norm_too_large() -> None:
    norm = l2_norm(STATE)
    assert code_of(STATE, max_norm=norm * 0.999).code == "norm_too_large"
    validate_state(STATE, SPEC, max_norm=norm * 1.001)


def test_a_bad_limit_is_the_callers_mistake() -> None:
    with pytest.raises(ValueError, match="max_norm"):
        validate_state(STATE, SPEC, max_norm=math.nan)


def test_huge_finite_values_are_not_mistaken_for_non_finite() -> None:
    big = torch.full((5000,), 1e30)
    assert math.isclose(tensor_sq_norm(big), 5000 * 1e60, rel_tol=1e-6)


@pytest.mark.parametrize("n", [1, 4095, 4096, 100_003, 1_000_000])
def test_norm_is_accurate_like_float64(n: int) -> None:
    tensor = torch.randn(n, generator=torch.Generator().manual_seed(n)) + 3.0
    exact = float(torch.dot(tensor.double(), tensor.double()))
    assert math.isclose(tensor_sq_norm(tensor), exact, rel_tol=1e-6)
