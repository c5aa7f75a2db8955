"""Print the Debian ``Depends`` of a PyInstaller bundle: the system libraries it links to.

PyInstaller copies most shared libraries into the bundle but deliberately leaves out the C
library and the graphics drivers' GL/EGL stack. This lists every ``DT_NEEDED`` soname of every
ELF file in the bundle that the bundle does not itself contain, maps each to the Debian package
that owns it here (``dpkg-query -S``), and adds the newest glibc symbol version used as the
``libc6 (>= X)`` floor. Usage: ``python3 packaging/linux/shlib_depends.py dist/barnraise``.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

_NEEDED_RE = re.compile(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]")
_GLIBC_RE = re.compile(r"GLIBC_(\d+)\.(\d+)")


def _elf_files(bundle: Path) -> list[Path]:
    files = []
    for path in sorted(bundle.rglob("*")):
        if path.is_file() and not path.is_symlink():
            with path.open("rb") as f:
                if f.read(4) == b"\x7fELF":
                    files.append(path)
    return files


def _needed(path: Path) -> list[str]:
    out = subprocess.run(
        ["readelf", "-d", str(path)], capture_output=True, text=True, check=False
    ).stdout
    return _NEEDED_RE.findall(out)


def _glibc_floor(paths: list[Path]) -> tuple[int, int]:
    best = (2, 17)
    for path in paths:
        out = subprocess.run(
            ["objdump", "-T", str(path)], capture_output=True, text=True, check=False
        ).stdout
        for major, minor in _GLIBC_RE.findall(out):
            best = max(best, (int(major), int(minor)))
    return best


def _owner(soname: str) -> str | None:
    result = subprocess.run(
        ["dpkg-query", "-S", f"*/{soname}"], capture_output=True, text=True, check=False
    )
    for line in result.stdout.splitlines():
        package = line.split(":", 1)[0].split(",")[0].strip()
        if package:
            return package
    return None


def depends(bundle: Path) -> list[str]:
    files = _elf_files(bundle)
    bundled = {p.name for p in bundle.rglob("*")}
    external = sorted({name for f in files for name in _needed(f)} - bundled)
    packages: set[str] = set()
    for soname in external:
        package = _owner(soname)
        if package is None:
            print(
                f"shlib_depends: no installed package provides {soname}; not listed",
                file=sys.stderr,
            )
        elif package != "libc6":
            packages.add(package)
    major, minor = _glibc_floor(files)
    return [f"libc6 (>= {major}.{minor})", *sorted(packages)]


if __name__ == "__main__":
    print(", ".join(depends(Path(sys.argv[1]))))
