#!/usr/bin/env bash
# Stage the desktop integration files under SHARE (a `share/` folder): the desktop entry
# (also the barnraise:// URL handler), the hicolor icons and the AppStream metainfo.
# Used by build_deb.sh (SHARE=<root>/usr/share) and build_tarball.sh (the tarball's share/).
#
#   packaging/linux/stage_share.sh SHARE VERSION DATE
set -euo pipefail
share=$1 version=$2 date=$3
here=$(cd "$(dirname "$0")" && pwd)
icons=$here/../../assets/icons
app_id=org.barnraise.Barnraise
sizes="16 22 24 32 48 64 128 256"

install -D -m 0644 "$here/$app_id.desktop" "$share/applications/$app_id.desktop"
mkdir -p "$share/metainfo"
sed -e "s/@VERSION@/$version/" -e "s/@DATE@/$date/" "$here/$app_id.metainfo.xml" >"$share/metainfo/$app_id.metainfo.xml"
chmod 0644 "$share/metainfo/$app_id.metainfo.xml"
for size in $sizes; do
	png=$icons/barnraise-$size.png
	[ -f "$png" ] || { echo "stage_share: $png is missing (render it with assets/make_icons.py)" >&2; exit 1; }
	install -D -m 0644 "$png" "$share/icons/hicolor/${size}x${size}/apps/barnraise.png"
done
install -D -m 0644 "$icons/barnraise.svg" "$share/icons/hicolor/scalable/apps/barnraise.svg"
