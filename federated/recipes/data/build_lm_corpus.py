"""Build the byte-level language-model corpus from this Python's standard-library source.

Run once, by a maintainer, when the corpus changes (then bump the file name's version and
pin the new digest in ``federated/recipes/corpus.py`` and the README here):

    .venv/bin/python federated/recipes/data/build_lm_corpus.py            # write
    .venv/bin/python federated/recipes/data/build_lm_corpus.py --check    # compare

It packs every pure-Python module of ``sysconfig.get_paths()["stdlib"]`` except tests and
generated or demo code (``EXCLUDED_DIRS``), in sorted path order, and copies CPython's
``LICENSE.txt`` next to it, as the PSF licence asks of redistributions. ``--check`` rebuilds
in memory and compares the content with the shipped file (same Python version needed).
"""

from __future__ import annotations

import argparse
import hashlib
import platform
import shutil
import sys
import sysconfig
from pathlib import Path

from federated.recipes.corpus import CORPUS_FILE, Split, pack, unpack

DATA_DIR = Path(__file__).resolve().parent
LICENSE_FILE = "PYTHON-LICENSE.txt"

EXCLUDED_DIRS = frozenset(
    {
        "test",  # the regression suite: half the tree, much of it data fixtures
        "tests",
        "idlelib",
        "turtledemo",
        "encodings",  # generated codec tables
        "pydoc_data",  # generated from the documentation
        "__phello__",  # frozen-module test package
        "site-packages",
        "dist-packages",
        "lib-dynload",
        "__pycache__",
    }
)
EXCLUDED_FILES = frozenset({"__hello__.py"})

VALIDATION_EVERY = 20
"""Every 20th file in sorted order (the 11th, 31st, ...) is validation text: about 5%."""
VALIDATION_OFFSET = 10


def selected_files(stdlib: Path) -> list[Path]:
    """The corpus's files, relative to ``stdlib``, in sorted POSIX path order."""
    chosen = []
    for path in stdlib.rglob("*.py"):
        rel = path.relative_to(stdlib)
        dirs = rel.parts[:-1]
        if any(d in EXCLUDED_DIRS or d.startswith("config-") for d in dirs):
            continue
        if rel.name in EXCLUDED_FILES or rel.name.startswith("test_") or not path.is_file():
            continue
        chosen.append(rel)
    return sorted(chosen, key=lambda p: p.as_posix())


def split_of(index: int) -> Split:
    return "validation" if index % VALIDATION_EVERY == VALIDATION_OFFSET else "train"


def build(stdlib: Path) -> tuple[bytes, list[tuple[str, Split, bytes]]]:
    """(compressed corpus file, its entries) built from ``stdlib``."""
    entries = [
        (rel.as_posix(), split_of(i), (stdlib / rel).read_bytes())
        for i, rel in enumerate(selected_files(stdlib))
    ]
    meta = {
        "source": "CPython standard library source (Lib/), pure-Python modules",
        "python": platform.python_version(),
        "implementation": sys.implementation.name,
        "licence": f"PSF-2.0; the full text is {LICENSE_FILE} next to this file",
        "excluded_dirs": sorted(EXCLUDED_DIRS),
        "validation": f"file index % {VALIDATION_EVERY} == {VALIDATION_OFFSET}",
    }
    return pack(entries, meta), entries


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stdlib", type=Path, default=Path(sysconfig.get_paths()["stdlib"]))
    parser.add_argument("--out", type=Path, default=DATA_DIR)
    parser.add_argument("--check", action="store_true", help="compare with the shipped file")
    args = parser.parse_args(argv)
    blob, entries = build(args.stdlib)
    raw = sum(len(b) for _, _, b in entries)
    if args.check:
        shipped = unpack((DATA_DIR / CORPUS_FILE).read_bytes(), source=CORPUS_FILE)
        rebuilt = unpack(blob, source="rebuilt")
        same = shipped.files == rebuilt.files and shipped.content == rebuilt.content
        print(f"{CORPUS_FILE}: {'reproduced' if same else 'DIFFERS from this stdlib'}")
        return 0 if same else 1
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / CORPUS_FILE).write_bytes(blob)
    shutil.copyfile(args.stdlib / "LICENSE.txt", args.out / LICENSE_FILE)
    validation = [e for e in entries if e[1] == "validation"]
    print(
        f"{CORPUS_FILE}: {len(entries)} files ({len(validation)} validation, "
        f"{sum(len(b) for _, _, b in validation)} bytes), {raw} bytes raw, "
        f"{len(blob)} compressed, Python {platform.python_version()}\n"
        f"sha256 {hashlib.sha256(blob).hexdigest()}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
