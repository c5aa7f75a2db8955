#!/usr/bin/env bash
# Install Barnraise for this user only (no root), or remove it again.
#
#   ./install.sh                    install into ~/.local
#   ./install.sh --prefix DIR       install into DIR (DIR/opt/barnraise, DIR/bin, DIR/share)
#   ~/.local/opt/barnraise/install.sh --uninstall [--prefix DIR]
#
# Installs the program to PREFIX/opt/barnraise, a `barnraise` link in PREFIX/bin, and the
# desktop entry, icons and AppStream metainfo under PREFIX/share; makes Barnraise the
# handler of barnraise:// links (xdg-mime), so an invite link clicked in a browser opens the
# Join dialog. Every file written is listed in PREFIX/opt/barnraise.files, which --uninstall
# reads back. Start at login is the app's own setting (Preferences); uninstalling removes
# that autostart entry too when it points at this installation.
set -euo pipefail

APP_ID=org.barnraise.Barnraise
prefix=${HOME:?HOME is not set}/.local
action=install
while [ $# -gt 0 ]; do
	case $1 in
	--prefix) prefix=${2:?--prefix needs a folder}; shift 2 ;;
	--prefix=*) prefix=${1#--prefix=}; shift ;;
	--uninstall) action=uninstall; shift ;;
	-h | --help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
	*) echo "install.sh: unknown option $1 (try --help)" >&2; exit 2 ;;
	esac
done
mkdir -p "$prefix"
prefix=$(cd "$prefix" && pwd)
opt=$prefix/opt/barnraise
bin=$prefix/bin/barnraise
share=$prefix/share
manifest=$prefix/opt/barnraise.files
autostart=${XDG_CONFIG_HOME:-$HOME/.config}/autostart/$APP_ID.desktop
mimeapps=${XDG_CONFIG_HOME:-$HOME/.config}/mimeapps.list

refresh_caches() {
	if command -v update-desktop-database >/dev/null 2>&1; then
		update-desktop-database -q "$share/applications" 2>/dev/null || true
	fi
	if command -v gtk-update-icon-cache >/dev/null 2>&1 && [ -f "$share/icons/hicolor/index.theme" ]; then
		gtk-update-icon-cache -q -t -f "$share/icons/hicolor" 2>/dev/null || true
	fi
}

# Desktop Entry spec quoting for an Exec argument (paths with spaces, quotes, $, `).
exec_quote() {
	case $1 in
	*[[:space:]\"\'\\\$\`\<\>\~\|\&\;\*\?\#\(\)]*)
		local s=${1//\\/\\\\}
		s=${s//\"/\\\"}; s=${s//\$/\\\$}; s=${s//\`/\\\`}
		printf '"%s"' "$s" ;;
	*) printf '%s' "$1" ;;
	esac
}

# For sed's replacement text: escape \, & and the | delimiter.
sed_escape() { printf '%s' "$1" | sed -e 's/[\\&|]/\\&/g'; }

remove_files() {
	if [ -f "$manifest" ]; then
		while IFS= read -r file; do
			[ -n "$file" ] && rm -f -- "$file"
		done <"$manifest"
		rm -f -- "$manifest"
	fi
	rm -rf -- "$opt"
}

uninstall() {
	if [ ! -f "$manifest" ] && [ ! -d "$opt" ]; then
		echo "Barnraise is not installed under $prefix"
		return 0
	fi
	remove_files
	# The autostart entry the app wrote, if it starts this installation.
	if [ -f "$autostart" ] && grep -qF "$opt/" "$autostart"; then
		rm -f -- "$autostart"
	fi
	if [ -f "$mimeapps" ]; then
		sed -i "/^x-scheme-handler\/barnraise=$APP_ID.desktop;\{0,1\}\$/d" "$mimeapps"
	fi
	refresh_caches
	echo "Barnraise was removed from $prefix (your projects, keys and settings were kept)"
}

install_files() {
	local src
	src=$(cd "$(dirname "$0")" && pwd)
	[ -x "$src/barnraise/barnraise" ] || {
		echo "install.sh: run me from the unpacked barnraise-<version> folder" >&2
		exit 1
	}
	remove_files # an upgrade: start at login and the link handler stay as they were
	mkdir -p "$prefix/opt" "$prefix/bin"
	# Copy beside, then move into place: an interrupted copy never leaves a broken program.
	rm -rf -- "$opt.new"
	cp -a "$src/barnraise" "$opt.new"
	install -m 0755 "$src/install.sh" "$opt.new/install.sh"
	rm -rf -- "$opt"
	mv -- "$opt.new" "$opt"
	ln -sfn "$opt/barnraise" "$bin"

	: >"$manifest"
	echo "$bin" >>"$manifest"
	(cd "$src/share" && find . -type f) | sort | while IFS= read -r rel; do
		rel=${rel#./}
		install -D -m 0644 "$src/share/$rel" "$share/$rel"
		echo "$share/$rel" >>"$manifest"
	done
	# ~/.local/bin is often not on the desktop session's PATH: the entry names the program.
	local exec_path entry=$share/applications/$APP_ID.desktop
	exec_path=$(sed_escape "$(exec_quote "$bin")")
	sed -i -e "s|^Exec=barnraise |Exec=$exec_path |" -e "s|^TryExec=barnraise\$|TryExec=$(sed_escape "$bin")|" "$entry"

	refresh_caches
	if command -v xdg-mime >/dev/null 2>&1; then
		xdg-mime default "$APP_ID.desktop" x-scheme-handler/barnraise 2>/dev/null ||
			echo "note: xdg-mime could not register barnraise:// links; invite links must be pasted" >&2
	fi
	echo "Barnraise is installed: $bin"
	case ":$PATH:" in
	*":$prefix/bin:"*) ;;
	*) echo "note: $prefix/bin is not on your PATH; the menu entry works, or run $bin" ;;
	esac
	echo "To remove it: $opt/install.sh --uninstall$([ "$prefix" = "$HOME/.local" ] || echo " --prefix $prefix")"
}

if [ "$action" = uninstall ]; then uninstall; else install_files; fi
