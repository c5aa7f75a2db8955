# Barnraise: `make test` and `make demo` do all set-up on a fresh machine.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed
# torch first, pinned, so pip takes this machine's CPU wheel instead of downloading a CUDA build.
TORCH := torch==2.13.0
APT_PACKAGES := chromium chromium-driver gnome-keyring dbus dbus-x11 libsecret-tools \
	xvfb xdotool trayer imagemagick libxcb-icccm4 libxcb-keysyms1 libxcb-cursor0 \
	libxkbcommon-x11-0 libegl1 libgl1 desktop-file-utils appstream binutils xdg-utils \
	postgresql nginx systemd

.PHONY: test soak demo lint typecheck pytest system-deps bench package test-package clean

$(PY):
	python3 -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	$(PIP) install --upgrade pip
	$(PIP) install $(TORCH)
	$(PIP) install -e '.[app,backend,dev]'
	touch $(STAMP)

# System packages the tests drive for real (browser, keychain, X server, tray host, PostgreSQL, nginx).
# Installed only when missing and when we may (CI runs as root).
system-deps:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
		else echo "note: not root, cannot install: $$missing (tests needing them are skipped)"; fi; \
	fi

CODE := $(wildcard federated backend app tests bench packaging assets)

lint: $(STAMP)
	$(VENV)/bin/ruff check $(CODE)
	$(VENV)/bin/ruff format --check $(CODE)
	$(VENV)/bin/lint-imports

typecheck: $(STAMP)
	$(VENV)/bin/mypy $(wildcard federated backend app)

pytest: $(STAMP) system-deps
	QT_QPA_PLATFORM=offscreen $(VENV)/bin/pytest -q -m 'not package and not soak'

test: lint typecheck pytest

# The minutes-long soaks (the real tray training for 3 minutes; about 4 minutes in all).
# CI runs them after `make test` (.ci/run); `make test` stays within 15 minutes on 2 cores.
soak: $(STAMP) system-deps
	QT_QPA_PLATFORM=offscreen $(VENV)/bin/pytest -q -m soak

demo: $(STAMP)
	$(VENV)/bin/barnraise-backend demo --rounds 10 --contributors 3

bench: $(STAMP)
	$(PY) bench/aggregate.py
	$(PY) bench/codec.py

PACKAGE_STAMP := $(VENV)/.installed-package

$(PACKAGE_STAMP): pyproject.toml | $(STAMP)
	$(PIP) install -e '.[package]'
	touch $(PACKAGE_STAMP)

# dist/barnraise/ (PyInstaller one-folder), dist/barnraise_<version>_amd64.deb,
# dist/barnraise-<version>-linux-x86_64.tar.gz; see docs/packaging.md
package: $(STAMP) $(PACKAGE_STAMP) system-deps
	PY=$(PY) packaging/build.sh

# Runs the installed program from the built .deb (skips with the reason when dist/ has none).
test-package: $(STAMP) system-deps
	QT_QPA_PLATFORM=offscreen $(VENV)/bin/pytest -q -m package tests/packaging

clean:
	rm -rf $(VENV) build dist *.egg-info .mypy_cache .ruff_cache .pytest_cache
