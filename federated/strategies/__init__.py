"""Server-side aggregation strategies: a base model and a round of updates in, the next model out.

Build one by name from a project's settings::

    strategy = build_strategy("fedadam", {"eta": 0.01, "norm_bound": 5.0})
    next_model = strategy.aggregate(base, updates)

The maths lives in ``aggregate`` (plain functions on tensors); each algorithm is a thin class
in its own module.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from federated.strategies.aggregate import staleness_factor
from federated.strategies.base import Strategy
from federated.strategies.diloco import DiLoCo
from federated.strategies.dp_fedavg import DPFedAvg
from federated.strategies.fedadagrad import FedAdagrad
from federated.strategies.fedadam import FedAdam
from federated.strategies.fedavg import FedAvg
from federated.strategies.fedopt import FedOpt
from federated.strategies.fedprox import FedProx
from federated.strategies.fedyogi import FedYogi
from federated.strategies.krum import MultiKrum
from federated.strategies.median import Median
from federated.strategies.norm_bound import NormBound
from federated.strategies.trimmed_mean import TrimmedMean

__all__ = [
    "NORM_BOUND_PARAM",
    "STRATEGIES",
    "DPFedAvg",
    "DiLoCo",
    "FedAdagrad",
    "FedAdam",
    "FedAvg",
    "FedOpt",
    "FedProx",
    "FedYogi",
    "Median",
    "MultiKrum",
    "NormBound",
    "Strategy",
    "TrimmedMean",
    "build_strategy",
    "staleness_factor",
    "strategy_params",
]

STRATEGIES: dict[str, type[Strategy]] = {
    cls.name: cls
    for cls in (
        FedAvg,
        FedProx,
        FedAdam,
        FedYogi,
        FedAdagrad,
        DiLoCo,
        Median,
        TrimmedMean,
        MultiKrum,
    )
}
"""Strategy name (as a project stores it) -> class."""

NORM_BOUND_PARAM = "norm_bound"
"""The parameter, accepted by every strategy, that wraps it in ``NormBound``."""


def strategy_params(name: str) -> tuple[str, ...]:
    """The parameters ``build_strategy(name, ...)`` accepts (``norm_bound`` included)."""
    cls = _strategy_class(name)
    own = [
        p.name
        for p in inspect.signature(cls.__init__).parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    ]
    return (*own, NORM_BOUND_PARAM)


def _strategy_class(name: str) -> type[Strategy]:
    try:
        return STRATEGIES[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown strategy {name!r}; choose one of {', '.join(STRATEGIES)}"
        ) from None


def build_strategy(name: str, params: Mapping[str, Any] | None = None) -> Strategy:
    """A strategy from a project's settings. ``params`` are the class's keyword arguments
    (missing ones take their defaults); ``norm_bound`` wraps the strategy in ``NormBound``.

    Raises ValueError naming the unknown strategy, the unknown parameter (with the accepted
    ones) or the bad value.
    """
    cls = _strategy_class(name)
    params = dict(params or {})
    accepted = strategy_params(name)
    unknown = sorted(str(key) for key in params if key not in accepted)
    if unknown:
        raise ValueError(
            f"unknown parameter {unknown[0]!r} for strategy {name!r}; it accepts "
            f"{', '.join(accepted)}"
        )
    norm_bound = params.pop(NORM_BOUND_PARAM, None)
    try:
        strategy = cls(**params)
    except ValueError as error:
        raise ValueError(f"strategy {name!r}: {error}") from None
    if norm_bound is None:
        return strategy
    try:
        return NormBound(strategy, max_norm=norm_bound)
    except ValueError as error:
        raise ValueError(f"strategy {name!r}: {error}") from None
