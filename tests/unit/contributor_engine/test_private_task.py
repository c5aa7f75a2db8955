"""A task in the training child under privacy terms (``app.contributor.trainer.private``):
plain tasks never import Opacus (the desktop bundle leaves scipy out, and a plain task
once failed there for it), dp-fedavg tasks clip the update and report the bit, DP tasks
report no loss, and a dp-sgd task past the budget is refused before training."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from app.contributor.trainer.messages import TrainerError, TrainJob
from app.contributor.trainer.private import train_task
from federated.privacy.accounting import Spend
from federated.privacy.clipping import update_norm
from federated.recipes import get_recipe

HP = {"hidden": 8, "num_shards": 4, "max_steps": 4, "batch_size": 16}
TERMS = {"epsilon": 2.0, "delta": 1e-5, "noise_multiplier": 1.0, "clip_norm": 1.0}


def job(**changes: object) -> TrainJob:
    base = {
        "task_id": "t" * 22,
        "project": "digits",
        "recipe": "digits-mlp",
        "hparams": HP,
        "shard_index": 0,
        "base_model_path": "/unused",
        "base_digest": "0" * 64,
        "checkpoint_path": "/unused",
        "payload_path": "/unused",
        "codec": "f32",
    }
    return TrainJob(**{**base, **changes})  # type: ignore[arg-type]


def run(task: TrainJob) -> object:
    recipe = get_recipe("digits-mlp")
    hparams = recipe.resolve_hparams(HP)
    return train_task(
        task,
        recipe,
        hparams,
        recipe.initial_state(hparams),
        recipe.load_shard(hparams, 0),
        hooks=None,  # type: ignore[arg-type]
        resume=None,
        device="cpu",
    )


def test_a_plain_task_never_imports_opacus() -> None:
    code = textwrap.dedent(
        """
        import sys
        from tests.unit.contributor_engine.test_private_task import job, run
        outcome = run(job())
        assert "loss_after" in outcome.metrics
        assert not [m for m in sys.modules if m.split(".")[0] in ("opacus", "scipy")], "imported"
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


def test_a_user_level_task_clips_its_update_and_reports_no_loss() -> None:
    outcome = run(
        job(
            privacy={**TERMS, "mechanism": "dp-fedavg", "clip_quantile": 0.5}, update_clip_norm=1e-3
        )
    )
    assert update_norm(outcome.result.delta) == pytest.approx(1e-3, rel=1e-4)
    assert outcome.metrics["dp_within_clip"] == 0.0
    assert "loss_before" not in outcome.metrics and "loss_after" not in outcome.metrics
    assert outcome.spend is None


def test_a_record_level_task_reports_its_spend_and_no_loss() -> None:
    outcome = run(job(privacy={**TERMS, "mechanism": "dp-sgd", "clip_quantile": 0.0}))
    assert outcome.spend is not None and Spend.from_json(outcome.spend).steps == 4
    assert 0 < outcome.metrics["dp_epsilon"] <= 2.0
    assert "loss_after" not in outcome.metrics


def test_a_record_level_task_past_the_budget_is_refused_before_training() -> None:
    spent = [Spend(1.0, 1.0, 50).to_json()]  # far past epsilon 2
    with pytest.raises(TrainerError) as refused:
        run(job(privacy={**TERMS, "mechanism": "dp-sgd"}, privacy_spends=spent))
    assert refused.value.code == "privacy_budget_spent"
    assert "epsilon 2" in str(refused.value)
