#!/usr/bin/env bash
# `make package`: the one-folder bundle, the .deb and the user-local tarball, in dist/.
#
#   dist/barnraise/                                  PyInstaller one-folder bundle
#   dist/barnraise_<version>_amd64.deb               Debian/Ubuntu package (dpkg-deb)
#   dist/barnraise-<version>-linux-x86_64.tar.gz     tarball + install.sh (no root)
#
# Needs the venv with the `package` extra (PyInstaller) and dpkg-deb. Prints each step's time.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
export PY

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
