"""Clipping a whole update for user-level differential privacy, and the one bit it reports.

User-level DP (DP-FedAvg, ``federated.strategies.dp_fedavg``) bounds what one contributor
can change in an aggregate by clipping each update to a global L2 norm ``C``. The
contributor clips (so the update it signs is the one that counts) and reports whether the
update was already within ``C``: adaptive clipping (Andrew et al. 2021) moves ``C`` towards
a quantile of the update norms from those bits alone. The coordinator clips again, since
a contributor may not, and checks the bit against the norm it decoded
(``counts_as_within``), since a contributor may lie.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from federated.screening import clip_delta
from federated.tensors import StateDict

WITHIN_CLIP_SLACK = 0.05
"""A reported "within the clip" is believed up to this share over ``C``: lossy codecs
(int8, top-k with error feedback) move the decoded norm of an honest update by a few per
cent, and a longer update is plainly not within, whatever its sender says."""


def update_norm(delta: Mapping[str, torch.Tensor]) -> float:
    """Global L2 norm over every tensor of ``delta``, accumulated in float64."""
    total = 0.0
    for t in delta.values():
        total += float(torch.linalg.vector_norm(t, dtype=torch.float64)) ** 2
    return math.sqrt(total)


def check_clip_norm(clip_norm: float) -> float:
    """``clip_norm`` as a float, or ValueError: a bound must be a finite number > 0."""
    if isinstance(clip_norm, bool) or not isinstance(clip_norm, int | float):
        raise ValueError(f"clip_norm must be a number, got {clip_norm!r}")
    if not math.isfinite(clip_norm) or clip_norm <= 0:
        raise ValueError(f"clip_norm must be a finite number > 0, got {clip_norm!r}")
    return float(clip_norm)


def clip_update(delta: StateDict, clip_norm: float) -> tuple[StateDict, bool]:
    """``(delta scaled to global L2 norm <= clip_norm, whether it already was)``.

    Within the bound, ``delta`` itself comes back (no copy). Raises ValueError for a bad
    bound or a delta that is not finite (no scale would bound it).
    """
    bound = check_clip_norm(clip_norm)
    norm = update_norm(delta)
    if not math.isfinite(norm):
        raise ValueError("the update has non-finite values; it cannot be clipped")
    return clip_delta(delta, norm, bound), norm <= bound


def counts_as_within(reported: bool | None, norm: float, clip_norm: float) -> bool:
    """The clipping bit the coordinator counts for an update of decoded ``norm``.

    ``reported`` (the contributor's ``within_clip``) is believed unless the norm is over
    ``clip_norm`` by more than ``WITHIN_CLIP_SLACK``; None (not reported) is decided by the
    norm alone. A false "not within" cannot be detected and is counted as sent: it moves
    the bound by one bit's worth, as any contributor's honest bit does.
    """
    if norm > clip_norm * (1.0 + WITHIN_CLIP_SLACK):
        return False
    if reported is None:
        return norm <= clip_norm
    return bool(reported)
