"""Small file helpers for the engine's state: JSON written atomically, quiet removal."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

from federated.files import write_atomic

__all__ = ["remove_quietly", "save_json_atomic"]


def save_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to ``path`` via a temp file and ``os.replace`` (readers never see half)."""
    write_atomic(path, json.dumps(data, sort_keys=True, indent=1))


def remove_quietly(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
