"""The model cache: ``<cache_dir>/models/<sha256>.safetensors``, kept within ``cache_size_mb``.

``CoordinatorClient.download_model`` writes models here and marks each one used (its
modification time is set to now) whenever it hands it out; ``ModelCache.enforce`` then
removes the least recently used models until the cache fits its limit, never a model the
caller names in ``keep`` (the one about to be trained on). The time of last use is the file's
mtime, not its atime (``noatime``/``relatime`` mounts do not keep atime), so it needs no index
that could disagree with the folder, and it holds across restarts and processes.

Also removed: ``.part`` files (interrupted downloads) not written to for ``STALE_PART_S``;
a download in progress writes to its ``.part`` all the time, so it is never that old.

Checkpoints and updates live in the project folders, not here: they belong to a task in
hand and go with it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

__all__ = ["MIB", "STALE_PART_S", "CachedModel", "ModelCache", "touch"]

log = logging.getLogger(__name__)

MIB = 1024 * 1024
"""Bytes in a MiB: ``cache_size_mb`` is in MiB."""

STALE_PART_S = 6 * 3600.0
"""Seconds after its last write that an interrupted download's ``.part`` file is removed.
A resumed download within this keeps what it had; after it, the model has most likely been
replaced by a newer version anyway."""

MODEL_SUFFIX = ".safetensors"
PART_SUFFIX = ".part"


def touch(path: Path) -> None:
    """Mark a cached file used now (a file removed meanwhile is not an error)."""
    with contextlib.suppress(FileNotFoundError):
        os.utime(path)


@dataclass(frozen=True)
class CachedModel:
    digest: str
    path: Path
    size: int
    last_used: float  # epoch seconds (the file's mtime)


class ModelCache:
    """The models folder of one data folder. Safe to use from several threads: a file that
    another thread removed or replaced meanwhile is skipped, never an error."""

    def __init__(self, cache_dir: Path) -> None:
        self.cache_dir = cache_dir

    @property
    def models_dir(self) -> Path:
        return self.cache_dir / "models"

    def path(self, digest: str) -> Path:
        return self.models_dir / f"{digest}{MODEL_SUFFIX}"

    def touch(self, digest: str) -> None:
        touch(self.path(digest))

    def models(self) -> list[CachedModel]:
        """The complete models in the cache, least recently used first."""
        found = []
        for path in self._files(MODEL_SUFFIX):
            try:
                st = path.stat()
            except FileNotFoundError:
                continue
            found.append(
                CachedModel(path.name[: -len(MODEL_SUFFIX)], path, st.st_size, st.st_mtime)
            )
        found.sort(key=lambda m: (m.last_used, m.digest))
        return found

    def size_bytes(self) -> int:
        """Bytes the cache takes now: models and partial downloads."""
        total = 0
        for path in self._files(MODEL_SUFFIX) + self._files(PART_SUFFIX):
            with contextlib.suppress(FileNotFoundError):
                total += path.stat().st_size
        return total

    def enforce(
        self,
        limit_bytes: int,
        keep: Collection[str] = frozenset(),
        *,
        now: float | None = None,
    ) -> list[Path]:
        """Remove stale ``.part`` files, then the least recently used models until models
        and partial downloads together take at most ``limit_bytes``. A model whose digest is
        in ``keep`` is never removed, even if it alone is over the limit. Returns what was
        removed."""
        if limit_bytes < 0:
            raise ValueError(f"limit_bytes must be >= 0, got {limit_bytes!r}")
        now = time.time() if now is None else now
        removed: list[Path] = []
        parts_left = 0
        for part in self._files(PART_SUFFIX):
            try:
                st = part.stat()
            except FileNotFoundError:
                continue
            digest = part.name[: -len(PART_SUFFIX)]
            if digest not in keep and now - st.st_mtime > STALE_PART_S:
                if _remove(part):
                    removed.append(part)
                continue
            parts_left += st.st_size
        models = self.models()
        total = parts_left + sum(m.size for m in models)
        for model in models:
            if total <= limit_bytes:
                break
            if model.digest in keep:
                continue
            if _remove(model.path):
                removed.append(model.path)
            total -= model.size
        if removed:
            log.info(
                "model cache: removed %d file(s), %.1f MiB left (limit %.1f MiB)",
                len(removed),
                total / MIB,
                limit_bytes / MIB,
            )
        return removed

    def _files(self, suffix: str) -> list[Path]:
        try:
            names = os.listdir(self.models_dir)
        except FileNotFoundError:
            return []
        return [self.models_dir / n for n in sorted(names) if n.endswith(suffix)]


def _remove(path: Path) -> bool:
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    except OSError as exc:  # in use on some systems, or permissions: try again next time
        log.info("model cache: could not remove %s: %s", path, exc)
        return False
    return True
