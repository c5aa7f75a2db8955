"""A language model's page section: what its current version writes (issue 13).

The text is the model's, so it is untrusted like any user text: escaped, shown in a
``<pre>`` (no markup of its own), replacement characters where the bytes were not UTF-8.
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape


def render_samples(samples: Sequence[tuple[str, str]], version: int) -> str:
    """The section, or nothing for a project whose model writes no text."""
    if not samples:
        return ""
    items = "".join(
        f'<figure class="sample"><pre><b>{escape(prompt, quote=True)}</b>'
        f"{escape(text, quote=True)}</pre></figure>"
        for prompt, text in samples
    )
    return (
        '<section id="samples"><h2>What the model writes</h2>'
        f'<p class="table-note">Version {version}, continuing each prompt in bold '
        "(temperature 0.8, top 40 bytes; the same text for the same version).</p>"
        f'<div class="card">{items}</div></section>'
    )
