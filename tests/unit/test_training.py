from __future__ import annotations

import pytest
import torch

from federated.recipes import get_recipe
from federated.training import (
    Checkpoint,
    StepDecision,
    TrainingInterrupted,
    TrainProgress,
    apply_delta,
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
