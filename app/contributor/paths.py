"""Where the contributor engine keeps its files: everything below one data folder."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import platformdirs

__all__ = ["DATA_DIR_ENV", "EnginePaths"]

DATA_DIR_ENV = "BARNRAISE_DATA_DIR"


@dataclass(frozen=True)
class EnginePaths:
    """Where the engine keeps its files; everything below ``data_dir``."""

    data_dir: Path

    @classmethod
    def default(cls, data_dir: Path | None = None) -> EnginePaths:
        if data_dir is None:
            env = os.environ.get(DATA_DIR_ENV)
            data_dir = (
                Path(env) if env else Path(platformdirs.user_data_dir("barnraise", appauthor=False))
            )
        return cls(data_dir=data_dir)

    @property
    def cache_dir(self) -> Path:
        return self.data_dir / "cache"

    @property
    def state_dir(self) -> Path:
        return self.data_dir / "state"

    @property
    def runtime_dir(self) -> Path:
        return self.data_dir / "run"

    @property
    def ledger_path(self) -> Path:
        return self.data_dir / "ledger.sqlite"

    def project_dir(self, key: str, project: str) -> Path:
        return self.state_dir / f"{project}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"
