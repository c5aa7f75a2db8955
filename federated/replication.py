"""Spot checks by re-execution: train a task again and compare with what was uploaded.

Local training is deterministic on CPU for a given task: the batch order comes from
``task_seed(task_id)`` and nothing else varies (measured on digits-mlp: 1 and 2 torch
threads give bit-identical deltas). What an honest upload adds is the codec's error:
int8 with error feedback differs from the exact delta by about 1.5 % (relative L2). A
delta trained with another seed on the same shard differs by about 35 %, noise or a flipped
sign by over 100 %. ``TOLERANCE`` sits between, with room for GPU rounding.

How often a contributor is checked follows its record (``check_probability``): a newcomer
always, then half as often after each clean check down to the project's floor; a failed
check weighs ``FAIL_WEIGHT`` clean ones, so a cheat is checked every time until it has
built a record again.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from typing import Any

import torch

from federated.recipes import Dataset, Recipe
from federated.tensors import StateDict, l2_norm
from federated.training import task_seed, train_locally

TOLERANCE = 0.1
"""Largest relative L2 difference between an upload and its re-execution that passes."""

FAIL_WEIGHT = 4
"""A failed check cancels this many clean ones in a contributor's record."""

AUTO_BAN_FAILURES = 2
"""Failed checks after which a contributor without a clean record to outweigh them is
banned by the coordinator."""


def reexecute(
    recipe: Recipe,
    hparams: Mapping[str, Any],
    base: Mapping[str, torch.Tensor],
    data: Dataset,
    *,
    task_id: str,
    max_examples: int,
) -> StateDict:
    """The delta an honest contributor's training of this task gives (on CPU)."""
    result = train_locally(
        recipe, hparams, base, data, max_examples=max_examples, seed=task_seed(task_id)
    )
    return result.delta


def relative_difference(
    uploaded: Mapping[str, torch.Tensor], reference: Mapping[str, torch.Tensor]
) -> float:
    """``|uploaded - reference| / |reference|`` (global L2); inf if the reference is empty."""
    ref_norm = l2_norm(reference)
    diff = l2_norm({k: uploaded[k].float() - reference[k].float() for k in reference})
    if ref_norm == 0:
        return 0.0 if diff == 0 else math.inf
    return diff / ref_norm


def check_probability(passed: int, failed: int, floor: float) -> float:
    """How likely the next update of a contributor with this record is re-executed."""
    if floor <= 0:
        return 0.0
    record = passed - FAIL_WEIGHT * failed
    if record <= 0:
        return 1.0
    return max(floor, 0.5**record)


def should_ban(passed: int, failed: int) -> bool:
    """Whether a record is that of a cheat: caught ``AUTO_BAN_FAILURES`` times at least,
    with no clean record that outweighs it (an honest contributor's rare mismatch on odd
    hardware does not end a long clean record)."""
    return failed >= AUTO_BAN_FAILURES and passed - FAIL_WEIGHT * failed < 0


def chosen_for_check(update_id: str, probability: float) -> bool:
    """Whether this update is checked: a draw seeded by its id, which the coordinator makes
    after the upload, so the contributor cannot know in advance, and every process that
    looks at the same update draws the same."""
    if probability >= 1.0:
        return True
    return random.Random(update_id).random() < probability
