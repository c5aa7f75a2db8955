#!/usr/bin/env bash
# `make package`: the one-folder bundle, the .deb and the user-local tarball, in dist/.
#
#   dist/barnraise/                                  PyInstaller one-folder bundle
#   dist/barnraise_<version>_amd64.deb               Debian/Ubuntu package (dpkg-deb)
#   dist/barnraise-<version>-linux-x86_64.tar.gz     tarball + install.sh (no root)
#
# Needs the venv with the `package` extra (PyInstaller) and dpkg-deb. Prints each step's time.
#
#   packaging/build.sh --check    only check that $PY's PySide6 may be bundled, then exit
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
export PY

# The bundle ships whatever PySide6 $PY imports, so it must be inside the range pyproject.toml
# declares: 6.12.0 over-releases None on void calls and aborts the tray on CPython 3.11
# (issue 9). The range is read from pyproject.toml itself, not from installed metadata,
# which goes stale when pyproject changes without a reinstall.
check_pyside() {
	"$PY" - <<'PYTHON'
import sys
import tomllib

try:
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name
except ImportError:
    sys.exit(
        "build.sh: the 'packaging' module is missing from this Python (PyInstaller brings it): "
        "pip install -e '.[package]'"
    )

with open("pyproject.toml", "rb") as handle:
    project = tomllib.load(handle)["project"]
declared = [Requirement(r) for r in project.get("dependencies", [])]
for extra in project.get("optional-dependencies", {}).values():
    declared += [Requirement(r) for r in extra]
wanted = [r for r in declared if canonicalize_name(r.name) == "pyside6-essentials"]
if not wanted:
    sys.exit("build.sh: pyproject.toml declares no pyside6-essentials requirement; add its range")
spec = wanted[0].specifier
try:
    import PySide6
    import shiboken6
except ImportError as exc:
    sys.exit(f"build.sh: {sys.executable} has no PySide6 ({exc}): pip install -e '.[app]'")
found = {"PySide6": PySide6.__version__, "shiboken6": shiboken6.__version__}
outside = [f"{name} {version}" for name, version in found.items() if version not in spec]
if outside:
    sys.exit(
        f"build.sh: refusing to bundle {', '.join(outside)} from {PySide6.__path__[0]}: "
        f"pyproject.toml wants pyside6-essentials{spec} (its comment says why). Install a "
        f"release in that range: {sys.executable} -m pip install 'pyside6-essentials{spec}' "
        f"'shiboken6{spec}', then build again."
    )
print(f"build.sh: PySide6 {found['PySide6']} (shiboken6 {found['shiboken6']}) is in {spec}")
PYTHON
}

if [ "${1:-}" = "--check" ]; then
	check_pyside
	exit
fi
check_pyside

"$PY" -c 'import PyInstaller' 2>/dev/null || {
	echo "build.sh: PyInstaller is missing: $PY -m pip install -e '.[package]'" >&2
	exit 1
}
command -v dpkg-deb >/dev/null || { echo "build.sh: dpkg-deb is missing (apt-get install dpkg)" >&2; exit 1; }

step() {
	local name=$1 start=$SECONDS
	shift
	"$@"
	echo "== $name: $((SECONDS - start)) s"
}

rm -rf dist/barnraise
step "bundle (PyInstaller)" "$PY" -m PyInstaller --noconfirm --clean --log-level WARN \
	--distpath dist --workpath build/pyinstaller packaging/barnraise.spec
echo "bundle dist/barnraise: $(du -sh dist/barnraise | cut -f1)"
step ".deb" packaging/build_deb.sh
step "tarball" packaging/build_tarball.sh
