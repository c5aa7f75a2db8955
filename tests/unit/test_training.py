from __future__ import annotations

import itertools
import math
from typing import Any

import pytest
import torch

from federated.recipes import get_recipe
from federated.training import (
    Checkpoint,
    StepDecision,
    TrainingInterrupted,
    TrainProgress,
    apply_delta,
    schedule_offset,
    scheduled_lr,
    total_steps_for,
    train_locally,
)


class RecordingHooks:
    """Asks for a checkpoint or a stop at given steps and keeps what it was given."""

    def __init__(self, checkpoint_at: set[int] | None = None, stop_at: int | None = None) -> None:
        self.checkpoint_at = checkpoint_at or set()
        self.stop_at = stop_at
        self.progress: list[TrainProgress] = []
        self.checkpoints: list[Checkpoint] = []

    def after_step(self, progress: TrainProgress) -> StepDecision:
        self.progress.append(progress)
        if progress.step == self.stop_at:
            return StepDecision.STOP
        if progress.step in self.checkpoint_at:
            return StepDecision.CHECKPOINT
        return StepDecision.CONTINUE

    def save_checkpoint(self, checkpoint: Checkpoint) -> None:
        self.checkpoints.append(checkpoint)


def setup(name: str = "digits-mlp", **overrides: object) -> tuple:
    recipe = get_recipe(name)
    hp = recipe.resolve_hparams({"num_shards": 5, **overrides})
    return recipe, hp, recipe.initial_state(hp), recipe.load_shard(hp, 0)


def test_training_lowers_the_loss_and_reports_metrics() -> None:
    recipe, hp, state, data = setup(local_epochs=3, lr=0.1)
    result = train_locally(recipe, hp, state, data, seed=1)
    assert result.loss_after < result.loss_before
    assert result.num_examples == len(data)
    assert result.steps == total_steps_for(hp, len(data))
    assert result.examples_per_second > 0 and result.seconds > 0
    assert set(result.delta) == set(state)
    assert any(v.abs().sum() > 0 for v in result.delta.values())
    assert set(result.metrics()) >= {"loss_before", "loss_after", "seconds", "examples_per_second"}


def test_same_seed_same_delta_other_seed_other_delta() -> None:
    recipe, hp, state, data = setup()
    a = train_locally(recipe, hp, state, data, seed=5)
    b = train_locally(recipe, hp, state, data, seed=5)
    c = train_locally(recipe, hp, state, data, seed=6)
    assert all(torch.equal(a.delta[k], b.delta[k]) for k in a.delta)
    assert any(not torch.equal(a.delta[k], c.delta[k]) for k in a.delta)


@pytest.mark.parametrize(
    ("name", "overrides"),
    [
        ("digits-mlp", {"optimizer": "sgd", "momentum": 0.9, "local_epochs": 2}),
        (
            "digits-mlp",
            {"optimizer": "adamw", "lr": 0.01, "local_epochs": 2, "prox_mu": 0.1, "clip_norm": 1.0},
        ),
        ("digits-cnn", {"max_steps": 9, "batch_size": 16}),
    ],
)
def test_checkpoint_and_resume_equals_one_uninterrupted_run(name: str, overrides: dict) -> None:
    recipe, hp, state, data = setup(name, **overrides)
    whole = train_locally(recipe, hp, state, data, seed=3)
    hooks = RecordingHooks(checkpoint_at={2}, stop_at=5)
    with pytest.raises(TrainingInterrupted) as stopped:
        train_locally(recipe, hp, state, data, seed=3, hooks=hooks)
    assert [c.step for c in hooks.checkpoints] == [2, 5]
    restored = Checkpoint.from_bytes(
        stopped.value.checkpoint.to_bytes()
    )  # through bytes, as on disk
    resumed = train_locally(recipe, hp, state, data, seed=3, resume=restored)
    assert resumed.steps == whole.steps
    assert resumed.loss_before == whole.loss_before
    for k in whole.delta:
        assert torch.equal(resumed.delta[k], whole.delta[k]), k


def test_hooks_see_every_step_in_order() -> None:
    recipe, hp, state, data = setup(max_steps=6)
    hooks = RecordingHooks()
    train_locally(recipe, hp, state, data, hooks=hooks)
    assert [p.step for p in hooks.progress] == [1, 2, 3, 4, 5, 6]
    assert all(p.total_steps == 6 for p in hooks.progress)
    assert hooks.progress[-1].examples == 6 * int(hp["batch_size"])


def test_fedprox_term_keeps_the_model_closer_to_the_base() -> None:
    recipe, hp_plain, state, data = setup(local_epochs=5, lr=0.2)
    hp_prox = recipe.resolve_hparams(
        {"num_shards": 5, "local_epochs": 5, "lr": 0.2, "prox_mu": 5.0}
    )

    def norm(delta: dict) -> float:
        return float(sum((v**2).sum() for v in delta.values()))

    assert norm(train_locally(recipe, hp_prox, state, data).delta) < norm(
        train_locally(recipe, hp_plain, state, data).delta
    )


def test_example_cap_and_apply_delta() -> None:
    recipe, hp, state, data = setup(max_steps=1)
    result = train_locally(recipe, hp, state, data, max_examples=10)
    assert result.num_examples == 10
    moved = apply_delta(state, result.delta)
    assert all(torch.allclose(moved[k] - state[k], result.delta[k]) for k in state)


def test_garbage_checkpoint_is_refused() -> None:
    with pytest.raises(ValueError, match="unreadable checkpoint"):
        Checkpoint.from_bytes(b"\x00" * 64)


def test_empty_data_is_an_error() -> None:
    recipe, hp, state, data = setup()
    from federated.recipes.base import Dataset

    with pytest.raises(ValueError, match="empty"):
        train_locally(recipe, hp, state, Dataset(data.features[:0], data.labels[:0]))


# --- the learning-rate schedule (issue 13) --------------------------------------------------

SCHEDULE_KEYS = ("lr_schedule", "warmup_steps", "schedule_steps", "min_lr_ratio", "schedule_offset")


def test_a_constant_schedule_trains_exactly_as_before_the_schedule_existed() -> None:
    """Projects (and stored manifests) from before the schedule have none of its keys; a
    constant schedule, whatever its other settings, is byte-identical to that."""
    recipe, hp, state, data = setup(optimizer="adamw", lr=0.01, max_steps=12)
    assert hp["lr_schedule"] == "constant"
    absent = {k: v for k, v in hp.items() if k not in SCHEDULE_KEYS}
    ignored = {**hp, "warmup_steps": 5, "schedule_steps": 7, "schedule_offset": 3}
    before = train_locally(recipe, absent, state, data, seed=4)
    for other in (hp, ignored):
        now = train_locally(recipe, other, state, data, seed=4)
        assert all(torch.equal(before.delta[k], now.delta[k]) for k in before.delta)
    # A cosine schedule that is flat (final rate = lr, no warm-up) is the constant rate too.
    flat = {**hp, "lr_schedule": "cosine", "min_lr_ratio": 1.0}
    now = train_locally(recipe, flat, state, data, seed=4)
    assert all(torch.equal(before.delta[k], now.delta[k]) for k in before.delta)


def test_warm_up_then_cosine_decay_then_held() -> None:
    from federated.training import lr_factor

    def f(step: int) -> float:
        return lr_factor(
            step, schedule="cosine", warmup_steps=10, schedule_steps=110, min_lr_ratio=0.1
        )

    assert [f(s) for s in (0, 4, 9)] == pytest.approx([0.1, 0.5, 1.0])  # (s + 1) / W
    assert f(10) == pytest.approx(1.0)  # the cosine starts at the top
    assert f(35) == pytest.approx(0.1 + 0.9 * (1 + math.cos(math.pi / 4)) / 2)
    assert f(60) == pytest.approx(0.55)  # half way: half way between 1 and m
    assert f(109) == pytest.approx(0.1, abs=1e-3)
    assert f(110) == f(111) == f(10**6) == pytest.approx(0.1)  # held after
    rates = [f(s) for s in range(10, 111)]
    assert all(a >= b for a, b in itertools.pairwise(rates))
    assert (
        lr_factor(5, schedule="constant", warmup_steps=10, schedule_steps=20, min_lr_ratio=0.1)
        == 1.0
    )
    no_warmup = lr_factor(0, schedule="cosine", warmup_steps=0, schedule_steps=50, min_lr_ratio=0.0)
    assert no_warmup == 1.0


def test_scheduled_lr_reads_the_task_hparams() -> None:
    hp = get_recipe("digits-mlp").resolve_hparams(
        {"lr": 0.2, "lr_schedule": "cosine", "warmup_steps": 4, "schedule_steps": 104}
    )
    assert scheduled_lr(hp, 0, 10) == pytest.approx(0.05)
    assert scheduled_lr(hp, 3, 10) == pytest.approx(0.2)
    assert scheduled_lr({**hp, "schedule_offset": 54}, 0, 10) == pytest.approx(0.2 * 0.55)
    # schedule_steps 0: each task runs the whole schedule on its own steps; no offset.
    own = {**hp, "schedule_steps": 0, "schedule_offset": 1000}
    assert scheduled_lr(own, 0, 24) == pytest.approx(0.05)
    assert scheduled_lr(own, 14, 24) == pytest.approx(0.2 * 0.55)
    assert scheduled_lr(own, 23, 24) == pytest.approx(0.2 * 0.1, rel=0.1)
    assert scheduled_lr({"lr": 0.3}, 7, 10) == 0.3  # keys absent: constant


def test_schedule_offset_shifts_the_curve() -> None:
    recipe = get_recipe("digits-mlp")
    hp = recipe.resolve_hparams(
        {"lr_schedule": "cosine", "warmup_steps": 10, "schedule_steps": 200}
    )
    for offset in (0, 7, 50, 199, 300):
        shifted = {**hp, "schedule_offset": offset}
        assert [scheduled_lr(shifted, i, 20) for i in range(20)] == [
            scheduled_lr(hp, offset + i, offset + 20) for i in range(20)
        ]


def test_an_offset_task_trains_on_its_part_of_the_schedule() -> None:
    # Past the schedule the rate is held at min_lr_ratio x lr: 0.5 x 0.5, exactly 0.25.
    recipe, hp, state, data = setup(lr=0.5, max_steps=8)
    late = {
        **hp,
        "lr_schedule": "cosine",
        "warmup_steps": 2,
        "schedule_steps": 40,
        "min_lr_ratio": 0.5,
        "schedule_offset": 40,
    }
    held = train_locally(recipe, late, state, data, seed=2)
    constant = train_locally(recipe, {**hp, "lr": 0.25}, state, data, seed=2)
    assert all(torch.equal(held.delta[k], constant.delta[k]) for k in held.delta)
    early = train_locally(recipe, {**late, "schedule_offset": 0}, state, data, seed=2)
    assert any(not torch.equal(early.delta[k], held.delta[k]) for k in held.delta)


@pytest.mark.parametrize(
    "schedule",
    [
        {"lr_schedule": "cosine", "warmup_steps": 3},  # each task runs the whole schedule
        {"lr_schedule": "cosine", "warmup_steps": 4, "schedule_steps": 30, "schedule_offset": 2},
    ],
)
def test_resume_mid_task_with_a_cosine_schedule_equals_one_uninterrupted_run(
    schedule: dict,
) -> None:
    recipe, hp, state, data = setup(optimizer="adamw", lr=0.01, max_steps=10, **schedule)
    whole = train_locally(recipe, hp, state, data, seed=3)
    hooks = RecordingHooks(checkpoint_at={2}, stop_at=5)  # mid warm-up, then mid cosine
    with pytest.raises(TrainingInterrupted) as stopped:
        train_locally(recipe, hp, state, data, seed=3, hooks=hooks)
    restored = Checkpoint.from_bytes(stopped.value.checkpoint.to_bytes())
    resumed = train_locally(recipe, hp, state, data, seed=3, resume=restored)
    assert resumed.steps == whole.steps == 10
    for k in whole.delta:
        assert torch.equal(resumed.delta[k], whole.delta[k]), k
    constant = train_locally(recipe, {**hp, "lr_schedule": "constant"}, state, data, seed=3)
    assert any(not torch.equal(constant.delta[k], whole.delta[k]) for k in whole.delta)


def test_the_coordinators_schedule_offset_rule() -> None:
    cosine = {"lr_schedule": "cosine", "schedule_steps": 1000}
    assert schedule_offset(cosine, 0, 30) == 0
    assert schedule_offset(cosine, 3, 30) == 90  # the base version's start
    assert schedule_offset(cosine, 40, 30) == 1000  # held at the end (same rate after it)
    assert schedule_offset({**cosine, "lr_schedule": "constant"}, 3, 30) is None
    assert schedule_offset({"lr": 0.1}, 3, 30) is None  # a project from before schedules
    assert schedule_offset({**cosine, "schedule_steps": 0}, 3, 30) is None  # per task
    assert schedule_offset(cosine, 3, None) is None  # steps unknown


def test_schedule_hparams_are_bounded_and_consistent() -> None:
    from federated.errors import RecipeError

    digits = get_recipe("digits-mlp")
    for bad in (
        {"lr_schedule": "linear"},
        {"warmup_steps": -1},
        {"min_lr_ratio": 1.5},
        {"schedule_offset": -3},
        {"schedule_offset": 10**10},
    ):
        with pytest.raises(RecipeError):
            digits.resolve_hparams(bad)
    with pytest.raises(RecipeError, match="warmup_steps"):
        digits.resolve_hparams({"lr_schedule": "cosine", "warmup_steps": 20, "schedule_steps": 10})
    # Local data sets differ in size: a schedule across versions needs a step count per task.
    tabular = get_recipe("tabular-csv")
    table = {"feature_columns": "a,b", "lr_schedule": "cosine"}
    with pytest.raises(RecipeError, match="max_steps"):
        tabular.resolve_hparams({**table, "schedule_steps": 1000})
    hp = tabular.resolve_hparams({**table, "schedule_steps": 1000, "max_steps": 50})
    assert hp["schedule_steps"] == 1000
    assert tabular.resolve_hparams(table)["lr_schedule"] == "cosine"  # each task alone


def test_the_simulator_places_each_round_on_the_schedule(monkeypatch: pytest.MonkeyPatch) -> None:
    from federated import simulate as sim
    from federated import simulate_privacy as client_training

    seen: list[tuple[int, int]] = []
    real = client_training.train_locally

    def recording(recipe: Any, hparams: Any, base: Any, data: Any, **kw: Any) -> Any:
        seen.append((int(hparams["schedule_offset"]), total_steps_for(hparams, len(data))))
        return real(recipe, hparams, base, data, **kw)

    monkeypatch.setattr(client_training, "train_locally", recording)
    hparams = {"max_steps": 3, "lr_schedule": "cosine", "warmup_steps": 2, "schedule_steps": 7}
    sim.simulate(recipe="digits-mlp", clients=2, rounds=4, partition="iid", hparams=hparams)
    assert seen == [(0, 3), (0, 3), (3, 3), (3, 3), (6, 3), (6, 3), (7, 3), (7, 3)]
