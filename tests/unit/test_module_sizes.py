"""Small modules with one job: no module of the programs or the core passes 500 lines."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MAX_LINES = 500


def test_no_module_is_over_500_lines() -> None:
    sizes = {
        str(path.relative_to(ROOT)): len(path.read_text(encoding="utf-8").splitlines())
        for package in ("federated", "backend", "app")
        for path in (ROOT / package).rglob("*.py")
    }
    assert len(sizes) > 50, "the walk found too few modules"
    too_big = {name: lines for name, lines in sorted(sizes.items()) if lines > MAX_LINES}
    assert too_big == {}, f"split these along their seams: {too_big}"
