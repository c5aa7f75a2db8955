"""The organiser changes a running project where it is safe (issue 16): the next tasks carry
the change, a task leased before keeps its own, the action log records it with the version
it applies from, every process sees it, and whatever contributors or the record rely on is
refused with the reason."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import requests

from backend.cli import main
from backend.coordinator import Coordinator
from backend.metrics import BackendMetrics, Registry
from backend.testing import FakeClock, upload_small_delta

pytestmark = pytest.mark.both_stores


def test_the_next_tasks_carry_the_change_and_earlier_ones_keep_theirs(
    coordinator: Coordinator, http: requests.Session, make_project: Any, join: Any
) -> None:
    make_project("digits")
    alice, bob, carol = (join("digits", n) for n in ("Alice", "Bob", "Carol"))
    before = alice.lease(0)
    assert before is not None and before["hparams"]["lr"] == 0.1
    coordinator.change_project(
        "digits", {"clients_per_round": "3", "min_updates": "3"}, {"lr": "0.05"}, "slower"
    )
    after = bob.lease(0)
    assert after is not None and after["hparams"]["lr"] == 0.05
    for who, task in ((alice, before), (bob, after)):
        assert upload_small_delta(http, coordinator, who, task).status_code == 201
    assert not coordinator.worker.run_once(), "a round is 3 updates now"
    third = carol.lease(0)
    assert third is not None
    assert upload_small_delta(http, coordinator, carol, third).status_code == 201
    assert coordinator.worker.run_once()
    (action,) = [
        a
        for a in coordinator.stats(coordinator.project("digits"))["actions"]
        if a["action"] == "settings"
    ]
    assert action["reason"] == "slower"
    assert "clients_per_round 2 -> 3" in action["detail"] and "lr 0.1 -> 0.05" in action["detail"]
    assert action["detail"].endswith("(from version 0)")


@pytest.mark.parametrize(
    ("settings", "hparams", "message"),
    [
        ({"codec": "f32"}, {}, "codec cannot change"),
        ({"mode": "async"}, {}, "mode cannot change"),
        ({"privacy": "dp-fedavg"}, {}, "privacy cannot change"),
        ({}, {"hidden": "32"}, "hidden cannot change"),
        ({}, {"num_shards": "2"}, "num_shards cannot change"),
        ({"clients_per_round": "0"}, {}, "clients_per_round must be at least 1"),
        ({"min_updates": "5"}, {}, "must not exceed clients_per_round"),
        ({}, {"lr": "fast"}, "lr"),
        ({"finish_at_metric": "f1>=0.9"}, {}, "does not measure"),
        ({"clients_per_round": "2"}, {}, "nothing would change"),
        ({}, {}, "nothing to change"),
    ],
)
def test_what_may_not_change_is_refused_and_nothing_changes(
    coordinator: Coordinator,
    make_project: Any,
    settings: dict[str, str],
    hparams: dict[str, str],
    message: str,
) -> None:
    before = make_project("digits")
    with pytest.raises(ValueError, match=message):
        coordinator.change_project("digits", settings, hparams)
    after = coordinator.project("digits")
    assert (after.settings, after.hparams) == (before.settings, before.hparams)
    assert coordinator.stats(after)["actions"] == []


def test_a_private_projects_aggregate_size_and_an_ended_project_stay(
    coordinator: Coordinator, make_project: Any
) -> None:
    make_project("private", privacy="dp-fedavg", clients_per_round=4, min_updates=4)
    with pytest.raises(ValueError, match="clients_per_round cannot change"):
        coordinator.change_project("private", {"clients_per_round": "8"})
    coordinator.change_project("private", {"round_deadline_s": "300"})  # harmless: allowed
    make_project("done")
    coordinator.finish("done")
    with pytest.raises(ValueError, match="has ended"):
        coordinator.change_project("done", {"lease_s": "60"})


def test_another_process_sees_the_change(
    coordinator: Coordinator, make_project: Any, tmp_path: Path, clock: FakeClock
) -> None:
    make_project("digits")
    other = Coordinator(
        tmp_path / "data",
        clock=clock,
        start_worker=False,
        metrics=BackendMetrics.create(Registry()),
        database_url=getattr(coordinator.store, "url", None),
    )
    try:
        assert other.runtime(other.project("digits")).settings.lease_s == 300.0  # parsed, cached
        coordinator.change_project("digits", {"lease_s": "120"}, {"local_epochs": "2"})
        rt = other.runtime(other.project("digits"))
        assert rt.settings.lease_s == 120.0 and rt.hparams["local_epochs"] == 2.0
    finally:
        other.close()


def test_the_cli_changes_and_refuses(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--data", str(tmp_path / "data")]
    assert (
        main(["project", "create", "digits", "--recipe", "digits-mlp", "num_shards=2", *args]) == 0
    )
    capsys.readouterr()
    assert main(["project", "set", "digits", "lease-s=120", "--hp", "lr=0.05", *args]) == 0
    assert '"lease_s": 120.0' in capsys.readouterr().out
    assert main(["project", "set", "digits", "codec=f32", *args]) == 2
    assert "codec cannot change" in capsys.readouterr().err
