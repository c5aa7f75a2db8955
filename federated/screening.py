"""Screening updates for work they do not carry, and for sizes that do not belong together.

Two kinds of test, both cheap next to decoding the payload:

- ``free_ride_reason`` looks at one update alone: a delta of (almost) no length, or one
  that is the base model sent back, does no training however many examples it claims.
- ``norm_outliers`` and ``clip_delta`` look at the updates of one aggregate together:
  honest deltas of one round have norms of one order (measured on digits-mlp over 25
  rounds of 10 clients with full, half and quarter tasks: at most 5.2x and at least 0.058x
  the round's median under Dirichlet(0.3), 3.3x and 0.18x with IID shards), so one far
  longer than the median is an attempt to steer, and capping the rest at a multiple of the
  median bounds what any one update can do.

The coordinator runs the first at upload and the second at aggregation; the simulator
can run both, so a defence is tried offline with the same code.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from federated.tensors import ClientUpdate, StateDict, l2_norm

EMPTY_NORM = 1e-9
"""A delta shorter than this (global L2) is empty, whatever the model."""

TINY_FRACTION = 0.01
"""A delta shorter than this share of the typical norm of the project's recent updates
carries no real training: honest updates of a quarter task are about a third as long."""

OUTLIER_NORM_RATIO = 8.0
"""Default: an update over this x its aggregate's median norm is kept out (honest ones
reached 5.2x in the measurement above)."""

CLIP_NORM_RATIO = 3.0
"""Default: the rest are scaled down to at most this x the median norm."""

ECHO_COSINE = 0.95
"""A delta this aligned with the base model itself (and at least half its length) is the
base model sent back, not a change to it."""


@dataclass(frozen=True)
class Finding:
    """A reason code and a sentence for the contributor."""

    code: str
    message: str


def dot(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> float:
    """Sum over tensors of the elementwise product, in float64."""
    return math.fsum(float(torch.sum(a[k].double() * b[k].double())) for k in a)


def free_ride_reason(
    delta: Mapping[str, torch.Tensor],
    norm: float,
    base: Mapping[str, torch.Tensor] | None,
    typical_norm: float | None,
) -> Finding | None:
    """Why ``delta`` (of global L2 ``norm``) carries no training, or None.

    ``typical_norm`` is the median norm of the project's recent accepted updates (None
    before there are any); ``base`` the model the task trained from (None: not checked).
    """
    if norm < EMPTY_NORM:
        return Finding("empty_update", f"the update is empty (L2 norm {norm:.3g})")
    if typical_norm is not None and norm < TINY_FRACTION * typical_norm:
        return Finding(
            "empty_update",
            f"the update's L2 norm {norm:.3g} is under {TINY_FRACTION:g} of the typical "
            f"{typical_norm:.3g}: it carries almost no training",
        )
    if base is not None:
        base_norm = l2_norm(base)
        if base_norm > 0 and norm >= 0.5 * base_norm:
            cosine = dot(delta, base) / (norm * base_norm)
            if cosine > ECHO_COSINE:
                return Finding(
                    "echoes_base",
                    f"the update is the base model sent back (cosine {cosine:.3f} with the "
                    "model's own weights), not a change to it",
                )
    return None


def norm_outliers(norms: Sequence[float], ratio: float, *, min_updates: int = 3) -> list[int]:
    """Indices of the norms above ``ratio`` x their median (none below ``min_updates``
    norms, where a median says little, or when ``ratio`` is 0: off)."""
    if ratio <= 0 or len(norms) < min_updates:
        return []
    cap = ratio * statistics.median(norms)
    return [i for i, n in enumerate(norms) if n > cap]


def defend_round(
    updates: Sequence[ClientUpdate],
    outlier_ratio: float = OUTLIER_NORM_RATIO,
    clip_ratio: float = CLIP_NORM_RATIO,
) -> list[ClientUpdate]:
    """One aggregate's updates as the coordinator lets them in: norm outliers out, the rest
    clipped to ``clip_ratio`` x the median norm (for the simulator; the coordinator does the
    same on the norms it recorded at upload)."""
    norms = [l2_norm(u.delta) for u in updates]
    out = set(norm_outliers(norms, outlier_ratio))
    kept = [(u, n) for i, (u, n) in enumerate(zip(updates, norms, strict=True)) if i not in out]
    if clip_ratio <= 0 or len(norms) < 3:
        return [u for u, _ in kept]
    cap = clip_ratio * statistics.median(norms)
    return [dataclasses.replace(u, delta=clip_delta(u.delta, n, cap)) for u, n in kept]


def clip_delta(delta: StateDict, norm: float | None, cap: float) -> StateDict:
    """``delta`` (of global L2 ``norm``; None: computed) scaled down to norm ``cap`` if longer."""
    if norm is None:
        norm = l2_norm(delta)
    if norm <= cap or norm == 0:
        return delta
    scale = cap / norm
    return {k: v * scale for k, v in delta.items()}
