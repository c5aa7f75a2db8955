#!/usr/bin/env bash
# Build dist/barnraise_<version>_amd64.deb from the one-folder bundle dist/barnraise/.
#
#   /opt/barnraise/                                        the bundle
#   /usr/bin/barnraise -> ../../opt/barnraise/barnraise    (relative: works unpacked too)
#   /usr/share/applications/org.barnraise.Barnraise.desktop   menu entry + barnraise:// handler
#   /usr/share/icons/hicolor/{16..256,scalable}/apps/barnraise.{png,svg}
#   /usr/share/metainfo/org.barnraise.Barnraise.metainfo.xml  AppStream
#
# Reproducible: file times come from SOURCE_DATE_EPOCH (default: the last commit's time).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
BUNDLE=dist/barnraise
STAGE=build/deb/root
MAINTAINER=${BARNRAISE_MAINTAINER:-Barnraise maintainers <maintainers@barnraise.org>}
# xz is what every dpkg reads. Level 1 on 2 threads: ~215 MB in ~40 s on 2 cores; level 6
# (dpkg's default): ~185 MB but ~6 min single-threaded. Set DEB_XZ_LEVEL=6 for releases.
XZ_LEVEL=${DEB_XZ_LEVEL:-1}
THREADS=${DEB_THREADS:-$(nproc)}

[ -x "$BUNDLE/barnraise" ] || {
	echo "build_deb: $BUNDLE/barnraise is missing; build the bundle first (packaging/build.sh)" >&2
	exit 1
}
VERSION=$("$PY" -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}
DATE=$(date -u -d "@$SOURCE_DATE_EPOCH" +%F)
DEB=dist/barnraise_${VERSION}_amd64.deb

rm -rf build/deb
mkdir -p "$STAGE/DEBIAN" "$STAGE/opt" "$STAGE/usr/bin" "$STAGE/usr/share/doc/barnraise"
cp -a "$BUNDLE" "$STAGE/opt/barnraise"
ln -s ../../opt/barnraise/barnraise "$STAGE/usr/bin/barnraise"
packaging/linux/stage_share.sh "$STAGE/usr/share" "$VERSION" "$DATE"
cat >"$STAGE/usr/share/doc/barnraise/copyright" <<COPYRIGHT
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: barnraise
License: Apache-2.0
Comment: /opt/barnraise bundles Python, PyTorch, Qt 6 (PySide6, LGPLv3) and other
 third-party libraries under their own licenses; see /opt/barnraise/_internal/*.dist-info.
COPYRIGHT

DEPENDS=$(python3 packaging/linux/shlib_depends.py "$BUNDLE")
INSTALLED_KB=$(du -sk --exclude=DEBIAN "$STAGE" | cut -f1)
cat >"$STAGE/DEBIAN/control" <<CONTROL
Package: barnraise
Version: $VERSION
Architecture: amd64
Maintainer: $MAINTAINER
Installed-Size: $INSTALLED_KB
Depends: $DEPENDS
Recommends: xdg-utils
Section: science
Priority: optional
Description: train AI models together on the computers you already own
 Barnraise is the contributor app of federated training projects: it lives in
 the system tray, joins projects from a link, trains locally within the limits
 and schedule you set, and uploads signed model updates. Your data never leaves
 this computer. \`barnraise --headless\` runs the same engine on a server.
CONTROL
for script in postinst postrm; do
	install -m 0755 "packaging/linux/$script" "$STAGE/DEBIAN/$script"
done

# Reproducible file times and permissions (dpkg-deb takes owners from --root-owner-group).
find "$STAGE" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
chmod -R u+rwX,go+rX,go-w "$STAGE"
mkdir -p dist
dpkg-deb --root-owner-group -Zxz -z"$XZ_LEVEL" --threads-max="$THREADS" --build "$STAGE" "$DEB" >/dev/null
echo "built $DEB ($(du -h "$DEB" | cut -f1); installed $((INSTALLED_KB / 1024)) MB)"
