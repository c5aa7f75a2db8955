"""Cheap checks of packaging/ that need no build (they run in `make test`).

The desktop entry and AppStream metainfo validate with the distributions' own tools, the
install scripts parse, and the PyInstaller spec keeps every Qt module the tray imports.
"""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from packaging_paths import APP_ID, ROOT, VERSION

PACKAGING = ROOT / "packaging"
SCRIPTS = [
    PACKAGING / "build.sh",
    PACKAGING / "build_deb.sh",
    PACKAGING / "build_tarball.sh",
    PACKAGING / "linux/stage_share.sh",
    PACKAGING / "linux/install.sh",
    PACKAGING / "linux/postinst",
    PACKAGING / "linux/postrm",
]


@pytest.fixture(scope="module")
def share(tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = tmp_path_factory.mktemp("share")
    result = subprocess.run(
        [str(PACKAGING / "linux/stage_share.sh"), str(target), VERSION, "2026-01-01"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return target


def test_desktop_entry_is_valid_and_handles_invite_links(share: Path) -> None:
    entry = share / f"applications/{APP_ID}.desktop"
    text = entry.read_text()
    assert "MimeType=x-scheme-handler/barnraise;" in text
    assert re.search(r"^Exec=barnraise %u$", text, re.M)
    assert "Icon=barnraise" in text
    if shutil.which("desktop-file-validate") is None:
        pytest.skip("desktop-file-validate is not installed (apt: desktop-file-utils)")
    result = subprocess.run(
        ["desktop-file-validate", str(entry)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_metainfo_is_valid(share: Path) -> None:
    metainfo = share / f"metainfo/{APP_ID}.metainfo.xml"
    text = metainfo.read_text()
    assert "@VERSION@" not in text and f'<release version="{VERSION}" date="2026-01-01"/>' in text
    assert f'<launchable type="desktop-id">{APP_ID}.desktop</launchable>' in text
    if shutil.which("appstreamcli") is None:
        pytest.skip("appstreamcli is not installed (apt: appstream)")
    result = subprocess.run(
        ["appstreamcli", "validate", "--no-net", str(metainfo)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_hicolor_size_is_staged(share: Path) -> None:
    for size in (16, 22, 24, 32, 48, 64, 128, 256):
        assert (share / f"icons/hicolor/{size}x{size}/apps/barnraise.png").is_file()
    assert (share / "icons/hicolor/scalable/apps/barnraise.svg").is_file()


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: str(p.relative_to(PACKAGING)))
def test_scripts_parse_and_are_executable(script: Path) -> None:
    assert script.stat().st_mode & 0o111, f"{script} is not executable"
    shell = "sh" if script.name in ("postinst", "postrm") else "bash"
    result = subprocess.run([shell, "-n", str(script)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr


def _spec_literal(name: str) -> object:
    tree = ast.parse((PACKAGING / "barnraise.spec").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == name for t in node.targets
        ):
            return ast.literal_eval(node.value)
    raise AssertionError(f"{name} not found in barnraise.spec")


def test_spec_keeps_every_qt_module_the_app_imports() -> None:
    """A new `from PySide6.QtX import ...` in app/ must be kept by the spec (or the build fails)."""
    kept = _spec_literal("QT_MODULES")
    assert isinstance(kept, set)
    imported = set()
    for path in (ROOT / "app").rglob("*.py"):
        imported |= set(re.findall(r"\bPySide6\.(Qt\w+)", path.read_text(encoding="utf-8")))
    assert imported, "the tray imports no PySide6 module?"
    assert imported <= kept, (
        f"add {sorted(imported - kept)} to QT_MODULES in packaging/barnraise.spec"
    )


def test_spec_keeps_the_source_of_every_torch_config_module() -> None:
    """torch's config modules read their own source at import; the spec must ship it.

    A torch upgrade that adds one would otherwise break the frozen training child with
    "OSError: could not get source code" (found by tests/packaging, after a 4-minute build).
    """
    import torch

    torch_dir = Path(torch.__file__).parent
    found = {
        ".".join(path.relative_to(torch_dir.parent).with_suffix("").parts)
        for path in torch_dir.rglob("*.py")
        if "install_config_module(" in path.read_text(encoding="utf-8", errors="replace")
        and path.name != "_config_module.py"
        and "testing" not in path.parts
    }
    kept = _spec_literal("TORCH_CONFIG_MODULES")
    assert isinstance(kept, list)
    assert found <= set(kept), f"add {sorted(found - set(kept))} to TORCH_CONFIG_MODULES"


@pytest.mark.parametrize("name", ["Info.plist.fragment", "org.barnraise.Barnraise.plist"])
def test_macos_plists_parse(name: str) -> None:
    import plistlib

    data = plistlib.loads((PACKAGING / "macos" / name).read_bytes())
    assert data.get("CFBundleIdentifier", data.get("Label")) == APP_ID
