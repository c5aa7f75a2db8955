"""Strategies that cannot work are refused at project creation; FedProx's μ reaches the
contributors (issue 11). Measured on the first wave: Multi-Krum with the default round of 3
could never aggregate (it needs 2f + 3 updates) and the worker logged an error every 5 s
forever; FedProx's μ never left the coordinator, so FedProx trained as FedAvg."""

from __future__ import annotations

from typing import Any

import pytest

from backend.coordinator import Coordinator
from federated.simulate import simulate

SMALL_DIGITS = {"num_shards": 4, "hidden": 16, "local_epochs": 1.0, "batch_size": 32, "lr": 0.1}


def create(
    coordinator: Coordinator, name: str, strategy: str, params: Any = None, **settings: Any
) -> Any:
    return coordinator.create_project(
        name,
        recipe="digits-mlp",
        hparams=SMALL_DIGITS,
        strategy=strategy,
        strategy_params=params,
        settings={"codec": "int8", **settings},
    )


@pytest.mark.parametrize(
    "settings",
    [
        {"mode": "sync", "clients_per_round": 3, "min_updates": 2},
        {"mode": "sync", "clients_per_round": 5, "min_updates": 4},
        {"mode": "async", "buffer_size": 4},
    ],
)
def test_multi_krum_that_can_never_aggregate_is_refused(
    coordinator: Coordinator, settings: dict[str, Any]
) -> None:
    with pytest.raises(ValueError, match=r"multi-krum.*2f \+ 3 = 5"):
        create(coordinator, "krum", "multi-krum", **settings)
    assert [p.name for p in coordinator.projects()] == []


def test_multi_krum_sized_to_its_rounds_is_created(coordinator: Coordinator) -> None:
    create(coordinator, "krum", "multi-krum", clients_per_round=5, min_updates=5)
    assert coordinator.project("krum").strategy["name"] == "multi-krum"


def test_fedprox_mu_is_in_every_task(coordinator: Coordinator, join: Any) -> None:
    create(coordinator, "prox", "fedprox", {"mu": 0.5})
    task = join("prox", "Ada").lease(0)
    assert task is not None
    assert task["hparams"]["prox_mu"] == 0.5
    assert coordinator.project_view(coordinator.project("prox"))["hparams"]["prox_mu"] == 0.5


def test_fedprox_mu_reaches_the_simulated_clients() -> None:
    common: dict[str, Any] = {"clients": 3, "rounds": 1, "seed": 0}
    fedavg = simulate(strategy="fedavg", **common)
    fedprox = simulate(strategy="fedprox", strategy_params={"mu": 50.0}, **common)
    assert fedprox.config["hparams"]["prox_mu"] == 50.0
    assert fedprox.rounds[-1].accuracy != fedavg.rounds[-1].accuracy
