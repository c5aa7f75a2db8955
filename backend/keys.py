"""Project signing keys: Ed25519, one file per project in ``DATA/keys`` with 0600 permissions."""

from __future__ import annotations

import os
from pathlib import Path

from federated.files import write_atomic
from federated.protocol import is_project_name
from federated.signing import SigningKey


class KeyStore:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        if os.name == "posix":
            os.chmod(self.root, 0o700)
        self._cache: dict[str, SigningKey] = {}

    def _path(self, project: str) -> Path:
        if not is_project_name(project):
            raise ValueError(f"not a project name: {project[:80]!r}")
        return self.root / f"{project}.ed25519"

    def create(self, project: str) -> SigningKey:
        """A new key for ``project``, written with 0600 before any byte of it is."""
        key = SigningKey.generate()
        write_atomic(self._path(project), key.private_bytes(), mode=0o600)
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
