"""Shared test settings: Qt offscreen, hypothesis profile sized for a 2-core CI machine."""

from __future__ import annotations

import os

import torch
from hypothesis import HealthCheck, settings

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

settings.register_profile(
    "barnraise", max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile("barnraise")

# Tiny models train fastest on one thread, and a 2-core CI machine has none to spare.
torch.set_num_threads(1)
