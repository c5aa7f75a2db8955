"""Differential privacy at the coordinator (issue 14): the terms are refused where they
cannot be kept, carried in every signed task, and accounted for; user-level DP clips,
takes one update per contributor, counts every noisy aggregate in the ledger and closes
the project when the next one would pass the budget; record-level DP shows what the
contributors report; the page says which protections the project has and which it gave up."""

from __future__ import annotations

from typing import Any

import pytest
import requests

from backend.coordinator import Coordinator
from backend.demo_clients import DemoContributor
from backend.settings import ProjectSettings
from backend.testing import IN_PROCESS_URL, small_delta, upload_request, upload_small_delta
from federated.codec import encode_update
from federated.privacy.accounting import Spend, epsilon_spent

API = f"{IN_PROCESS_URL}/api/v1/projects"
DIGITS = {"num_shards": 6, "hidden": 16, "local_epochs": 1.0, "batch_size": 32, "lr": 0.1}
USER_LEVEL = {
    "privacy": "dp-fedavg",
    "dp_epsilon": 8.0,
    "dp_delta": 1e-5,
    "dp_noise_multiplier": 3.0,
    "dp_clip_norm": 0.5,
    "clients_per_round": 2,
    "min_updates": 2,
    "codec": "int8",
    "spot_check_rate": 0,
    "max_loss_regression": 0,
}


def create(co: Coordinator, name: str, **settings: Any) -> None:
    co.create_project(
        name, recipe="digits-mlp", hparams=DIGITS, settings={**USER_LEVEL, **settings}
    )


def round_of(co: Coordinator, http: requests.Session, people: list[DemoContributor]) -> None:
    for who in people:
        task = who.lease(0)
        assert task is not None
        assert upload_small_delta(http, co, who, task).status_code == 201
    assert co.worker.run_once()


@pytest.mark.parametrize(
    ("settings", "words"),
    [
        ({"privacy": "dp-sgd", "spot_check_rate": 0.1}, "spot_check_rate 0"),
        ({"privacy": "dp-fedavg", "outlier_norm_ratio": 3.0}, "outlier_norm_ratio 0"),
        ({"privacy": "dp-fedavg", "dp_epsilon": 0}, "dp_epsilon"),
        ({"privacy": "dp-fedavg", "dp_delta": 0.5}, "dp_delta"),
        ({"privacy": "dp-fedavg", "dp_count_stddev": 0.2}, "dp_count_stddev"),
        ({"privacy": "laplace"}, "privacy must be one of"),
    ],
)
def test_settings_that_would_weaken_the_promise_are_refused_saying_why(
    settings: dict[str, Any], words: str
) -> None:
    with pytest.raises(ValueError, match=words):
        ProjectSettings.from_dict(settings)


def test_user_level_privacy_turns_the_median_screens_off_unless_asked() -> None:
    settings = ProjectSettings.from_dict({"privacy": "dp-fedavg"})
    assert settings.outlier_norm_ratio == 0 and settings.clip_norm_ratio == 0
    assert settings.client_cap(50) == 1  # one update per contributor per aggregate
    assert ProjectSettings.from_dict({}).outlier_norm_ratio > 0


def test_a_robust_strategy_cannot_take_user_level_privacy(coordinator: Coordinator) -> None:
    with pytest.raises(ValueError, match="needs every single update"):
        coordinator.create_project(
            "dp-median", recipe="digits-mlp", strategy="median", settings=USER_LEVEL
        )


def test_creation_warns_when_the_noise_would_swamp_the_updates(coordinator: Coordinator) -> None:
    heard: list[str] = []
    create(coordinator, "dp-warn", dp_noise_multiplier=5.0)
    coordinator.create_project(
        "dp-warn-2",
        recipe="digits-mlp",
        hparams=DIGITS,
        settings={**USER_LEVEL, "dp_noise_multiplier": 5.0},
        warn=heard.append,
    )
    assert any("2 updates per aggregate" in w and "clients_per_round" in w for w in heard)
    assert not any(
        "noisy aggregate(s)" in w for w in heard
    )  # 61 aggregates fit epsilon 8 at noise 5
    coordinator.create_project(
        "dp-warn-3",
        recipe="digits-mlp",
        hparams=DIGITS,
        settings={**USER_LEVEL, "dp_noise_multiplier": 1.0, "dp_epsilon": 2.0},
        warn=heard.append,
    )
    assert any("allows 0 noisy aggregate(s)" in w for w in heard)  # one costs 4.7


def test_every_task_carries_the_terms_and_the_versions_update_bound(
    coordinator: Coordinator, http: requests.Session, join: Any
) -> None:
    create(coordinator, "dp-terms")
    ada = join("dp-terms", "Ada")
    task = ada.lease(0)
    assert task is not None
    assert task["privacy"] == {
        "mechanism": "dp-fedavg",
        "epsilon": 8.0,
        "delta": 1e-5,
        "noise_multiplier": 3.0,
        "clip_norm": 0.5,
        "clip_quantile": 0.5,
    }
    assert task["update_clip_norm"] == 0.5
    view = http.get(f"{API}/dp-terms", timeout=10).json()
    assert view["privacy"] == task["privacy"]
    assert view["privacy_spent"]["epsilon"] == 0 and view["privacy_spent"]["steps"] == 0


def test_each_noisy_aggregate_is_counted_and_the_bound_adapts(
    coordinator: Coordinator, http: requests.Session, join: Any
) -> None:
    create(coordinator, "dp-count")
    people = [join("dp-count", name) for name in ("Ada", "Bob")]
    for _ in range(3):
        round_of(coordinator, http, people)
    project = coordinator.project("dp-count")
    assert project.current_version == 3
    view = http.get(f"{API}/dp-count", timeout=10).json()
    spent = view["privacy_spent"]
    assert spent["steps"] == 3
    assert spent["epsilon"] == pytest.approx(epsilon_spent([Spend(3.0, 1.0, 3)], 1e-5))
    # Adapted each version (two updates under noisy counting: up or down, but moved).
    assert spent["clip_norm"] > 0 and spent["clip_norm"] != 0.5
    task = people[0].lease(0)
    assert task is not None and task["update_clip_norm"] == pytest.approx(spent["clip_norm"])


def test_the_project_closes_when_the_next_aggregate_would_pass_the_budget(
    coordinator: Coordinator, http: requests.Session, join: Any
) -> None:
    # epsilon 8 at noise 1.0 with no sampling: a handful of aggregates at most.
    fits = 0
    while epsilon_spent([Spend(1.0, 1.0, fits + 1)], 1e-5) <= 8.0:
        fits += 1
    assert 1 <= fits < 10
    create(coordinator, "dp-spent", dp_noise_multiplier=1.0)
    people = [join("dp-spent", name) for name in ("Ada", "Bob")]
    for _ in range(fits):
        round_of(coordinator, http, people)
    project = coordinator.project("dp-spent")
    assert project.current_version == fits
    assert project.status == "closed"
    answer = http.post(
        f"{API}/dp-spent/tasks/lease",
        headers={"Authorization": f"Bearer {people[0].token}"},
        json={},
        timeout=10,
    )
    assert answer.status_code == 410
    assert answer.json()["error"]["code"] == "privacy_budget_spent"
    spent = http.get(f"{API}/dp-spent", timeout=10).json()["privacy_spent"]
    assert spent["exhausted"] is True and spent["epsilon"] <= 8.0
    page = http.get(f"{IN_PROCESS_URL}/p/dp-spent", timeout=10).text
    assert 'id="privacy"' in page and "training has ended" in page


def test_user_level_privacy_takes_one_update_per_contributor_per_aggregate(
    coordinator: Coordinator, http: requests.Session, join: Any
) -> None:
    create(coordinator, "dp-async", mode="async", buffer_size=2, max_client_share=1.0)
    ada, bob = join("dp-async", "Ada"), join("dp-async", "Bob")
    first = ada.lease(0)
    assert first is not None
    assert upload_small_delta(http, coordinator, ada, first).status_code == 201
    # Ada's one update waits for another contributor's: she gets no more work for it.
    assert ada.lease(0) is None
    task = bob.lease(0)
    assert task is not None
    assert upload_small_delta(http, coordinator, bob, task).status_code == 201
    assert coordinator.worker.run_once()
    assert coordinator.project("dp-async").current_version == 1


def test_record_level_privacy_shows_the_largest_epsilon_a_contributor_reported(
    coordinator: Coordinator, http: requests.Session, join: Any
) -> None:
    coordinator.create_project(
        "dp-local",
        recipe="digits-mlp",
        hparams=DIGITS,
        settings={
            "privacy": "dp-sgd",
            "dp_epsilon": 4.0,
            "clients_per_round": 2,
            "min_updates": 2,
            "codec": "int8",
            "spot_check_rate": 0,
        },
    )
    people = [join("dp-local", name) for name in ("Ada", "Bob")]
    for who, epsilon in zip(people, (1.5, 2.5), strict=True):
        task = who.lease(0)
        assert task is not None and task["privacy"]["mechanism"] == "dp-sgd"
        assert task.get("update_clip_norm") is None
        spec = coordinator.runtime(coordinator.project("dp-local")).spec
        answer = upload_request(
            http,
            IN_PROCESS_URL,
            project="dp-local",
            token=who.token,
            key=who.key,
            task=task,
            client_id=who.client_id,
            payload=encode_update(small_delta(spec, 1e-3, task["task_id"]), "int8").payload,
            manifest_overrides={"metrics": {"dp_epsilon": epsilon, "steps": 10.0}},
        )
        assert answer.status_code == 201, answer.text
    spent = http.get(f"{API}/dp-local", timeout=10).json()["privacy_spent"]
    assert spent["epsilon"] == 2.5 and spent["steps"] == 2 and not spent["exhausted"]
    page = http.get(f"{IN_PROCESS_URL}/p/dp-local", timeout=10).text
    assert "Record-level differential privacy" in page and "spot checks" in page
