"""The page shell every HTML page shares: the inlined stylesheet and the policy that allows
it (and no script), the header and footer, escaping, and small pieces (status badges,
times) the pages and cards use alike."""

from __future__ import annotations

import base64
import hashlib
import math
from html import escape
from importlib import resources

from backend.pages.formatting import format_relative, human_utc, iso_utc
from backend.pages.views import CREDIT_UNIT

STYLESHEET: str = resources.files("backend.pages").joinpath("style.css").read_text("utf-8")
"""The page stylesheet, inlined into every page."""

_STYLE_HASH = base64.b64encode(hashlib.sha256(STYLESHEET.encode("utf-8")).digest()).decode()

_CSP_COMMON = (
    f"default-src 'none'; style-src 'sha256-{_STYLE_HASH}'; img-src 'self' data:; "
    "base-uri 'none'; form-action 'none'"
)

CONTENT_SECURITY_POLICY = _CSP_COMMON + "; frame-ancestors 'none'"
"""Send as the ``Content-Security-Policy`` header with every page (also set in a meta tag)."""

PAGE_HEADERS: tuple[tuple[str, str], ...] = (
    ("Content-Type", "text/html; charset=utf-8"),
    ("Content-Security-Policy", CONTENT_SECURITY_POLICY),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
)
"""Headers for every HTML response (add Content-Length and caching as you see fit)."""


def h(text: object) -> str:
    return escape(str(text), quote=True)


def status_badge(status: str, words: str = "") -> str:
    """A badge coloured by ``status`` that says ``words`` (default: the status)."""
    kind = status if status in {"open", "paused", "closed", "finished"} else "other"
    return f'<span class="badge badge-{kind}">{h(words or status)}</span>'


def time_element(when: float | None, now: float) -> str:
    if when is None or not math.isfinite(when):
        return '<span class="muted">never</span>'
    return (
        f'<time datetime="{iso_utc(when)}" title="{human_utc(when)}">'
        f"{h(format_relative(when, now))}</time>"
    )


def document(title: str, body: str, *, description: str = "") -> str:
    meta_description = (
        f'<meta name="description" content="{h(description)}">\n' if description else ""
    )
    return (
        "<!doctype html>\n"
        '<html lang="en">\n<head>\n'
        '<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{h(_CSP_COMMON)}">\n'
        '<meta name="color-scheme" content="light dark">\n'
        '<meta name="referrer" content="no-referrer">\n'
        f"{meta_description}"
        f"<title>{h(title)}</title>\n"
        f"<style>{STYLESHEET}</style>\n"
        "</head>\n<body>\n"
        '<header class="site-header"><div class="wrap">'
        '<a class="brand" href="/"><span class="brand-mark">&#9650;</span> Barnraise</a>'
        '<span class="tagline">Training AI models together on the computers people already own'
        "</span></div></header>\n"
        f'<main class="wrap">\n{body}\n</main>\n'
        '<footer class="site-footer"><div class="wrap">'
        f"<p>Credit is compute given, in {CREDIT_UNIT}: examples trained &times; the recipe&rsquo;s "
        "floating-point operations per example. Recent credit is an average with a "
        "7-day half-life.</p>"
        "<p>Data never leaves a contributor&rsquo;s computer: only signed model updates do. "
        'Machine-readable: <a href="/api/v1/openapi.json">API description</a>.</p>'
        "</div></footer>\n"
        "</body>\n</html>\n"
    )


# ---------------------------------------------------------------------------------------
# Index: /
