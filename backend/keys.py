"""Project signing keys: Ed25519, one file per project in ``DATA/keys`` with 0600 permissions."""

from __future__ import annotations

import os
import re
from pathlib import Path

from federated.signing import SigningKey

PROJECT_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")


class KeyStore:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        if os.name == "posix":
            os.chmod(self.root, 0o700)
        self._cache: dict[str, SigningKey] = {}

    def _path(self, project: str) -> Path:
        if not PROJECT_NAME_RE.match(project):
            raise ValueError(f"not a project name: {project[:80]!r}")
        return self.root / f"{project}.ed25519"

    def create(self, project: str) -> SigningKey:
        """A new key for ``project``, written with 0600 before any byte of it is."""
        key = SigningKey.generate()
        path = self._path(project)
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(key.private_bytes())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        self._cache[project] = key
        return key

    def load(self, project: str) -> SigningKey:
        key = self._cache.get(project)
        if key is None:
            path = self._path(project)
            try:
                raw = path.read_bytes()
            except FileNotFoundError:
                raise FileNotFoundError(
                    f"{path}: the signing key of project {project!r} is missing; restore it from "
                    "a backup of the data folder (tasks and models cannot be signed without it)"
                ) from None
            key = SigningKey.from_private_bytes(raw)
            self._cache[project] = key
        return key
