"""Names as people see them: what a display name or team is stored as.

A name is NFKC-normalised (fullwidth and compatibility forms become plain letters), then
stripped of every character that shows nothing or changes how others are shown: control
(Cc), format (Cf: bidi overrides, zero-width spaces and joiners), private-use, surrogate
and unassigned code points. Runs of whitespace become one space. Both programs use it, so
the Join dialog can show the name the coordinator will store.
"""

from __future__ import annotations

import unicodedata

_INVISIBLE = frozenset({"Cc", "Cf", "Co", "Cs", "Cn"})


def clean_text(text: str) -> str:
    """``text`` as it is stored and shown (see the module docstring)."""
    normal = unicodedata.normalize("NFKC", text)
    kept = "".join(
        " " if ch.isspace() else ch
        for ch in normal
        if ch.isspace() or unicodedata.category(ch) not in _INVISIBLE
    )
    return " ".join(kept.split())
