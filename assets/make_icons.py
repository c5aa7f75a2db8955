"""Write the SVG sources of the app and tray icons, then render the PNG sizes with QSvgRenderer.

Run ``python assets/make_icons.py`` after changing a colour or a shape; the SVGs and PNGs are
committed so that packaging and the tray need no build step. The tray icons are one barn
silhouette coloured by state with a badge whose *shape* also tells the state, so the icon
reads for colour-blind volunteers and at 16 px.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent / "icons"
SIZES = (16, 22, 24, 32, 48, 64, 128, 256)

# A gambrel-roofed barn in a 64x64 box.
BARN = "M6 60 V30 L14 15 L32 5 L50 15 L58 30 V60 Z"
DOOR = "M23 60 V41 H41 V60 Z"
HAYLOFT = "M28 22 H36 V29 H28 Z"

STATES = {
    # state: (barn colour, badge colour, badge glyph)
    "idle": ("#64748B", None, None),
    "training": ("#15803D", "#22C55E", "play"),
    "throttled": ("#B45309", "#F59E0B", "gauge"),
    "paused": ("#475569", "#94A3B8", "pause"),
    "error": ("#991B1B", "#DC2626", "bang"),
}


def _door(colour: str) -> str:
    # Light door with the cross brace a barn door has; drawn thick so it survives 22 px.
    return (
        f'<path d="{DOOR}" fill="#FFFFFF" fill-opacity="0.92"/>'
        f'<path d="M23 41 L41 60 M41 41 L23 60" stroke="{colour}" stroke-width="3"/>'
        f'<path d="{HAYLOFT}" fill="#FFFFFF" fill-opacity="0.92"/>'
    )


def _badge(colour: str, glyph: str) -> str:
    cx, cy, r = 47, 47, 15
    out = [f'<circle cx="{cx}" cy="{cy}" r="{r + 2.5}" fill="#FFFFFF"/>']
    out.append(f'<circle cx="{cx}" cy="{cy}" r="{r}" fill="{colour}"/>')
    if glyph == "play":
        out.append(
            f'<path d="M{cx - 5} {cy - 8} L{cx + 8} {cy} L{cx - 5} {cy + 8} Z" fill="#FFFFFF"/>'
        )
    elif glyph == "pause":
        out.append(f'<rect x="{cx - 7}" y="{cy - 8}" width="5" height="16" rx="1" fill="#FFFFFF"/>')
        out.append(f'<rect x="{cx + 2}" y="{cy - 8}" width="5" height="16" rx="1" fill="#FFFFFF"/>')
    elif glyph == "gauge":
        # A half-full bar: "working, but held back".
        out.append(
            f'<rect x="{cx - 9}" y="{cy - 4}" width="18" height="8" rx="2" fill="none" '
            f'stroke="#FFFFFF" stroke-width="2.5"/>'
        )
        out.append(f'<rect x="{cx - 9}" y="{cy - 4}" width="9" height="8" rx="1" fill="#FFFFFF"/>')
    elif glyph == "bang":
        out.append(
            f'<rect x="{cx - 2.5}" y="{cy - 10}" width="5" height="13" rx="2" fill="#FFFFFF"/>'
        )
        out.append(f'<circle cx="{cx}" cy="{cy + 7}" r="3" fill="#FFFFFF"/>')
    return "".join(out)


def state_svg(state: str) -> str:
    barn, badge, glyph = STATES[state]
    body = [
        '<svg xmlns="http://www.w3.org/2000/svg" width="64" height="64" viewBox="0 0 64 64">',
        f'<path d="{BARN}" fill="{barn}" stroke="#FFFFFF" stroke-width="2" stroke-linejoin="round"/>',
        _door(barn),
    ]
    if badge and glyph:
        body.append(_badge(badge, glyph))
    body.append("</svg>\n")
    return "".join(body)


def app_svg() -> str:
    # The app icon: a red barn on a warm hay-coloured tile with a green field.
    return (
        '<svg xmlns="http://www.w3.org/2000/svg" width="256" height="256" viewBox="0 0 64 64">'
        '<defs><linearGradient id="sky" x1="0" y1="0" x2="0" y2="1">'
        '<stop offset="0" stop-color="#FEF3C7"/><stop offset="1" stop-color="#FCD34D"/>'
        "</linearGradient></defs>"
        '<rect x="1" y="1" width="62" height="62" rx="13" fill="url(#sky)"/>'
        '<path d="M1 50 H63 V50 A0 0 0 0 1 63 50 V50 Q63 63 50 63 H14 Q1 63 1 50 Z" fill="#65A30D"/>'
        '<g transform="translate(8 6) scale(0.75)">'
        f'<path d="{BARN}" fill="#B91C1C" stroke="#FFFFFF" stroke-width="2.5" stroke-linejoin="round"/>'
        f"{_door('#B91C1C')}"
        "</g></svg>\n"
    )


def write_svgs() -> list[Path]:
    HERE.mkdir(parents=True, exist_ok=True)
    written = []
    for state in STATES:
        path = HERE / f"tray-{state}.svg"
        path.write_text(state_svg(state), encoding="utf-8")
        written.append(path)
    path = HERE / "barnraise.svg"
    path.write_text(app_svg(), encoding="utf-8")
    written.append(path)
    return written


def render_pngs(svgs: list[Path]) -> None:
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PySide6.QtCore import Qt
    from PySide6.QtGui import QGuiApplication, QImage, QPainter
    from PySide6.QtSvg import QSvgRenderer

    _app = QGuiApplication.instance() or QGuiApplication(sys.argv[:1])
    for svg in svgs:
        renderer = QSvgRenderer(str(svg))
        if not renderer.isValid():
            raise SystemExit(f"{svg}: Qt could not parse the SVG")
        for size in SIZES:
            image = QImage(size, size, QImage.Format.Format_ARGB32_Premultiplied)
            image.fill(Qt.GlobalColor.transparent)
            painter = QPainter(image)
            painter.setRenderHint(QPainter.RenderHint.Antialiasing)
            renderer.render(painter)
            painter.end()
            out = svg.with_name(f"{svg.stem}-{size}.png")
            if not image.save(str(out)):
                raise SystemExit(f"could not write {out}")


if __name__ == "__main__":
    render_pngs(write_svgs())
    print(f"wrote icons to {HERE}")
