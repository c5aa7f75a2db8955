"""What the demo trains: the digits classifier (seconds a version), or a byte-level
language model with DiLoCo (``--recipe byte-lm``: about a minute a version on 2 cores)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from backend.demo_headless import DEMO_HPARAMS, DEMO_PROJECT

LM_PROJECT = "pystdlib-lm"
LM_STEPS = 200
"""Inner steps per task: one DiLoCo outer step every 200 AdamW steps (30-40 s on a core)."""


@dataclass(frozen=True)
class DemoProject:
    name: str
    recipe: str
    strategy: str
    hparams: dict[str, Any]
    strategy_params: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)

    def progress(self, metrics: Mapping[str, Any]) -> str:
        """One version's held-out numbers, as the demo prints them."""
        if self.recipe == "byte-lm":
            loss, bpb = metrics.get("loss"), metrics.get("bpb")
            if isinstance(loss, float) and isinstance(bpb, float):
                return f"validation loss {loss:.3f} nats/byte ({bpb:.2f} bits)"
            return "validation loss n/a"
        accuracy = metrics.get("accuracy")
        return f"accuracy {accuracy:.3f}" if isinstance(accuracy, float) else "accuracy n/a"


def demo_project(recipe: str, contributors: int) -> DemoProject:
    """The demo project for ``recipe`` (digits-mlp or byte-lm)."""
    if recipe == "digits-mlp":
        return DemoProject(DEMO_PROJECT, recipe, "fedavg", dict(DEMO_HPARAMS))
    if recipe == "byte-lm":
        return DemoProject(
            LM_PROJECT,
            recipe,
            "diloco",
            {"preset": "tiny", "num_shards": max(2, 2 * contributors), "max_steps": LM_STEPS},
            # Every contributor's 200-step task is a full one, and a version waits for all.
            settings={"fit_tasks": False, "round_deadline_s": 600.0, "lease_s": 600.0},
        )
    raise ValueError(f"the demo trains digits-mlp or byte-lm, not {recipe!r}")
