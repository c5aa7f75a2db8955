"""Exceptions raised by the federated core.

    FederatedError
    ├── RecipeError            unknown recipe, bad hyperparameter (also a ValueError)
    ├── DataError              a local data file the participant chose is unusable
    ├── UpdateRejected         a decoded update/model failed validation (has .code, .tensor)
    ├── SignatureError         a manifest signature does not verify
    └── SecAggError            a SecAgg+ round refuses or aborts (federated/secagg/errors.py)

Every message says what was wrong and where, so callers can show it as is.
"""

from __future__ import annotations


class FederatedError(Exception):
    """Base class of every error the core raises on purpose."""


class RecipeError(FederatedError, ValueError):
    """An unknown recipe, or hyperparameters outside what the recipe declares."""


class DataError(FederatedError, ValueError):
    """Local data the participant chose cannot be used (names file, row and column)."""


UPDATE_REJECTION_CODES: tuple[str, ...] = (
    "unknown_tensor",
    "missing_tensor",
    "shape_mismatch",
    "dtype_mismatch",
    "non_finite",
    "norm_too_large",
    "bad_payload",
    "unknown_codec",
)
"""Every ``UpdateRejected.code``; the coordinator answers each as it is (HTTP 422)."""


class UpdateRejected(FederatedError, ValueError):
    """A payload failed validation.

    ``code`` is a stable machine-readable reason (``unknown_tensor``, ``missing_tensor``,
    ``shape_mismatch``, ``dtype_mismatch``, ``non_finite``, ``norm_too_large``,
    ``bad_payload``, ``unknown_codec``) and ``tensor`` names the offending tensor, if any.
    """

    def __init__(self, code: str, message: str, *, tensor: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.tensor = tensor


class SignatureError(FederatedError, ValueError):
    """A signature is malformed or does not verify under the given public key."""
