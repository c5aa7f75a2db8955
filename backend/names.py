"""When two contributor names are the same to a reader: case folding and a confusables
skeleton (Unicode TR39's idea, with the confusables table of ``confusable_homoglyphs``).

``name_key("Ada") == name_key("ada") == name_key("\u0410da")`` (Cyrillic А): a project
refuses a second contributor whose name has the key of a name already taken there.
"""

from __future__ import annotations

import functools

from confusable_homoglyphs import confusables

from federated.protocol.names import clean_text


@functools.cache
def _ascii_twin(ch: str) -> str:
    """The ASCII character ``ch`` is confused with, or ``ch`` itself."""
    if ch.isascii():
        return ch
    for glyph in confusables.confusables_data.get(ch, ()):
        twin = glyph["c"]
        if len(twin) == 1 and twin.isascii():
            return twin
    return ch


def name_key(name: str) -> str:
    """What ``name`` looks like, for comparing: cleaned, case-folded, look-alikes unified."""
    folded = clean_text(name).casefold()
    return "".join(_ascii_twin(ch) for ch in folded).casefold()
