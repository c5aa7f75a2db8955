"""Where the packaging tests find the built artefacts (shared by conftest and the tests)."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DIST = ROOT / "dist"
VERSION: str = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"][
    "version"
]
DEB = DIST / f"barnraise_{VERSION}_amd64.deb"
TARBALL = DIST / f"barnraise-{VERSION}-linux-x86_64.tar.gz"
APP_ID = "org.barnraise.Barnraise"
