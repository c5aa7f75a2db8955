"""Checks that a decoded update or model fits the model it claims to belong to.

The codec calls these on every payload it decodes, and the coordinator may call
``validate_state`` on tensors it got another way. Each failure raises
``UpdateRejected`` with a stable code and a message that names the tensor and the reason.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import torch

from federated.errors import UpdateRejected
from federated.tensors import TensorSpec

# Rows this long keep the float32 partial sums of the norm accurate (error ~ 1e-7
# relative per row) while the reduction stays a few fast vectorised passes.
_NORM_ROW = 4096


def format_shape(shape: Iterable[int]) -> str:
    """A shape as users read it: ``(64, 32)``, ``(10,)``, ``()``."""
    return str(tuple(int(d) for d in shape))


def check_names(names: Iterable[str], spec: TensorSpec, *, what: str = "update") -> None:
    """Raise ``unknown_tensor`` or ``missing_tensor`` unless ``names`` equals the spec's names.

    Unknown names are reported first: a payload for another model usually has both,
    and "not in this model" is the more telling of the two.
    """
    present = set(names)
    unknown = sorted(present.difference(spec))
    if unknown:
        name = unknown[0]
        more = f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""
        raise UpdateRejected(
            "unknown_tensor",
            f"{what} has tensor {name!r}{more} that the model does not have; "
            "it was probably made for another model or recipe version",
            tensor=name,
        )
    missing = sorted(set(spec).difference(present))
    if missing:
        name = missing[0]
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise UpdateRejected(
            "missing_tensor",
            f"{what} lacks tensor {name!r}{more} that the model has; "
            "an update must carry every tensor of the model",
            tensor=name,
        )


def check_shape(name: str, shape: Iterable[int], spec: TensorSpec) -> None:
    """Raise ``shape_mismatch`` unless ``shape`` is the spec's shape for ``name``."""
    got = tuple(int(d) for d in shape)
    want = tuple(int(d) for d in spec[name][0])
    if got != want:
        raise UpdateRejected(
            "shape_mismatch",
            f"tensor {name!r}: shape {format_shape(got)} does not match the model's "
            f"{format_shape(want)}",
            tensor=name,
        )


def tensor_sq_norm(tensor: torch.Tensor) -> float:
    """Sum of squares of ``tensor`` as a Python float; NaN or inf if any entry is not finite.

    Computed as float32 partial sums over short rows, added up in float64: about as
    fast as one read of the tensor, and far more accurate than one float32 sum.
    A float32 square can overflow for entries above ~1.8e19; that case falls back to
    float64 so a large but finite tensor is never mistaken for a non-finite one.
    """
    flat = tensor.reshape(-1)
    if flat.dtype != torch.float32:
        flat = flat.float()
    n = flat.numel()
    full = n - n % _NORM_ROW
    total = 0.0
    if full:
        rows = torch.linalg.vector_norm(flat[:full].view(-1, _NORM_ROW), dim=1)
        total += float(torch.dot(rows.double(), rows.double()))
    if full < n:
        tail = flat[full:].double()
        total += float(torch.dot(tail, tail))
    if math.isinf(total) and bool(torch.isfinite(flat).all()):
        wide = flat.double()
        total = float(torch.dot(wide, wide))
    return total


def validate_values(
    state: Mapping[str, torch.Tensor], *, max_norm: float | None = None, what: str = "update"
) -> float:
    """Raise ``non_finite`` or ``norm_too_large``; return the global L2 norm.

    Every tensor is read once: the norm doubles as the finiteness check, since any
    NaN or infinity makes its tensor's sum of squares NaN or infinite.
    """
    if max_norm is not None and not (math.isfinite(max_norm) and max_norm >= 0):
        raise ValueError(f"max_norm must be a finite number >= 0, got {max_norm!r}")
    total = 0.0
    largest_name, largest = "", -1.0
    for name in sorted(state):
        sq = tensor_sq_norm(state[name])
        if not math.isfinite(sq):
            bad = int((~torch.isfinite(state[name])).sum())
            raise UpdateRejected(
                "non_finite",
                f"tensor {name!r}: {bad} of {state[name].numel()} values are NaN or infinite; "
                f"the {what} is unusable (training probably diverged: lower the learning rate)",
                tensor=name,
            )
        total += sq
        if sq > largest:
            largest_name, largest = name, sq
    norm = math.sqrt(total)
    if max_norm is not None and norm > max_norm:
        raise UpdateRejected(
            "norm_too_large",
            f"{what} L2 norm {norm:.6g} exceeds the limit {max_norm:.6g} "
            f"(largest part: tensor {largest_name!r} with norm {math.sqrt(largest):.6g})",
            tensor=None,
        )
    return norm


def validate_state(
    state: Mapping[str, torch.Tensor],
    spec: TensorSpec,
    *,
    max_norm: float | None = None,
    what: str = "update",
) -> float:
    """Check names, shapes, dtypes, finiteness and the norm bound; return the L2 norm.

    Raises ``UpdateRejected`` (``unknown_tensor``, ``missing_tensor``, ``shape_mismatch``,
    ``dtype_mismatch``, ``non_finite``, ``norm_too_large``) at the first failure, in that
    order, so the same bad input always gives the same error.
    """
    check_names(state, spec, what=what)
    for name in sorted(state):
        check_shape(name, state[name].shape, spec)
    for name in sorted(state):
        want = spec[name][1]
        if state[name].dtype != want:
            raise UpdateRejected(
                "dtype_mismatch",
                f"tensor {name!r}: dtype {state[name].dtype} does not match the model's {want}",
                tensor=name,
            )
    return validate_values(state, max_norm=max_norm, what=what)
