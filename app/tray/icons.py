"""The app's icons, from ``assets/icons`` (SVG sources and PNG renders, see assets/make_icons.py)."""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path

from PySide6.QtGui import QIcon

from app.tray.status import TrayLook

__all__ = ["ASSETS_ENV", "app_icon", "assets_dir", "tray_icon"]

ASSETS_ENV = "BARNRAISE_ASSETS"  # a packaged build points this at its bundled assets folder
PNG_SIZES = (16, 22, 24, 32, 48, 64, 128, 256)


def assets_dir() -> Path:
    override = os.environ.get(ASSETS_ENV)
    if override:
        return Path(override)
    return Path(__file__).resolve().parents[2] / "assets"


def _icon(stem: str) -> QIcon:
    # PNGs at every size first, so a tray asking for 22 px gets the 22 px render rather than
    # a scaled 256 px one; the SVG last for sizes in between (HiDPI).
    folder = assets_dir() / "icons"
    icon = QIcon()
    for size in PNG_SIZES:
        png = folder / f"{stem}-{size}.png"
        if png.exists():
            icon.addFile(str(png))
    svg = folder / f"{stem}.svg"
    if icon.isNull() and svg.exists():
        icon.addFile(str(svg))
    return icon


@cache
def tray_icon(look: TrayLook) -> QIcon:
    return _icon(f"tray-{look.value}")


@cache
def app_icon() -> QIcon:
    return _icon("barnraise")
