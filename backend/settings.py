"""Limits and project settings, each named once with its default and meaning.

``PROJECT_SETTINGS`` declares what an organiser may set per project (the CLI builds its
``project create`` flags from it, and a test checks docs mention every one). Server-wide
limits are module constants.
"""

from __future__ import annotations

import datetime
import math
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

from federated import screening
from federated.protocol import limits

# Limits of the wire contract, named once in federated.protocol.limits.
JSON_BODY_LIMIT = limits.MAX_JSON_BODY_BYTES
DEFAULT_MAX_PAYLOAD_BYTES = limits.DEFAULT_MAX_PAYLOAD_BYTES
LONG_POLL_MAX_S = limits.MAX_LONG_POLL_S
CHALLENGE_TTL_S = limits.CHALLENGE_TTL_S

LONG_POLL_RECHECK_S = 5.0
"""Seconds; a waiting lease re-reads the database this often even without a wake-up, so a
task made available by another process (several workers on one database) is not missed."""

RETRY_AFTER_NO_WORK_S = 5
"""Seconds in ``Retry-After`` of a 204 (no work now)."""

RETRY_AFTER_PAUSED_S = 60
"""Seconds in ``Retry-After`` of a 503 project_paused."""


AGGREGATION_CLAIM_TTL_S = 600.0
"""Seconds an aggregation claim holds before another process may take it over; a claim by a
process that is no longer alive on this host is taken over at once."""

RECENT_CREDIT_HALF_LIFE_S = 7 * 24 * 3600.0
"""Seconds; recent average credit halves over this (BOINC's RAC uses one week)."""

CREDIT_UNIT = "GFLOP"
"""The unit of credit: 1e9 training floating-point operations."""

PRIVACY_MECHANISMS = ("none", "dp-sgd", "dp-fedavg")
"""``ProjectSettings.privacy``: none, record-level DP-SGD on each contributor, or
user-level DP-FedAvg at the coordinator (``federated.protocol.messages.PrivacyMechanism``)."""

LEASE_LIFE_S = 3600.0
LEASE_LIFE_LEASES = 12
"""A lease lives at most ``LEASE_LIFE_S`` or this many ``lease_s``, whichever is longer,
from its issue, heartbeats or not (``ProjectSettings.lease_life_s``; an hour at the default
300 s): no heartbeat keeps a task out of the pool for ever (issue 12, lease hoarding)."""


@dataclass(frozen=True)
class ProjectSettings:
    """How a project runs its rounds. Every field has a default and a ``help`` text."""

    mode: str = "sync"
    clients_per_round: int = 3
    min_updates: int = 2
    round_deadline_s: float = 120.0
    overprovision: float = 1.3
    buffer_size: int = 3
    max_staleness: int = 4
    staleness_exponent: float = 0.5
    max_concurrent_leases: int = 1000
    lease_s: float = 300.0
    codec: str = "int8"
    max_update_norm: float = 100.0
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES
    invite_required: bool = False
    fit_tasks: bool = True
    max_local_examples: int = 50_000
    outlier_norm_ratio: float = screening.OUTLIER_NORM_RATIO
    clip_norm_ratio: float = screening.CLIP_NORM_RATIO
    max_client_share: float = 0.5
    max_network_share: float = 1.0
    spot_check_rate: float = 0.05
    max_loss_regression: float = 1.0
    replication_tolerance: float = 0.1
    keep_payload_versions: int = 10
    privacy: str = "none"
    dp_epsilon: float = 8.0
    dp_delta: float = 1e-5
    dp_noise_multiplier: float = 1.0
    dp_clip_norm: float = 1.0
    dp_clip_quantile: float = 0.5
    dp_count_stddev: float = 0.0
    finish_after_versions: int = 0
    finish_at_metric: str = ""
    finish_compute_gflop: float = 0.0
    finish_at: str = ""
    model_license: str = ""

    def validate(self) -> ProjectSettings:
        """Return self, or raise ValueError naming the first bad setting."""
        if self.mode not in ("sync", "async"):
            raise ValueError(f"mode must be sync or async, got {self.mode!r}")
        positive_ints = ("clients_per_round", "min_updates", "buffer_size", "max_concurrent_leases")
        for name in positive_ints:
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)!r}")
        if self.min_updates > self.clients_per_round:
            raise ValueError(
                f"min_updates ({self.min_updates}) must not exceed clients_per_round "
                f"({self.clients_per_round})"
            )
        for name in ("round_deadline_s", "lease_s", "max_update_norm"):
            value = float(getattr(self, name))
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive number, got {value!r}")
        if not (1.0 <= self.overprovision <= 10.0):
            raise ValueError(f"overprovision must be within [1, 10], got {self.overprovision!r}")
        if self.max_staleness < 0:
            raise ValueError(f"max_staleness must be >= 0, got {self.max_staleness!r}")
        if not (0.0 <= self.staleness_exponent <= 10.0):
            raise ValueError("staleness_exponent must be within [0, 10]")
        if not (1024 <= self.max_payload_bytes <= 4 * 1024**3):
            raise ValueError("max_payload_bytes must be within [1 KiB, 4 GiB]")
        if not (1 <= self.max_local_examples <= 1_000_000_000):
            raise ValueError("max_local_examples must be within [1, 1e9]")
        for name in ("outlier_norm_ratio", "clip_norm_ratio"):
            value = float(getattr(self, name))
            if not (value == 0 or 1.0 <= value <= 1000.0):
                raise ValueError(f"{name} must be 0 (off) or within [1, 1000], got {value!r}")
        if not (0.0 <= self.spot_check_rate <= 1.0):
            raise ValueError(f"spot_check_rate must be within [0, 1], got {self.spot_check_rate!r}")
        if not (0.0 <= self.max_loss_regression <= 100.0):
            raise ValueError("max_loss_regression must be within [0, 100]")
        if not (0.0 < self.replication_tolerance <= 10.0):
            raise ValueError("replication_tolerance must be within (0, 10]")
        self._validate_finish()
        if not (0 <= self.keep_payload_versions <= 1_000_000):
            raise ValueError(
                "keep_payload_versions must be 0 (keep every payload) or within [1, 1e6], "
                f"got {self.keep_payload_versions!r}"
            )
        for name in ("max_client_share", "max_network_share"):
            value = float(getattr(self, name))
            if not (0.0 < value <= 1.0):
                raise ValueError(f"{name} must be within (0, 1], got {value!r}")
        self._validate_privacy()
        return self

    def _validate_privacy(self) -> None:
        """The privacy settings, and the combinations that would silently weaken either the
        privacy promise or the trust defences (issue 14): refused, each saying why."""
        if self.privacy not in PRIVACY_MECHANISMS:
            raise ValueError(
                f"privacy must be one of {', '.join(PRIVACY_MECHANISMS)}, got {self.privacy!r}"
            )
        if self.privacy == "none":
            return
        checks = (
            ("dp_epsilon", 0.0, limits.MAX_DP_EPSILON),
            ("dp_delta", 0.0, limits.MAX_DP_DELTA),
            ("dp_noise_multiplier", 0.0, limits.MAX_DP_NOISE_MULTIPLIER),
            ("dp_clip_norm", 0.0, limits.MAX_DP_CLIP_NORM),
        )
        for name, low, high in checks:
            value = float(getattr(self, name))
            if not (math.isfinite(value) and low < value <= high):
                raise ValueError(f"{name} must be within ({low:g}, {high:g}], got {value!r}")
        if not (0.0 <= self.dp_clip_quantile < 1.0):
            raise ValueError(
                f"dp_clip_quantile must be within [0, 1), got {self.dp_clip_quantile!r}"
            )
        if not (math.isfinite(self.dp_count_stddev) and self.dp_count_stddev >= 0):
            raise ValueError("dp_count_stddev must be 0 (automatic) or a positive number")
        if self.privacy == "dp-sgd" and self.spot_check_rate > 0:
            raise ValueError(
                "privacy dp-sgd needs spot_check_rate 0: each contributor's noise is a secret "
                "the coordinator never learns, so it cannot train a task again to compare"
            )
        if self.privacy == "dp-fedavg":
            if self.outlier_norm_ratio or self.clip_norm_ratio:
                raise ValueError(
                    "privacy dp-fedavg needs outlier_norm_ratio 0 and clip_norm_ratio 0: they "
                    "judge an update by the others' norms, which breaks the privacy analysis; "
                    "the privacy clip bounds every update instead"
                )
            counted = self.dp_clip_quantile > 0 and self.dp_count_stddev
            if counted and 2 * self.dp_count_stddev <= self.dp_noise_multiplier:
                raise ValueError(
                    "dp_count_stddev must be over half of dp_noise_multiplier (adaptive "
                    "clipping spends part of the noise on counting the clipped updates)"
                )

    def _validate_finish(self) -> None:
        if not (0 <= self.finish_after_versions <= 100_000_000):
            raise ValueError("finish_after_versions must be 0 (never) or within [1, 1e8]")
        if not (math.isfinite(self.finish_compute_gflop) and self.finish_compute_gflop >= 0):
            raise ValueError("finish_compute_gflop must be 0 (never) or a positive number")
        metric_target(self.finish_at_metric)  # raises naming the mistake
        finish_time(self.finish_at)
        if not _LICENSE.match(self.model_license):
            raise ValueError(
                "model_license must be an SPDX licence id or a short name (letters, digits, "
                f"'.', '+', '-', spaces; at most 64), got {self.model_license!r}"
            )

    @property
    def dp_expected_updates(self) -> int:
        """Updates in one aggregate: a sync round's or an async buffer's."""
        return self.clients_per_round if self.mode == "sync" else self.buffer_size

    @property
    def dp_count_noise(self) -> float:
        """dp-fedavg with adaptive clipping: the noise on the count of unclipped updates,
        expected updates / 20 as Andrew et al. advise, and never at or below half the noise
        multiplier (the update noise would have to be infinite)."""
        if self.dp_count_stddev:
            return self.dp_count_stddev
        return max(self.dp_expected_updates / 20.0, self.dp_noise_multiplier)

    @property
    def finish_at_s(self) -> float | None:
        """``finish_at`` as Unix seconds, or None when the project has no end date."""
        return finish_time(self.finish_at)

    def per_source_cap(self, share: float, updates: int) -> int:
        """How many of ``updates`` in one aggregate one contributor or network may supply."""
        return max(1, math.floor(share * updates + 1e-9))

    def client_cap(self, updates: int) -> int:
        """How many of ``updates`` in one aggregate one contributor may supply: its share,
        and with user-level privacy (dp-fedavg) one, whatever the share, because the noise
        is calibrated to one clipped update per contributor."""
        if self.privacy == "dp-fedavg":
            return 1
        return self.per_source_cap(self.max_client_share, updates)

    @property
    def leases_per_round(self) -> int:
        """Sync mode: leases handed out per round, more than needed so stragglers don't stall it."""
        return max(self.clients_per_round, math.ceil(self.clients_per_round * self.overprovision))

    @property
    def lease_life_s(self) -> float:
        """Seconds a lease lives at most from its issue, however often it heartbeats (an
        hour, or ``LEASE_LIFE_LEASES`` x ``lease_s`` if longer); then it expires and its task
        is back in the pool."""
        return max(LEASE_LIFE_S, LEASE_LIFE_LEASES * self.lease_s)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ProjectSettings:
        """Settings from stored or user data; unknown keys are an error, types are coerced."""
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ValueError(f"unknown project setting {unknown[0]!r}; known: {', '.join(known)}")
        values: dict[str, Any] = {}
        if data.get("privacy") == "dp-fedavg":  # the median screens are off unless asked for
            values.update({"outlier_norm_ratio": 0.0, "clip_norm_ratio": 0.0})
        defaults = cls()
        for name, value in data.items():
            values[name] = _coerce(name, type(getattr(defaults, name)), value)
        return cls(**values).validate()


_LICENSE = re.compile(r"^[A-Za-z0-9.+\- ]{0,64}$")
_METRIC_TARGET = re.compile(r"^\s*([a-z][a-z0-9_]{0,63})\s*(>=|<=)\s*(\S+)\s*$")


def metric_target(text: str) -> tuple[str, str, float] | None:
    """``finish_at_metric`` ("accuracy>=0.98", "loss<=1.2") as (metric, operator, value);
    None when empty. ValueError saying what is accepted otherwise."""
    if not text:
        return None
    match = _METRIC_TARGET.match(text)
    value = _finite(match.group(3)) if match else None
    if match is None or value is None:
        raise ValueError(
            f"finish_at_metric must be METRIC>=VALUE or METRIC<=VALUE on the held-out "
            f"metrics (e.g. accuracy>=0.98, loss<=1.2), got {text!r}"
        )
    return match.group(1), match.group(2), value


def finish_time(text: str) -> float | None:
    """``finish_at`` (ISO 8601, UTC unless it names a zone) as Unix seconds; None if empty."""
    if not text:
        return None
    try:
        when = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"finish_at must be an ISO 8601 date or time (e.g. 2027-03-31 or "
            f"2027-03-31T18:00+01:00), got {text!r}"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)
    return when.timestamp()


def _finite(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


_TRUE_WORDS = ("1", "true", "yes", "on")
_FALSE_WORDS = ("0", "false", "no", "off")


def _coerce(name: str, kind: type, value: Any) -> Any:
    """``value`` as a setting of type ``kind``; ValueError naming the setting otherwise (a
    mistyped on/off word is refused, never read as off)."""
    if kind is bool and isinstance(value, str):
        word = value.strip().lower()
        if word not in _TRUE_WORDS + _FALSE_WORDS:
            raise ValueError(
                f"{name} must be on or off ({', '.join(_TRUE_WORDS + _FALSE_WORDS)}), got {value!r}"
            )
        return word in _TRUE_WORDS
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a {kind.__name__}, got {value!r}") from None


SETTING_HELP: dict[str, str] = {
    "mode": "sync: rounds of clients_per_round updates; async: FedBuff, aggregate every buffer_size updates",
    "clients_per_round": "sync: updates that complete a round at once",
    "min_updates": "sync: updates that complete a round once round_deadline_s has passed",
    "round_deadline_s": "sync: seconds after a version is published before min_updates suffice",
    "overprovision": "sync: leases per round = ceil(clients_per_round x this), so stragglers don't stall a round",
    "buffer_size": "async: aggregate every this many accepted updates (FedBuff's K)",
    "max_staleness": "async: reject updates based on a version more than this many versions old",
    "staleness_exponent": "async: an update s versions behind weighs (1+s)^-exponent",
    "max_concurrent_leases": "async: live leases at most at once",
    "lease_s": "seconds a lease lives without a heartbeat; an expired lease returns its task to the pool",
    "codec": "update codec contributors must use (f32, f16, int8, int8-block, topk:F)",
    "max_update_norm": "updates with a larger global L2 norm are rejected (norm_too_large)",
    "max_payload_bytes": "largest update body accepted (413 payload_too_large)",
    "invite_required": "joining needs an invite code (barnraise-backend invite create)",
    "max_local_examples": "local-data projects: the most examples one task may claim; its credit and FedAvg weight stop there",
    "outlier_norm_ratio": "an update whose L2 norm is over this x the median of its aggregate is kept out (norm_outlier; 0: off)",
    "clip_norm_ratio": "the other updates of an aggregate are scaled down to at most this x its median norm (0: off)",
    "max_client_share": "async: the largest share of one aggregate that one contributor may supply (at least one update)",
    "max_network_share": "the largest share of one aggregate that one network (IPv4 /24, IPv6 /48) may supply; below 1 only where volunteers are not behind one NAT",
    "spot_check_rate": "built-in data: the least share of a contributor's updates the coordinator re-executes and compares (newcomers and anyone who failed a check: every update); 0: off",
    "replication_tolerance": "a spot check passes when the update differs from its re-execution by at most this (relative L2)",
    "max_loss_regression": "a new version whose held-out loss is more than this share above its base version's is not published: the updates that cause it are kept out (harms_model); 0: off",
    "keep_payload_versions": "an update's payload is deleted this many versions after it was aggregated or kept out (its digest, signed manifest and proofs stay); 0: keep every payload",
    "privacy": "none; dp-sgd: record-level differential privacy, each contributor clips per-example gradients and adds noise locally; dp-fedavg: user-level, the coordinator clips each update and adds noise to the sum",
    "dp_epsilon": "the privacy budget epsilon: training stops when the epsilon spent would pass it (dp-sgd: each contributor's own)",
    "dp_delta": "the privacy delta: the chance the guarantee fails, far below 1 / records",
    "dp_noise_multiplier": "the Gaussian noise's standard deviation over the clipping bound",
    "dp_clip_norm": "dp-sgd: each example's gradient L2 bound; dp-fedavg: the first bound on each update",
    "dp_clip_quantile": "dp-fedavg: adapt the update bound so this share of updates is not clipped (0: a fixed bound)",
    "dp_count_stddev": "dp-fedavg adaptive clipping: noise on the count of unclipped updates (0: expected updates / 20, at least the noise multiplier)",
    "finish_after_versions": "the project finishes (stops training, its model final) once this many versions are published; 0: never",
    "finish_at_metric": "the project finishes at the first version whose held-out metric reaches this, METRIC>=VALUE or METRIC<=VALUE (accuracy>=0.98, loss<=1.2); empty: never",
    "finish_compute_gflop": "the project finishes once the updates in its model took this much compute, in GFLOP; 0: never",
    "finish_at": "the project finishes at this date or time (ISO 8601, UTC unless given: 2027-03-31); empty: never",
    "model_license": "the trained model's licence, shown on its model card: an SPDX id (CC-BY-4.0, Apache-2.0) or a short name; empty: not stated",
    "fit_tasks": "size each task (full, 1/2 or 1/4 of its steps) to the contributor's measured pace so its update arrives while still useful, and withhold it when even 1/4 would not",
}
"""One line per ProjectSettings field: shown by the CLI, checked against the docs."""
