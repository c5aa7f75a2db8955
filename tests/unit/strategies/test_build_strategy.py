"""Construction, the registry, describe() and build_strategy()."""

from __future__ import annotations

import json
import math

import pytest

from federated.strategies import (
    STRATEGIES,
    FedAdagrad,
    FedAdam,
    FedAvg,
    FedProx,
    FedYogi,
    MultiKrum,
    NormBound,
    Strategy,
    TrimmedMean,
    build_strategy,
)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: TrimmedMean(beta=0.5), r"beta must be in \[0, 0.5\)"),
        (lambda: TrimmedMean(beta=-0.1), "beta"),
        (lambda: FedAvg(server_lr=0.0), "server_lr"),
        (lambda: FedAvg(server_lr=math.nan), "server_lr must be finite"),
        (lambda: FedProx(mu=-1.0), "mu"),
        (lambda: FedAdam(beta1=1.0), "beta1"),
        (lambda: FedAdam(beta2=-0.1), "beta2"),
        (lambda: FedYogi(tau=0.0), "tau"),
        (lambda: FedAdagrad(eta=math.inf), "eta"),
        (lambda: FedAdam(eta="0.1"), "eta must be a number"),  # type: ignore[arg-type]
        (lambda: MultiKrum(num_byzantine=-1), "num_byzantine"),
        (lambda: MultiKrum(num_selected=0), "num_selected"),
        (lambda: MultiKrum(num_byzantine=1.5), "integer"),  # type: ignore[arg-type]
        (lambda: NormBound(FedAvg(), max_norm=0.0), "norm_bound"),
        (lambda: NormBound(FedAvg(), max_norm=math.inf), "norm_bound"),
    ],
)
def test_constructors_reject_bad_arguments_at_once(make: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make()  # type: ignore[operator]


def test_constructors_are_keyword_only() -> None:
    with pytest.raises(TypeError):
        TrimmedMean(0.2)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        FedAdam(0.1)  # type: ignore[call-arg]


def test_registry_names() -> None:
    assert sorted(STRATEGIES) == sorted(
        [
            "fedavg",
            "fedprox",
            "fedadam",
            "fedyogi",
            "fedadagrad",
            "diloco",
            "median",
            "trimmed-mean",
            "multi-krum",
        ]
    )
    for name, cls in STRATEGIES.items():
        assert cls.name == name and issubclass(cls, Strategy)


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_describe_is_json_and_rebuilds_the_same_strategy(name: str) -> None:
    for params in ({}, {"norm_bound": 3.0}):
        strategy = build_strategy(name, params)
        description = json.loads(json.dumps(strategy.describe()))
        assert description["name"] == name
        rest = {k: v for k, v in description.items() if k != "name"}
        rebuilt = build_strategy(name, rest)
        assert rebuilt.describe() == description
        assert isinstance(rebuilt, NormBound) == ("norm_bound" in params)


def test_build_strategy_passes_params() -> None:
    strategy = build_strategy("trimmed-mean", {"beta": 0.2})
    assert isinstance(strategy, TrimmedMean) and strategy.beta == 0.2
    prox = build_strategy("fedprox", {"mu": 0.5})
    assert isinstance(prox, FedProx) and prox.describe()["mu"] == 0.5
    assert prox.client_hparams() == {"prox_mu": 0.5}
    wrapped = build_strategy("fedadam", {"eta": 0.1, "norm_bound": 5.0})
    assert isinstance(wrapped, NormBound) and isinstance(wrapped.inner, FedAdam)
    assert wrapped.inner.eta == 0.1


def test_build_strategy_errors_name_the_problem() -> None:
    with pytest.raises(ValueError, match="unknown strategy 'fedsgd'; choose one of fedavg"):
        build_strategy("fedsgd")
    with pytest.raises(ValueError, match="unknown parameter 'learning_rate' for strategy 'fedavg'"):
        build_strategy("fedavg", {"learning_rate": 0.1})
    with pytest.raises(ValueError, match="beta2"):  # FedAdagrad has no beta2
        build_strategy("fedadagrad", {"beta2": 0.9})
    with pytest.raises(ValueError, match="strategy 'trimmed-mean': beta must be in"):
        build_strategy("trimmed-mean", {"beta": 0.7})
    with pytest.raises(ValueError, match="strategy 'median': norm_bound must be in"):
        build_strategy("median", {"norm_bound": -1.0})
