#!/usr/bin/env bash
# Build dist/barnraise-<version>-linux-x86_64.tar.gz: the bundle plus install.sh for a
# user-local install without root (see packaging/linux/install.sh).
#
#   barnraise-<version>/install.sh        ./install.sh [--prefix DIR] | --uninstall
#   barnraise-<version>/barnraise/        the one-folder bundle
#   barnraise-<version>/share/            desktop entry, icons, AppStream metainfo
#
# Reproducible: sorted entries, fixed owner and times (SOURCE_DATE_EPOCH), gzip -n.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
BUNDLE=dist/barnraise
[ -x "$BUNDLE/barnraise" ] || {
	echo "build_tarball: $BUNDLE/barnraise is missing; build the bundle first (packaging/build.sh)" >&2
	exit 1
}
VERSION=$("$PY" -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}
DATE=$(date -u -d "@$SOURCE_DATE_EPOCH" +%F)
NAME=barnraise-$VERSION
STAGE=build/tarball/$NAME
OUT=dist/$NAME-linux-x86_64.tar.gz

rm -rf build/tarball
mkdir -p "$STAGE"
cp -a "$BUNDLE" "$STAGE/barnraise"
packaging/linux/stage_share.sh "$STAGE/share" "$VERSION" "$DATE"
install -m 0755 packaging/linux/install.sh "$STAGE/install.sh"
GZIP_CMD="gzip -n -6"
command -v pigz >/dev/null 2>&1 && GZIP_CMD="pigz -n -6"
mkdir -p dist
tar --sort=name --mtime="@$SOURCE_DATE_EPOCH" --owner=0 --group=0 --numeric-owner \
	-C build/tarball -cf - "$NAME" | $GZIP_CMD >"$OUT.tmp"
mv "$OUT.tmp" "$OUT"
echo "built $OUT ($(du -h "$OUT" | cut -f1))"
