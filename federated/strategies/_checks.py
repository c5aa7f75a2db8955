"""Argument and state checks shared by the strategies.

Every check raises ``ValueError`` naming the parameter, the value and the allowed range,
because strategy parameters come from a project's settings and the organiser has to fix them.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from federated.tensors import StateDict


def number(
    name: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """``value`` as a finite float inside the range, or ValueError saying what is allowed."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a number, got {value!r}")
    result = float(value)
    if not math.isfinite(result):
        raise ValueError(f"{name} must be finite, got {value!r}")
    too_low = low is not None and (result <= low if low_open else result < low)
    too_high = high is not None and (result >= high if high_open else result > high)
    if too_low or too_high:
        left = "(" if low_open else "["
        right = ")" if high_open else "]"
        lo = "-inf" if low is None else f"{low:g}"
        hi = "inf" if high is None else f"{high:g}"
        raise ValueError(f"{name} must be in {left}{lo}, {hi}{right}, got {value!r}")
    return result


def integer(name: str, value: Any, *, low: int) -> int:
    """``value`` as an int >= ``low``, or ValueError saying what is allowed."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < low:
        raise ValueError(f"{name} must be >= {low}, got {value!r}")
    return value


def state_matches_model(strategy: str, state: dict[str, torch.Tensor], base: StateDict) -> None:
    """Raise ValueError unless ``state`` (a server optimiser's per-tensor buffers) has one
    tensor of the right shape for each floating tensor of ``base``: state saved for
    another model must never be applied to this one."""
    floating = {name for name, t in base.items() if t.dtype.is_floating_point}
    if state.keys() != floating:
        raise ValueError(
            f"{strategy} state does not match the model: state has tensors "
            f"{sorted(state)[:3]}, the model {sorted(floating)[:3]}; "
            f"load the state saved for this project's model"
        )
    for name in floating:
        if state[name].shape != base[name].shape:
            raise ValueError(
                f"{strategy} state tensor {name!r} has shape {tuple(state[name].shape)}, "
                f"the model has {tuple(base[name].shape)}"
            )
