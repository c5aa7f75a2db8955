"""The volunteer's side of a project's differential-privacy promise (issue 14).

At join the terms the volunteer was shown (the protocol's ``PrivacyTerms``, or none) are
saved beside the project's other local state; every task must carry exactly those terms,
or it is refused and the project stops until the volunteer joins again and consents to the
new ones (a coordinator cannot quietly drop the noise for one contributor). For dp-sgd the
file also keeps what each task spent, so the training child's accountant can refuse a task
that would take the epsilon on the volunteer's own data past the budget.

No torch here: the engine only stores spends; the child computes epsilon.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.contributor.client import save_json_atomic
from app.contributor.paths import EnginePaths

log = logging.getLogger(__name__)

PRIVACY_FILE = "privacy.json"

_TERM_KEYS = ("mechanism", "epsilon", "delta", "noise_multiplier", "clip_norm", "clip_quantile")


def normal_terms(terms: Any) -> dict[str, Any] | None:
    """The terms in a comparable form (the known keys; clip_quantile 0 when absent)."""
    if not isinstance(terms, Mapping):
        return None
    normal = {k: terms.get(k) for k in _TERM_KEYS}
    if normal["clip_quantile"] is None:
        normal["clip_quantile"] = 0.0
    return normal


@dataclass
class PrivacyRecord:
    """What the volunteer consented to in one project, and (dp-sgd) what it has spent."""

    path: Path
    terms: dict[str, Any] | None = None
    spends: list[dict[str, Any]] = field(default_factory=list)
    epsilon: float = 0.0  # dp-sgd: spent on this machine's data, as the child last computed

    @classmethod
    def load(cls, project_dir: Path) -> PrivacyRecord:
        """The record in ``project_dir``; none saved (joined before privacy existed) reads
        as consent to no privacy terms."""
        path = project_dir / PRIVACY_FILE
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return cls(path)
        except (OSError, ValueError) as exc:
            # Unreadable: consent to nothing, so every private task is refused, not trusted.
            log.warning(
                "unreadable %s (%s): refusing private tasks until you join again", path, exc
            )
            return cls(path, terms={"mechanism": "unreadable"})
        spends = data.get("spends") if isinstance(data, dict) else None
        return cls(
            path,
            terms=normal_terms(data.get("terms")) if isinstance(data, dict) else None,
            spends=[dict(s) for s in spends if isinstance(s, dict)]
            if isinstance(spends, list)
            else [],
            epsilon=float(data.get("epsilon", 0.0)) if isinstance(data, dict) else 0.0,
        )

    def save(self) -> None:
        save_json_atomic(
            self.path, {"terms": self.terms, "spends": self.spends, "epsilon": self.epsilon}
        )

    def task_problem(self, manifest: Mapping[str, Any]) -> str | None:
        """Why a task may not be trained under what the volunteer agreed to, or None."""
        offered = normal_terms(manifest.get("privacy"))
        if offered == self.terms:
            return None
        return (
            f"this task's privacy terms ({describe(offered)}) are not the ones you agreed to "
            f"({describe(self.terms)}); no work is done for the project until you join it "
            "again and consent to them"
        )

    def add_spend(self, spend: Mapping[str, Any], epsilon: float | None) -> None:
        """Keep a dp-sgd task's spend (before its update is sent: once trained, it counts)."""
        self.spends.append(dict(spend))
        if epsilon is not None:
            self.epsilon = max(self.epsilon, float(epsilon))
        self.save()


def consent(paths: EnginePaths, key: str, project: str, terms: Any) -> None:
    """Save the privacy terms shown to the volunteer at join, keeping earlier spends (a
    spend on this machine's data never stops counting)."""
    record = PrivacyRecord.load(paths.project_dir(key, project))
    record.terms = normal_terms(terms)
    record.save()


def describe(terms: Mapping[str, Any] | None) -> str:
    """One line for people: the mechanism and its numbers."""
    if not terms:
        return "no differential privacy"
    mechanism = terms.get("mechanism")
    numbers = f"epsilon {terms.get('epsilon')}, delta {terms.get('delta')}"
    if mechanism == "dp-sgd":
        return (
            f"record-level DP-SGD ({numbers}; noise {terms.get('noise_multiplier')} x the "
            f"per-example clip {terms.get('clip_norm')})"
        )
    if mechanism == "dp-fedavg":
        return (
            f"user-level DP-FedAvg at the coordinator ({numbers}; noise "
            f"{terms.get('noise_multiplier')} x the update clip, first {terms.get('clip_norm')})"
        )
    return f"unknown terms {mechanism!r}"


def disclosure(terms: Mapping[str, Any] | None) -> list[str]:
    """What the volunteer is told before joining a project with these terms."""
    if not terms:
        return []
    if terms.get("mechanism") == "dp-sgd":
        return [
            f"Privacy: {describe(terms)}. Your computer clips each example's gradient and "
            "adds noise before anything leaves it, keeps its own account of the privacy spent "
            f"on your data and stops training for this project when epsilon would pass "
            f"{terms.get('epsilon')}. No loss computed on your data is sent.",
        ]
    return [
        f"Privacy: {describe(terms)}. Your whole update is clipped before it is sent; the "
        "coordinator sees it, adds noise to the sum of everyone's updates and stops the "
        "project when its budget is spent, so the published models do not reveal whether you "
        "took part. No loss computed on your data is sent.",
    ]


def summary(project_dir: Path) -> str | None:
    """For status: the terms agreed to and, for dp-sgd, the epsilon spent on this
    machine's data; None for a project without privacy terms."""
    record = PrivacyRecord.load(project_dir)
    if not record.terms:
        return None
    text = describe(record.terms)
    if record.terms.get("mechanism") == "dp-sgd":
        text += (
            f"; epsilon spent on your data: {record.epsilon:.3g} of {record.terms.get('epsilon')}"
        )
    return text
